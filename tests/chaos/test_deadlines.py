"""Found by the chaos run: a stage slowed down by its dependency made requests late.

The cache and knowledge stages ran before the attempt loop without the request's deadline, so a
slow store (or an embedder backlog under load) answered a 1.5 s-deadline request after seconds.
A stage now gets a time budget (``stage_timeout_s``, at most half of what is left of the
deadline); past it the request goes on without that stage: answered, on time.
Here the knowledge base points at a "Qdrant" that accepts connections and never answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import TEAM_KEY, Fakes, policy_for


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that reads requests and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_stalled_stage_is_skipped_within_the_deadline(
    make_gateway: Any, fakes: Fakes, embedder: Any, silent_server: str
) -> None:
    policy = policy_for(fakes, knowledge={"collection": "kb", "timeout_s": 5})
    gateway = await make_gateway(
        policy, embedder=embedder, qdrant_url=silent_server, stage_timeout_s=1.0
    )
    await gateway.post(  # warm the embedder: this test is about the store, not model loading
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": "Warm up."}]},
        headers={"Authorization": f"Bearer {TEAM_KEY}"},
    )
    started = time.monotonic()
    response = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": "Where is my parcel?"}]},
        headers={"Authorization": f"Bearer {TEAM_KEY}", "x-gateway-deadline-ms": "1000"},
    )
    elapsed = time.monotonic() - started
    assert response.status == 200  # answered without the knowledge base
    assert response.headers["x-gateway-provider"] == "openai"
    assert elapsed < 1.0  # within the deadline, not the stage's own 5 s timeout
    assert len(fakes.openai.requests) == 2
    metrics = await (await gateway.get("/metrics")).text()
    assert 'gateway_stage_timeouts_total{stage="KnowledgeStage"} 2.0' in metrics
