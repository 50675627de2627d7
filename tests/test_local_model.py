"""A real model end to end: llama.cpp's server with Gemma 3 270M behind the embedded policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import numpy as np
import pytest

from gateway.api.app import create_app
from gateway.cli.localmodel import MODEL_ALIAS, LocalModelServer, free_port
from gateway.policy.model import Policy, load_policy
from gateway.policy.settings import EMBEDDED_CONFIG, Settings
from tests.conftest import SdkFactory

pytestmark = [pytest.mark.local_model, pytest.mark.timeout(300)]  # a CPU model on a busy machine

pytest.importorskip("llama_cpp", reason="the 'local' extra (llama-cpp-python) is not installed")


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelServer]:
    data_dir = Path(tmp_path_factory.mktemp("local-model"))
    with LocalModelServer(data_dir, port=free_port(), n_ctx=2048) as server:
        yield server


def embedded_policy_on(server: LocalModelServer) -> Policy:
    """The shipped local.yaml, pointed at the test's port."""
    policy = load_policy(EMBEDDED_CONFIG)
    providers = [
        p if p.kind == "builtin" else p.model_copy(update={"base_url": server.base_url})
        for p in policy.providers
    ]
    return policy.model_copy(update={"providers": providers})


async def test_local_model_answers_through_gateway(
    local_server: LocalModelServer, aiohttp_client: Any, sdk_for: SdkFactory, embedder: Any
) -> None:
    app = create_app(Settings(), embedded_policy_on(local_server), environ={}, embedder=embedder)
    sdk = sdk_for(await aiohttp_client(app), key="dev-key")
    raw = await sdk.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": "Name one colour."}],
        max_tokens=16,
        temperature=0,
        extra_headers={"x-gateway-deadline-ms": "120000"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].message.content.strip()
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    assert raw.headers["x-gateway-provider"] == "local"
    assert raw.headers["x-gateway-model"] == MODEL_ALIAS

    stream = await sdk.chat.completions.create(
        model="gemma-3-270m",
        messages=[{"role": "user", "content": "Name one animal."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        # A CPU model on a busy 2-core machine can take long: the test is about the path.
        extra_headers={"x-gateway-deadline-ms": "120000"},
    )
    text = ""
    finish = None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert text.strip()
    assert finish in {"stop", "length"}


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
