"""Deadline-aware attempts: a hung candidate gets its fair share of the deadline, not all of it.

The rule (docs/routing.md#deadlines): an attempt waits for its first byte at most the remaining
deadline divided among the attempts still possible, never less than ``min_attempt_s``; the last
possible attempt has the rest. A stream whose first content arrived in time is not cut.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME
from gateway.routing.hedging import attempt_budget
from tests.fakes.base import Hang, Ok
from tests.worlds import HELLO, KEY, Region, policy

TWO = [{"name": "main", "candidates": ["gpt", "claude"]}]


async def post(
    client: TestClient[Any, Any], deadline_ms: int | None = None, **extra: Any
) -> tuple[int, bytes, Any, float]:
    headers = {"Authorization": f"Bearer {KEY}"}
    if deadline_ms is not None:
        headers["x-gateway-deadline-ms"] = str(deadline_ms)
    started = time.perf_counter()
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "main", "messages": HELLO, **extra},
        headers=headers,
    )
    body = await response.read()
    return response.status, body, response.headers, time.perf_counter() - started


def test_the_budget_rule() -> None:
    assert attempt_budget(30.0, 2, 1.0) == 15.0
    assert attempt_budget(30.0, 3, 1.0) == 10.0
    assert attempt_budget(30.0, 1, 1.0) is None  # the last attempt has the rest
    assert attempt_budget(2.0, 3, 1.0) == 1.0  # the floor
    assert attempt_budget(0.8, 3, 1.0) is None  # the floor exceeds what is left: the rest


@pytest.mark.timeout(60)
async def test_a_hung_primary_fails_over_under_the_default_policy(
    make_gateway: Any, world: Region
) -> None:
    # Default deadline (30 s), default provider timeouts (first byte 60 s), two candidates.
    client = await make_gateway(policy(world, routes=TWO))
    world.gpt_us.push(Hang(120))
    status, body, headers, elapsed = await post(client)
    assert status == 200, body
    assert headers["x-gateway-provider"] == "claude-us"
    assert 13 < elapsed < 20  # half of the 30 s deadline, then the second candidate answers
    decision = client.app[RUNTIME].decisions.recent(1)[0]
    assert [a.outcome for a in decision.attempts] == ["upstream_timeout", "ok"]
    assert "share of the request's deadline" in decision.attempts[0].detail


async def test_each_of_three_candidates_gets_its_share(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(
        policy(world, routes=[{"name": "main", "candidates": ["gpt", "claude", "gemini"]}])
    )
    world.gpt_us.push(Hang(10))
    world.claude_us.push(Hang(10))
    status, body, headers, elapsed = await post(client, deadline_ms=3000)
    assert status == 200, body
    assert headers["x-gateway-provider"] == "gemini-eu"
    assert elapsed < 3.0 + 0.5  # 1 s, 1 s, then the answer, all within the deadline
    latencies = [a.latency_ms for a in client.app[RUNTIME].decisions.recent(1)[0].attempts]
    assert 900 < latencies[0] < 1400
    assert 900 < latencies[1] < 1400


async def test_a_stream_whose_first_content_came_in_time_is_not_cut(
    make_gateway: Any, world: Region
) -> None:
    client = await make_gateway(policy(world, routes=TWO))
    text = "one two three four five six seven eight"
    world.gpt_us.push(Ok(text=text, delay_s=0.3))  # ~2.4 s in all, the first word at once
    status, body, headers, elapsed = await post(client, deadline_ms=4000, stream=True)
    assert status == 200
    assert headers["x-gateway-provider"] == "gpt-us"
    assert elapsed > 2.0  # longer than its 2 s share: the share bounds the first byte only
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    streamed = "".join(ch["delta"].get("content") or "" for c in chunks for ch in c["choices"])
    assert streamed == text


async def test_a_single_candidate_has_the_whole_deadline(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(policy(world, routes=[{"name": "main", "candidates": ["gpt"]}]))
    world.gpt_us.push(Hang(1.5))  # longer than half the deadline, within the whole of it
    status, body, _, _ = await post(client, deadline_ms=2500)
    assert status == 200, body
