"""Cancellation: when the gateway gives up on a call, the provider sees its connection close.

The deadline, a client that goes away (before the answer or mid-stream) and a lost hedge each
close the upstream HTTP request, streams included; the fakes count connections closed before
their answer was complete (``closed_early``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME
from tests.fakes.base import FakeProvider, Hang, Ok
from tests.worlds import HELLO, KEY, Region, policy

ONE = [{"name": "main", "candidates": ["gpt"]}]
LONG_TEXT = " ".join(f"word{i}" for i in range(40))


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "main", "messages": HELLO, **extra}


def headers(deadline_ms: int | None = None) -> dict[str, str]:
    found = {"Authorization": f"Bearer {KEY}"}
    if deadline_ms is not None:
        found["x-gateway-deadline-ms"] = str(deadline_ms)
    return found


async def closed(fake: FakeProvider, count: int = 1, within: float = 1.5) -> float:
    """Seconds until ``fake`` saw ``count`` connections close early (fails after ``within``)."""
    started = time.perf_counter()
    while fake.closed_early < count:
        assert time.perf_counter() - started < within, "the upstream connection stayed open"
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


@pytest.mark.parametrize("stream", [False, True])
async def test_the_deadline_closes_the_upstream_request(
    make_gateway: Any, world: Region, stream: bool
) -> None:
    client: TestClient[Any, Any] = await make_gateway(policy(world, routes=ONE))
    world.gpt_us.push(Hang(10))
    response = await client.post(
        "/v1/chat/completions", json=body(stream=stream), headers=headers(500)
    )
    assert response.status == 504
    error = (await response.json())["error"]
    assert "gpt@gpt-us (us) deadline_exceeded" in error["message"]
    await closed(world.gpt_us)


async def test_a_client_that_goes_away_closes_the_upstream_request(
    make_gateway: Any, world: Region
) -> None:
    client: TestClient[Any, Any] = await make_gateway(policy(world, routes=ONE))
    world.gpt_us.push(Hang(10))
    with pytest.raises(TimeoutError):
        await client.post(
            "/v1/chat/completions",
            json=body(),
            headers=headers(),
            timeout=aiohttp.ClientTimeout(total=0.4),
        )
    await closed(world.gpt_us)
    for _ in range(50):  # the handler's cancellation settles the record
        if decisions := client.app[RUNTIME].decisions.recent(1):
            break
        await asyncio.sleep(0.02)
    assert (decisions[0].status, decisions[0].error) == (499, "client_disconnected")


async def test_a_client_that_leaves_mid_stream_closes_the_upstream_stream(
    make_gateway: Any, world: Region
) -> None:
    client: TestClient[Any, Any] = await make_gateway(policy(world, routes=ONE))
    world.gpt_us.push(Ok(text=LONG_TEXT, delay_s=0.1))  # ~4 s of generation
    response = await client.post("/v1/chat/completions", json=body(stream=True), headers=headers())
    assert response.status == 200
    first = await response.content.readline()
    assert first.startswith(b"data: ")
    response.close()  # the client leaves after its first chunk
    assert await closed(world.gpt_us) < 1.0


async def test_a_lost_hedge_closes_the_losers_request(make_gateway: Any, world: Region) -> None:
    routes = [{"name": "main", "candidates": ["gpt", "claude"], "hedge_after": 0.2}]
    client: TestClient[Any, Any] = await make_gateway(policy(world, routes=routes))
    world.gpt_us.push(Hang(10))
    started = time.perf_counter()
    response = await client.post("/v1/chat/completions", json=body(), headers=headers())
    assert response.status == 200
    assert response.headers["x-gateway-provider"] == "claude-us"
    assert time.perf_counter() - started < 1.5
    await closed(world.gpt_us)
    decision = client.app[RUNTIME].decisions.recent(1)[0]
    assert [(a.model, a.outcome) for a in decision.attempts] == [
        ("gpt", "hedge_lost"),
        ("claude", "ok"),
    ]
