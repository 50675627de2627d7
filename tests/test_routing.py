"""Resilient routing against loopback fakes in several regions (and real Redis for shared state)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy
from tests.conftest import SdkFactory
from tests.fakes.base import Blocked, CutStream, Drop, Fail, FakeProvider, Hang, Ok
from tests.worlds import EU_KEY, HELLO, KEY, Region, policy

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def gateway_on(make_gateway: Any, world: Region) -> Any:
    async def build(**kwargs: Any) -> TestClient[Any, Any]:
        settings = kwargs.pop("settings", {})
        client: TestClient[Any, Any] = await make_gateway(policy(world, **kwargs), **settings)
        return client

    return build


def calls(fake: FakeProvider) -> int:
    return len(fake.requests)


async def ask(
    client: TestClient[Any, Any], *, model: str = "main", key: str = KEY, **extra: Any
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {key}", **extra.pop("headers", {})}
    response = await client.post(
        "/v1/chat/completions", json={"model": model, "messages": HELLO, **extra}, headers=headers
    )
    body = await response.json()
    return response.status, body, response.headers


async def test_outage_answers_from_another_provider(gateway_on: Any, world: Region) -> None:
    client = await gateway_on()
    world.gpt_us.push(Fail(503))
    status, _, headers = await ask(client)
    assert status == 200
    assert headers["x-gateway-provider"] == "claude-us"
    assert headers["x-gateway-fallbacks"] == "1"
    assert headers["x-gateway-regions"] == "us"
    # After an OpenAI-family failure the router prefers another family: gpt-eu comes after Claude.
    assert calls(world.gpt_eu) == 0
    decision = client.app[RUNTIME].decisions.recent(1)[0]
    assert [a.outcome for a in decision.attempts] == ["upstream_overloaded", "ok"]


async def test_moderation_block_skips_the_whole_family(gateway_on: Any, world: Region) -> None:
    client = await gateway_on(routes=[{"name": "main", "candidates": ["gpt", "gpt-eu", "claude"]}])
    world.gpt_us.push(Blocked())
    status, _, headers = await ask(client)
    assert status == 200
    assert headers["x-gateway-provider"] == "claude-us"
    assert calls(world.gpt_eu) == 0  # same moderation layer: never asked


async def test_block_everywhere_returns_the_block(gateway_on: Any, world: Region) -> None:
    client = await gateway_on(routes=[{"name": "main", "candidates": ["gpt", "claude"]}])
    world.gpt_us.push(Blocked())
    world.claude_us.push(Blocked())
    status, body, _ = await ask(client)
    assert status == 400
    assert body["error"]["code"] == "content_blocked"
    assert len(body["error"]["attempts"]) == 2


async def test_invalid_request_is_not_retried(gateway_on: Any, world: Region) -> None:
    client = await gateway_on()
    world.gpt_us.push(Fail(400, message="'messages' is malformed for this model"))
    status, body, _ = await ask(client)
    assert status == 400
    assert "malformed for this model" in body["error"]["message"]
    assert calls(world.claude_us) == calls(world.gpt_eu) == calls(world.gemini_eu) == 0


async def test_hanging_upstream_respects_the_deadline(gateway_on: Any, world: Region) -> None:
    client = await gateway_on()
    for fake in world.all().values():
        fake.push(Hang(5))
    started = time.perf_counter()
    status, body, _ = await ask(client, headers={"x-gateway-deadline-ms": "600"})
    elapsed = time.perf_counter() - started
    assert status == 504
    assert body["error"]["code"] == "deadline_exceeded"
    assert elapsed < 1.2


async def test_first_byte_timeout_falls_back_within_the_deadline(
    make_gateway: Any, world: Region
) -> None:
    data = policy(world).model_dump()
    data["providers"][0]["timeouts"] = {"first_byte": 0.3}
    client = await make_gateway(Policy.model_validate(data))
    world.gpt_us.push(Hang(5))
    started = time.perf_counter()
    status, _, headers = await ask(client, headers={"x-gateway-deadline-ms": "3000"})
    assert status == 200
    assert headers["x-gateway-provider"] in {"gpt-eu", "claude-us"}
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("value", ["0", "-5", "abc", "999999999"])
async def test_bad_deadline_header(gateway_on: Any, value: str) -> None:
    client = await gateway_on()
    status, body, _ = await ask(client, headers={"x-gateway-deadline-ms": value})
    assert status == 400
    assert body["error"]["param"] == "x-gateway-deadline-ms"


async def test_retry_after_is_honoured(gateway_on: Any, world: Region) -> None:
    client = await gateway_on(routes=[{"name": "main", "candidates": ["gpt", "claude"]}])
    world.gpt_us.push(Fail(429, retry_after=30))
    status, _, headers = await ask(client)
    assert (status, headers["x-gateway-provider"]) == (200, "claude-us")
    for _ in range(3):
        status, _, headers = await ask(client)
        assert (status, headers["x-gateway-provider"]) == (200, "claude-us")
    assert calls(world.gpt_us) == 1  # no call before its Retry-After
    decision = client.app[RUNTIME].decisions.recent(1)[0]
    assert "Retry-After" in decision.candidates[0].reason


async def test_connection_reset_retries_once_on_the_same_provider(
    gateway_on: Any, world: Region
) -> None:
    client = await gateway_on()
    world.gpt_us.push(Drop())
    status, _, headers = await ask(client)
    assert status == 200
    assert headers["x-gateway-provider"] == "gpt-us"
    assert calls(world.gpt_us) == 2
    assert calls(world.claude_us) == 0


async def test_upstream_auth_failure_opens_breaker_and_alerts(
    gateway_on: Any, world: Region
) -> None:
    client = await gateway_on()
    world.gpt_us.push(Fail(401))
    status, _, _ = await ask(client)
    assert status == 200
    runtime = client.app[RUNTIME]
    assert runtime.board.state("provider:gpt-us") == "open"
    assert runtime.alerts.recent("provider_misconfigured")
    await ask(client)
    assert calls(world.gpt_us) == 1


async def test_breaker_opens_probes_and_closes(gateway_on: Any, world: Region) -> None:
    client = await gateway_on(
        routes=[{"name": "main", "candidates": ["gpt", "claude"]}],
        breaker={"consecutive_failures": 2, "open_s": 0.3},
    )
    board = client.app[RUNTIME].board
    world.gpt_us.push(Fail(500), Fail(500))
    for _ in range(2):
        status, _, _ = await ask(client)
        assert status == 200
    assert board.state("model:gpt") == "open"
    assert client.app[RUNTIME].alerts.recent("breaker_opened")
    await ask(client)
    assert calls(world.gpt_us) == 2  # open: not called
    await asyncio.sleep(0.35)
    assert board.state("model:gpt") == "half_open"
    status, _, headers = await ask(client)  # the probe
    assert headers["x-gateway-provider"] == "gpt-us"
    assert board.state("model:gpt") == "closed"


async def test_failed_probe_reopens_for_longer(gateway_on: Any, world: Region) -> None:
    client = await gateway_on(
        routes=[{"name": "main", "candidates": ["gpt", "claude"]}],
        breaker={"consecutive_failures": 1, "open_s": 0.2},
    )
    board = client.app[RUNTIME].board
    world.gpt_us.push(Fail(500), Fail(500))
    await ask(client)
    await asyncio.sleep(0.25)
    await ask(client)  # probe fails
    assert board.state("model:gpt") == "open"
    await asyncio.sleep(0.25)
    assert board.state("model:gpt") == "open"  # 0.4 s this time
    await asyncio.sleep(0.2)
    assert board.state("model:gpt") == "half_open"


async def test_breaker_state_is_shared_through_redis(gateway_on: Any, world: Region) -> None:
    pytest.importorskip("redis")
    prefix = f"gw-test-{uuid.uuid4().hex[:8]}"
    settings = {"redis_url": REDIS_URL, "redis_prefix": prefix}
    first = await gateway_on(settings=settings)
    second = await gateway_on(settings=settings)
    world.gpt_us.push(Fail(401))  # the first replica opens gpt-us's breaker
    status, _, _ = await ask(first)
    assert status == 200
    await first.app[RUNTIME].board.drain()
    board = second.app[RUNTIME].board
    for _ in range(40):
        if board.state("provider:gpt-us") == "open":
            break
        await asyncio.sleep(0.05)
    assert board.state("provider:gpt-us") == "open"
    before = calls(world.gpt_us)
    status, _, headers = await ask(second)
    assert status == 200
    assert headers["x-gateway-provider"] != "gpt-us"
    assert calls(world.gpt_us) == before


async def test_eu_team_never_leaves_the_eu(gateway_on: Any, world: Region) -> None:
    client = await gateway_on()
    world.gpt_eu.push(Fail(503))
    world.gemini_eu.push(Fail(503))
    status, body, headers = await ask(client, key=EU_KEY)
    assert status == 503
    assert body["error"]["code"] == "all_providers_failed"
    assert "residency" in body["error"]["message"]
    assert {a["region"] for a in body["error"]["attempts"]} == {"eu"}
    assert headers["x-gateway-regions"] == "eu"
    assert calls(world.gpt_us) == calls(world.claude_us) == 0


async def test_region_header_narrows_but_never_widens(gateway_on: Any, world: Region) -> None:
    client = await gateway_on()
    status, _, headers = await ask(client, headers={"x-gateway-regions": "eu"})
    assert (status, headers["x-gateway-provider"]) == (200, "gpt-eu")
    status, body, _ = await ask(client, key=EU_KEY, headers={"x-gateway-regions": "us"})
    assert status == 503
    assert body["error"]["code"] == "no_eligible_provider"
    assert "allowed regions" in body["error"]["message"]
    assert calls(world.gpt_us) == calls(world.claude_us) == 0


async def test_drift_alerts_and_still_answers(gateway_on: Any, world: Region) -> None:
    client = await gateway_on()
    world.gpt_us.push(Ok(served_model="gpt-4o-mini-2025-03-01"))
    status, _, headers = await ask(client)
    assert status == 200
    assert headers["x-gateway-model"] == "gpt-4o-mini-2025-03-01"
    runtime = client.app[RUNTIME]
    alert = runtime.alerts.recent("version_drift")[0]
    assert (alert["pinned"], alert["served"]) == (
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini-2025-03-01",
    )
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_version_drift_total{model="gpt"' in metrics


async def test_drift_fails_over_when_configured(make_gateway: Any, world: Region) -> None:
    data = policy(world).model_dump()
    data["models"][0]["on_drift"] = "fail_over"
    client = await make_gateway(Policy.model_validate(data))
    world.gpt_us.push(Ok(served_model="gpt-4o-mini-2025-03-01"))
    status, _, headers = await ask(client)
    assert status == 200
    assert headers["x-gateway-provider"] != "gpt-us"
    assert headers["x-gateway-model"] != "gpt-4o-mini-2025-03-01"


async def test_drift_in_a_stream_fails_over_before_any_byte(
    make_gateway: Any, world: Region
) -> None:
    data = policy(world).model_dump()
    data["models"][0]["on_drift"] = "fail_over"
    client = await make_gateway(Policy.model_validate(data))
    world.gpt_us.push(Ok(served_model="gpt-4o-mini-2025-03-01"))
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "main", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status == 200
    assert response.headers["x-gateway-provider"] != "gpt-us"
    assert "gpt-4o-mini-2025-03-01" not in await response.text()


async def test_streaming_fails_over_before_the_first_token(
    gateway_on: Any, world: Region, sdk_for: SdkFactory
) -> None:
    client = await gateway_on(routes=[{"name": "main", "candidates": ["gpt", "claude"]}])
    world.gpt_us.push(CutStream(text=""))  # cut before any content
    sdk = sdk_for(client, KEY)
    raw = await sdk.chat.completions.with_raw_response.create(
        model="main", messages=HELLO, stream=True
    )
    assert raw.headers["x-gateway-provider"] == "claude-us"
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text == Ok().text


async def test_streaming_after_the_first_token_ends_with_an_error_event(
    gateway_on: Any, world: Region
) -> None:
    client = await gateway_on(routes=[{"name": "main", "candidates": ["gpt", "claude"]}])
    world.gpt_us.push(CutStream(text="Your parcel is"))
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "main", "messages": HELLO, "stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    events = [line for line in (await response.text()).splitlines() if line.startswith("data: ")]
    assert (
        orjson.loads(events[-2].removeprefix("data: "))["error"]["code"] == "bad_upstream_response"
    )
    assert events[-1] == "data: [DONE]"
    assert calls(world.claude_us) == 0  # nothing spliced from another model


async def test_attempts_are_bounded(gateway_on: Any, world: Region) -> None:
    client = await gateway_on(max_attempts=2)
    for fake in world.all().values():
        fake.push(Fail(503))
    status, body, _ = await ask(client)
    assert status == 503
    assert len(body["error"]["attempts"]) == 2
    assert sum(calls(f) for f in world.all().values()) == 2


@pytest.mark.parametrize(
    ("strategy", "first"),
    [("priority", "gpt-us"), ("cost", "gemini-eu")],
)
async def test_strategies_order_candidates(gateway_on: Any, strategy: str, first: str) -> None:
    client = await gateway_on(
        routes=[{"name": "main", "candidates": ["gpt", "claude", "gemini"], "strategy": strategy}]
    )
    status, _, headers = await ask(client)
    assert (status, headers["x-gateway-provider"]) == (200, first)
    decision = client.app[RUNTIME].decisions.recent(1)[0]
    assert all(v.reason.startswith("rank") for v in decision.candidates)


async def test_latency_strategy_prefers_the_fast_provider(gateway_on: Any, world: Region) -> None:
    client = await gateway_on(
        routes=[{"name": "main", "candidates": ["gpt", "claude"], "strategy": "latency"}]
    )
    router = client.app[RUNTIME].router
    router.observe_latency("gpt-us", 0.9)
    router.observe_latency("claude-us", 0.1)
    _, _, headers = await ask(client)
    assert headers["x-gateway-provider"] == "claude-us"


async def test_capability_filter(gateway_on: Any, make_gateway: Any, world: Region) -> None:
    data = policy(world).model_dump()
    data["models"][0]["supports_tools"] = False
    data["models"][1]["context_window"] = 10
    client = await make_gateway(Policy.model_validate(data))
    tools = [{"type": "function", "function": {"name": "track", "parameters": {"type": "object"}}}]
    status, _, headers = await ask(client, tools=tools)
    assert (status, headers["x-gateway-provider"]) == (200, "claude-us")
    verdicts = {v.model: v.reason for v in client.app[RUNTIME].decisions.recent(1)[0].candidates}
    assert verdicts["gpt"] == "capability: no tool calling"
    assert "window" in verdicts["gpt-eu"]
