"""Diagnosable failures: every 5xx says what was tried and why the rest was not.

The caller's 503/504 names this request's attempts and skips, never the providers or regions
outside its allowed regions; the log gets one line per 5xx with everything.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.fakes.base import Fail, Hang
from tests.worlds import EU_KEY, HELLO, KEY, Region, policy


async def ask(
    client: TestClient[Any, Any], key: str = KEY, deadline_ms: int | None = None
) -> tuple[int, dict[str, Any], Any]:
    headers = {"Authorization": f"Bearer {key}"}
    if deadline_ms is not None:
        headers["x-gateway-deadline-ms"] = str(deadline_ms)
    response = await client.post(
        "/v1/chat/completions", json={"model": "main", "messages": HELLO}, headers=headers
    )
    return response.status, (await response.json()).get("error", {}), response.headers


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.failures"]


async def test_a_504_names_the_attempts_the_deadline_cut_off(
    make_gateway: Any, world: Region, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.failures")
    client = await make_gateway(
        policy(world, routes=[{"name": "main", "candidates": ["gpt", "claude"]}])
    )
    world.gpt_us.push(Hang(10))
    world.claude_us.push(Hang(10))
    status, error, headers = await ask(client, deadline_ms=1500)
    assert status == 504
    message = error["message"]
    assert "after 2 attempt(s)" in message
    assert "gpt@gpt-us (us) upstream_timeout after 1.0 s" in message
    assert "claude@claude-us (us) deadline_exceeded" in message
    [line] = failure_lines(caplog)
    assert f"request_id={headers['x-request-id']}" in line
    assert "route=main team=ops status=504" in line
    assert "gpt-us/gpt:upstream_timeout:" in line
    assert "claude-us/claude:deadline_exceeded:" in line


async def test_a_503_names_only_the_requests_own_regions(
    make_gateway: Any, world: Region, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.failures")
    client = await make_gateway(policy(world))
    world.gpt_eu.push(Fail(503))
    world.gemini_eu.push(Fail(503))
    status, error, _ = await ask(client, key=EU_KEY)
    assert status == 503
    message = error["message"]
    assert "gpt-eu@gpt-eu (eu) upstream_overloaded" in message
    assert "gemini@gemini-eu (eu) upstream_overloaded" in message
    assert "2 candidate(s) outside the request's allowed regions" in message
    for hidden in ("gpt-us", "claude", "(us)", "region us"):
        assert hidden not in message
    [line] = failure_lines(caplog)
    assert "team=eu-only" in line
    assert "gpt-us/gpt: residency" in line  # the operator sees everything


async def test_no_eligible_candidate_hides_other_regions(
    make_gateway: Any, world: Region, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.failures")
    client = await make_gateway(
        policy(world, routes=[{"name": "main", "candidates": ["gpt", "claude"]}])
    )
    status, error, _ = await ask(client, key=EU_KEY)
    assert (status, error["code"]) == (503, "no_eligible_provider")
    assert "2 candidate(s) outside the allowed regions" in error["message"]
    assert "gpt-us" not in error["message"]
    assert "claude" not in error["message"]
    [line] = failure_lines(caplog)
    assert "claude-us/claude: residency" in line


async def test_a_503_says_why_a_candidate_was_not_tried(make_gateway: Any, world: Region) -> None:
    client = await make_gateway(
        policy(
            world,
            routes=[{"name": "main", "candidates": ["gpt", "claude", "gemini"]}],
            max_attempts=2,
            breaker={"consecutive_failures": 1, "open_s": 30},
        )
    )
    world.gpt_us.push(Fail(500))
    await ask(client)  # gpt's breaker opens; claude answers
    world.claude_us.push(Fail(503))
    world.gemini_eu.push(Fail(503))
    status, error, _ = await ask(client)
    assert status == 503
    message = error["message"]
    assert "All 2 attempt(s) failed" in message
    assert "not tried: gpt (breaker model:gpt open" in message
