"""Panic routing: breakers and Retry-After embargoes never take away a request's last candidates.

When every allowed candidate is held back, they are tried anyway, most likely recovered first;
healthy candidates always go first; a success closes the breaker on every replica; the open
time after failed probes is capped.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME
from gateway.policy.model import BreakerConfig
from gateway.routing.breakers import BreakerBoard
from gateway.routing.shared import LocalState
from tests.conftest import RedisServer
from tests.fakes.base import Fail, FakeProvider
from tests.worlds import EU_KEY, HELLO, KEY, Region, policy

TWO = [{"name": "main", "candidates": ["gpt", "claude"]}]
LONG_OPEN = {"consecutive_failures": 1, "open_s": 30}


async def ask(client: TestClient[Any, Any], key: str = KEY) -> tuple[int, dict[str, Any], Any]:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "main", "messages": HELLO},
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.status, await response.json(), response.headers


def calls(fake: FakeProvider) -> int:
    return len(fake.requests)


def last_decision(client: TestClient[Any, Any]) -> Any:
    return client.app[RUNTIME].decisions.recent(1)[0]


def panics(client: TestClient[Any, Any]) -> float:
    samples = client.app[RUNTIME].metrics.samples("gateway_panic_routing_total")
    return sum(value for _, value in samples)


async def test_every_breaker_open_tries_the_earliest_opened_first(
    make_gateway: Any, world: Region
) -> None:
    client = await make_gateway(policy(world, routes=TWO, breaker=LONG_OPEN))
    world.gpt_us.push(Fail(500))
    world.claude_us.push(Fail(500))
    status, _, _ = await ask(client)  # both fail: both breakers open, gpt's first
    assert status == 503
    board = client.app[RUNTIME].board
    assert board.state("model:gpt") == board.state("model:claude") == "open"
    # Both healthy again, breakers still open for 30 s: panic routing answers.
    status, body, headers = await ask(client)
    assert status == 200, body
    assert headers["x-gateway-provider"] == "gpt-us"
    decision = last_decision(client)
    assert decision.panic is True
    assert decision.candidates[0].reason.startswith("panic rank 1")
    assert panics(client) == 1
    assert board.state("model:gpt") == "closed"  # the success closed it
    # Healthy again: no panic, the closed candidate is used normally.
    status, _, headers = await ask(client)
    assert (status, headers["x-gateway-provider"]) == (200, "gpt-us")
    assert last_decision(client).panic is False


async def test_a_healthy_candidate_is_always_preferred(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(policy(world, routes=TWO, breaker=LONG_OPEN))
    world.gpt_us.push(Fail(500))
    status, _, headers = await ask(client)  # gpt fails and opens; claude answers
    assert (status, headers["x-gateway-provider"]) == (200, "claude-us")
    for _ in range(3):
        status, _, headers = await ask(client)
        assert (status, headers["x-gateway-provider"]) == (200, "claude-us")
        assert last_decision(client).panic is False
    assert calls(world.gpt_us) == 1
    assert panics(client) == 0


async def test_panic_after_every_healthy_candidate_failed(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(policy(world, routes=TWO, breaker=LONG_OPEN))
    world.gpt_us.push(Fail(500))
    await ask(client)  # gpt's breaker opens
    world.claude_us.push(Fail(503))  # the only healthy candidate fails this time
    status, body, headers = await ask(client)
    assert status == 200, body
    assert headers["x-gateway-provider"] == "gpt-us"
    decision = last_decision(client)
    assert decision.panic is True
    assert [a.outcome for a in decision.attempts] == ["upstream_overloaded", "ok"]
    assert {"type": "panic", "reason": "every healthy candidate failed"} in decision.events


async def test_panic_tries_the_embargo_closest_to_its_end_first(
    make_gateway: Any, world: Region
) -> None:
    client = await make_gateway(policy(world, routes=TWO))
    world.gpt_us.push(Fail(429, retry_after=30))
    world.claude_us.push(Fail(429, retry_after=5))
    status, _, _ = await ask(client)
    assert status == 503
    status, body, headers = await ask(client)
    assert status == 200, body
    assert headers["x-gateway-provider"] == "claude-us"  # 5 s left beats 30 s
    assert last_decision(client).panic is True


async def test_panic_never_leaves_the_allowed_regions(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(policy(world, breaker=LONG_OPEN))
    world.gpt_eu.push(Fail(500))
    world.gemini_eu.push(Fail(500))
    status, _, _ = await ask(client, key=EU_KEY)  # both EU candidates open
    assert status == 503
    status, _, headers = await ask(client, key=EU_KEY)
    assert status == 200
    assert headers["x-gateway-provider"] in {"gpt-eu", "gemini-eu"}
    assert calls(world.gpt_us) == calls(world.claude_us) == 0


async def test_a_panic_success_closes_the_breaker_on_every_replica(
    make_gateway: Any, world: Region, redis_server: RedisServer
) -> None:
    prefix = f"gw-panic-{uuid.uuid4().hex[:8]}"
    settings = {"redis_url": redis_server.url, "redis_prefix": prefix}
    one = policy(world, routes=[{"name": "main", "candidates": ["gpt"]}], breaker=LONG_OPEN)
    first = await make_gateway(one, **settings)
    second = await make_gateway(one, **settings)
    world.gpt_us.push(Fail(500))
    status, _, _ = await ask(first)
    assert status == 503
    await first.app[RUNTIME].board.drain()
    board_b = second.app[RUNTIME].board
    await _until(lambda: board_b.state("model:gpt") == "open")
    status, _, _ = await ask(second)  # panic: the only candidate, tried anyway, answers
    assert status == 200
    assert board_b.state("model:gpt") == "closed"
    await board_b.drain()
    board_a = first.app[RUNTIME].board
    await _until(lambda: board_a.state("model:gpt") == "closed")


async def _until(check: Any, seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    assert check()


async def test_breaker_open_time_is_capped() -> None:
    now = [1000.0]
    # The probe lock's own TTL runs on the wall clock: short, so that each half-open may probe.
    config = BreakerConfig(consecutive_failures=1, open_s=15, probe_timeout_s=0.001)
    assert config.max_open_s == 60  # the default cap
    board = BreakerBoard(config, LocalState(), clock=lambda: now[0])
    board.record_failure("model:x", "upstream_overloaded")
    for _ in range(8):  # a probe fails each time the breaker half-opens
        breaker_until = board.recovery_s(("model:x",), "p")[0]
        assert breaker_until <= 60
        now[0] += breaker_until
        await asyncio.sleep(0.005)
        assert await board.acquire_probe("model:x")
        board.record_failure("model:x", "upstream_overloaded")
    assert board.recovery_s(("model:x",), "p")[0] == 60
    await board.drain()
