"""A real model end to end: llama.cpp's server with SmolLM2-135M-Instruct behind the embedded
policy. It answers a plain question, stops at the policy's output limit when the client sets
none (streamed or not), and answers from a passage of the knowledge base that only the passage
holds; on a chat template without a system role the passage still arrives, folded into the
user's turn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import numpy as np
import pytest

from gateway.api.app import create_app
from gateway.cli.localmodel import MODEL_ALIAS, LocalModelServer, free_port, model_path
from gateway.policy.model import Policy, load_policy
from gateway.policy.settings import EMBEDDED_CONFIG, Settings
from retrieval.ingest import ingest
from retrieval.stores import open_store
from tests.conftest import SdkFactory

pytestmark = [pytest.mark.local_model, pytest.mark.timeout(300)]  # a CPU model on a busy machine

pytest.importorskip("llama_cpp", reason="the 'local' extra (llama-cpp-python) is not installed")

# A CPU model on a busy 2-core machine can take long: these tests are about the path.
SLOW = {"x-gateway-deadline-ms": "120000"}
WIFI_DOC = """# Office network

The office Wi-Fi network is called Harbour-7. Visitors use the guest network Lantern-3, whose
password changes every Monday.
"""
WIFI_QUESTION = "What is the office Wi-Fi network called?"


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    data_dir = Path(tmp_path_factory.mktemp("local-model"))
    with LocalModelServer(data_dir, port=free_port(), n_ctx=2048) as server:
        yield server


def embedded_policy_on(server: LocalModelServer, **model: Any) -> Policy:
    """The shipped local.yaml, pointed at the test's port (and ``model`` fields changed)."""
    policy = load_policy(EMBEDDED_CONFIG)
    providers = [
        p if p.kind == "builtin" else p.model_copy(update={"base_url": server.base_url})
        for p in policy.providers
    ]
    models = [policy.models[0].model_copy(update=model), *policy.models[1:]]
    return policy.model_copy(update={"providers": providers, "models": models})


async def test_local_model_answers_through_gateway(
    local_server: LocalModelServer, aiohttp_client: Any, sdk_for: SdkFactory, embedder: Any
) -> None:
    app = create_app(Settings(), embedded_policy_on(local_server), environ={}, embedder=embedder)
    sdk = sdk_for(await aiohttp_client(app), key="dev-key")
    raw = await sdk.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=48,
        temperature=0,
        extra_headers=SLOW,
    )
    completion = raw.parse()
    assert "paris" in (completion.choices[0].message.content or "").lower()
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= 48
    assert raw.headers["x-gateway-provider"] == "local"
    assert raw.headers["x-gateway-model"] == MODEL_ALIAS


async def test_a_request_without_a_limit_stops_at_the_policys_default(
    local_server: LocalModelServer, aiohttp_client: Any, sdk_for: SdkFactory, embedder: Any
) -> None:
    # The embedded policy promises 256; the run below uses 24 so that the test stays short on a
    # busy CPU (the README measures the 256 at full length).
    assert load_policy(EMBEDDED_CONFIG).models[0].default_max_tokens == 256
    policy = embedded_policy_on(local_server, default_max_tokens=24)
    sdk = sdk_for(
        await aiohttp_client(create_app(Settings(), policy, environ={}, embedder=embedder)),
        key="dev-key",
    )
    story = [{"role": "user", "content": "Write a long story about a ship at sea."}]
    completion = await sdk.chat.completions.create(
        model="default", messages=story, temperature=0, extra_headers=SLOW
    )
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 24
    assert completion.choices[0].finish_reason == "length"

    stream = await sdk.chat.completions.create(
        model="default",
        messages=story,
        temperature=0,
        stream=True,
        extra_headers={**SLOW, "x-gateway-cache": "bypass"},
    )
    # llama_cpp.server sends no usage in a stream; it sends one token per chunk.
    pieces, finish = [], None
    async for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces).strip()
    assert finish == "length"
    assert 0 < len(pieces) <= 24


async def test_local_model_speaks_messages_responses_and_embeddings(
    local_server: LocalModelServer, aiohttp_client: Any, sdk_for: SdkFactory, embedder: Any
) -> None:
    """The embedded setup for an Anthropic client, a Responses client and embeddings (served
    by the gateway's own model: no provider)."""
    app = create_app(Settings(), embedded_policy_on(local_server), environ={}, embedder=embedder)
    gateway = await aiohttp_client(app)
    deadline = {"x-gateway-deadline-ms": "120000"}
    claude = anthropic.AsyncAnthropic(
        base_url=str(gateway.make_url("")), api_key="dev-key", max_retries=0
    )
    try:
        message = await claude.messages.create(
            model="default",
            max_tokens=16,
            messages=[{"role": "user", "content": "Name one colour."}],
            extra_headers=deadline,
        )
        async with claude.messages.stream(
            model="default",
            max_tokens=16,
            messages=[{"role": "user", "content": "Name one fruit."}],
            extra_headers=deadline,
        ) as stream:
            streamed = "".join([text async for text in stream.text_stream])
            final = await stream.get_final_message()
    finally:
        await claude.close()
    assert message.content[0].text.strip()  # type: ignore[union-attr]
    assert message.model == MODEL_ALIAS
    assert message.stop_reason in {"end_turn", "max_tokens"}
    assert message.usage.output_tokens > 0
    assert streamed.strip()
    assert final.stop_reason in {"end_turn", "max_tokens"}
    # llama-cpp-python's server sends no usage in a stream (it ignores stream_options), so a
    # streamed answer's counts from it are 0 whatever the client's format.

    sdk = sdk_for(gateway, key="dev-key")
    response = await sdk.responses.create(
        model="default", input="Name one animal.", max_output_tokens=16, extra_headers=deadline
    )
    assert response.output_text.strip()
    assert response.status in {"completed", "incomplete"}

    vectors = await sdk.embeddings.create(model="embeddings", input=["a cat", "a kitten", "tax"])
    rows = np.asarray([item.embedding for item in vectors.data])
    assert rows.shape == (3, 384)
    # Real semantics: the two cats are nearer each other than either is to taxes.
    assert rows[0] @ rows[1] > rows[0] @ rows[2]


async def _wifi_store(path: Path, embedder: Any) -> None:
    docs = path / "docs"
    docs.mkdir()
    (docs / "office-network.md").write_text(WIFI_DOC)
    store = open_store(collection="company-kb", url=None, path=path / "kb")
    try:
        await ingest([docs], store=store, embedder=embedder, kb="company", teams=["*"], root=path)
    finally:
        await store.close()


async def _ask_wifi(
    server: LocalModelServer,
    tmp_path: Path,
    aiohttp_client: Any,
    sdk_for: SdkFactory,
    embedder: Any,
    **model: Any,
) -> tuple[int, int, str]:
    """Prompt tokens without and with the knowledge base, and the answer with it."""
    settings = Settings(knowledge_path=tmp_path / "kb", stage_timeout_s=20)
    app = create_app(settings, embedded_policy_on(server, **model), environ={}, embedder=embedder)
    client = await aiohttp_client(app)
    sdk = sdk_for(client, key="dev-key")
    asked = {
        "model": "default",
        "messages": [{"role": "user", "content": WIFI_QUESTION}],
        "max_tokens": 40,
        "temperature": 0,
    }
    fresh = {**SLOW, "x-gateway-cache": "bypass"}  # each answer from the model itself
    off = await sdk.chat.completions.create(
        **asked, extra_headers={**fresh, "x-gateway-knowledge": "off"}
    )
    raw = await sdk.chat.completions.with_raw_response.create(**asked, extra_headers=fresh)
    assert raw.headers["x-gateway-knowledge"].startswith("context;chunks=")
    on = raw.parse()
    assert off.usage is not None
    assert on.usage is not None
    await client.close()  # the next gateway opens the same embedded store
    return off.usage.prompt_tokens, on.usage.prompt_tokens, on.choices[0].message.content or ""


async def test_the_answer_uses_a_fact_only_the_ingested_passage_holds(
    local_server: LocalModelServer,
    aiohttp_client: Any,
    sdk_for: SdkFactory,
    embedder: Any,
    tmp_path: Path,
) -> None:
    await _wifi_store(tmp_path, embedder)
    without, with_passage, answer = await _ask_wifi(
        local_server, tmp_path, aiohttp_client, sdk_for, embedder
    )
    assert with_passage > without + 40  # the passage and its preamble reached the model
    assert "harbour-7" in answer.lower().replace(" ", "-")


async def test_a_template_without_a_system_role_still_gets_the_passage(
    aiohttp_client: Any, sdk_for: SdkFactory, embedder: Any, tmp_path: Path
) -> None:
    """llama.cpp's ``gemma`` chat format drops system messages: told so by the policy
    (``system_role: false``), the gateway folds the passage into the user's turn."""
    await _wifi_store(tmp_path, embedder)
    with LocalModelServer(
        tmp_path, model=model_path(), chat_format="gemma", port=free_port(), n_ctx=2048
    ) as server:
        dropped = await _ask_wifi(server, tmp_path, aiohttp_client, sdk_for, embedder)
        folded = await _ask_wifi(
            server, tmp_path, aiohttp_client, sdk_for, embedder, system_role=False
        )
    assert dropped[1] == dropped[0]  # the system message never reached the model
    assert folded[1] > folded[0] + 40  # folded into the user turn, it does
