"""Hedged requests: a route's ``hedge_after`` starts the next candidate beside a slow first one.

Off by default; the first answer wins and the other call is cancelled; both are in the decision
record; a gateway-wide cap on the share hedged; never outside the allowed regions; never for a
request that asks the provider to keep state.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pydantic
import pytest
from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME
from tests.fakes.base import Fail, FakeProvider, Hang
from tests.worlds import EU_KEY, HELLO, KEY, Region, policy


def hedged(after: float | str, candidates: tuple[str, ...] = ("gpt", "claude")) -> Any:
    return [{"name": "main", "candidates": list(candidates), "hedge_after": after}]


async def ask(client: TestClient[Any, Any], key: str = KEY, **extra: Any) -> tuple[int, Any, float]:
    started = time.perf_counter()
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "main", "messages": HELLO, **extra},
        headers={"Authorization": f"Bearer {key}"},
    )
    await response.read()
    return response.status, response.headers, time.perf_counter() - started


def calls(fake: FakeProvider) -> int:
    return len(fake.requests)


def outcomes(client: TestClient[Any, Any]) -> list[tuple[str, str]]:
    decision = client.app[RUNTIME].decisions.recent(1)[0]
    return [(a.model, a.outcome) for a in decision.attempts]


def hedge_count(client: TestClient[Any, Any]) -> float:
    samples = client.app[RUNTIME].metrics.samples("gateway_hedges_total")
    return sum(value for _, value in samples)


async def test_no_hedge_unless_the_route_asks(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(
        policy(world, routes=[{"name": "main", "candidates": ["gpt", "claude"]}])
    )
    world.gpt_us.push(Hang(0.6))
    status, headers, _ = await ask(client)
    assert (status, headers["x-gateway-provider"]) == (200, "gpt-us")
    assert calls(world.claude_us) == 0


async def test_the_primary_can_still_win(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(policy(world, routes=hedged(0.1)))
    world.gpt_us.push(Hang(0.4))
    world.claude_us.push(Hang(3))
    status, headers, elapsed = await ask(client)
    assert (status, headers["x-gateway-provider"]) == (200, "gpt-us")
    assert elapsed < 1.5
    assert outcomes(client) == [("claude", "hedge_lost"), ("gpt", "ok")]
    assert hedge_count(client) == 1
    for _ in range(50):
        if world.claude_us.closed_early:
            break
        await asyncio.sleep(0.02)
    assert world.claude_us.closed_early == 1  # the loser's connection was closed


async def test_both_failing_moves_on_to_the_next_candidate(
    make_gateway: Any, world: Region
) -> None:
    client = await make_gateway(policy(world, routes=hedged(0.1, ("gpt", "claude", "gemini"))))
    world.gpt_us.push(Hang(0.3, then=Fail(503)))
    world.claude_us.push(Fail(503))
    status, headers, _ = await ask(client)
    assert (status, headers["x-gateway-provider"]) == (200, "gemini-eu")
    assert sorted(outcomes(client)) == [
        ("claude", "upstream_overloaded"),
        ("gemini", "ok"),
        ("gpt", "upstream_overloaded"),
    ]


async def test_the_share_hedged_is_capped(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(policy(world, routes=hedged(0.05), hedge_max_share=0))
    world.gpt_us.push(Hang(0.4))
    status, headers, _ = await ask(client)
    assert (status, headers["x-gateway-provider"]) == (200, "gpt-us")
    assert calls(world.claude_us) == 0
    decision = client.app[RUNTIME].decisions.recent(1)[0]
    assert {"type": "hedge_capped"} in decision.events


async def test_the_cap_lets_a_share_through(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(policy(world, routes=hedged(0.05), hedge_max_share=0.25))
    world.gpt_us.default = Hang(0.2)
    for _ in range(20):
        status, _, _ = await ask(client)
        assert status == 200
    # One token at start, then a quarter per request: 1 + 20 / 4 = 6 hedges at most.
    assert 4 <= hedge_count(client) <= 6


async def test_a_request_that_keeps_state_is_not_hedged(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(policy(world, routes=hedged(0.05)))
    world.gpt_us.push(Hang(0.4))
    status, headers, _ = await ask(client, store=True)
    assert (status, headers["x-gateway-provider"]) == (200, "gpt-us")
    assert calls(world.claude_us) == 0


async def test_percentile_hedging_waits_for_enough_samples(
    make_gateway: Any, world: Region
) -> None:
    client = await make_gateway(policy(world, routes=hedged("p90")))
    world.gpt_us.push(Hang(0.5))
    status, headers, _ = await ask(client)  # no samples yet: no hedge
    assert (status, headers["x-gateway-provider"]) == (200, "gpt-us")
    assert calls(world.claude_us) == 0
    for _ in range(20):  # fast answers: p90 is a few milliseconds
        await ask(client)
    world.gpt_us.push(Hang(3))
    status, headers, elapsed = await ask(client)
    assert (status, headers["x-gateway-provider"]) == (200, "claude-us")
    assert elapsed < 1.5


async def test_a_hedge_never_leaves_the_allowed_regions(make_gateway: Any, world: Region) -> None:
    routes = hedged(0.1, ("gpt", "gpt-eu", "claude", "gemini"))
    client = await make_gateway(policy(world, routes=routes))
    world.gpt_eu.push(Hang(3))
    status, headers, _ = await ask(client, key=EU_KEY)
    assert (status, headers["x-gateway-provider"]) == (200, "gemini-eu")
    assert calls(world.gpt_us) == calls(world.claude_us) == 0


@pytest.mark.parametrize("value", ["fast", "p0", "p100", -1, 0])
def test_hedge_after_is_validated(world: Region, value: Any) -> None:
    with pytest.raises(pydantic.ValidationError, match="hedge_after"):
        policy(world, routes=hedged(value))


def test_hedge_after_accepts_seconds_and_percentiles(world: Region) -> None:
    for value in (0.5, 2, "p95", "p99.9", "p50"):
        policy(world, routes=hedged(value))
