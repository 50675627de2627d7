"""Found by the chaos run: a stage slowed down by its dependency made requests late.

The cache and knowledge stages ran before the attempt loop without the request's deadline, so a
slow store (or an embedder backlog under load) answered a 1.5 s-deadline request after seconds.
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


async def test_a_slow_stage_does_not_outlive_the_deadline(
    make_gateway: Any, fakes: Fakes, embedder: Any, silent_server: str
) -> None:
    policy = policy_for(fakes, knowledge={"collection": "kb", "timeout_s": 2})
    gateway = await make_gateway(policy, embedder=embedder, qdrant_url=silent_server)
    started = time.monotonic()
    response = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": "Where is my parcel?"}]},
        headers={"Authorization": f"Bearer {TEAM_KEY}", "x-gateway-deadline-ms": "500"},
    )
    elapsed = time.monotonic() - started
    body = await response.json()
    assert response.status == 504
    assert body["error"]["code"] == "deadline_exceeded"
    assert "KnowledgeStage" in body["error"]["message"]
    assert elapsed < 1.5  # the deadline, not the stage's own 2 s timeout
    assert fakes.openai.requests == []  # nothing was sent after the deadline
