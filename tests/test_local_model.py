"""A real model end to end: llama.cpp's server with Gemma 3 270M behind the embedded policy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    provider = policy.providers[0].model_copy(update={"base_url": server.base_url})
    return policy.model_copy(update={"providers": [provider]})


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
