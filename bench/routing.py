"""Routing costs: the router's own decision time, and time to an answer when the primary is down.

    python -m bench.routing [--decisions 50000] [--requests 300]

(1) ``Router.plan`` (filtering + ordering) for a 4-candidate route, per strategy: p50/p99 per
call. Target: <= 0.1 ms p99.
(2) Through the HTTP API (in-process gateway, loopback fakes): p50/p99 time to a successful answer
when the primary answers 503 — with its breaker closed (every request tries it first, then falls
back) and open (the router skips it) — next to a healthy primary.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from gateway.api.app import build_runtime, create_app
from gateway.policy.model import Policy, hash_key
from gateway.policy.settings import Settings
from providers.schema import ChatRequest
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import Fail
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI

KEY = "bench-routing-key"
BODY = {"model": "main", "messages": [{"role": "user", "content": "Where is my parcel?"}]}


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def policy(primary: str, secondary: str, third: str, **routing: Any) -> Policy:
    return Policy.model_validate(
        {
            "providers": [
                {"name": "primary", "kind": "openai", "base_url": primary, "region": "us"},
                {"name": "secondary", "kind": "anthropic", "base_url": secondary, "region": "us"},
                {"name": "third", "kind": "gemini", "base_url": third, "region": "eu"},
                {
                    "name": "fourth",
                    "kind": "openai",
                    "base_url": primary,
                    "region": "eu",
                    "family": "primary-eu",
                },
            ],
            "models": [
                {
                    "name": "a",
                    "provider": "primary",
                    "id": "gpt-4o-mini-2024-07-18",
                    "price": {"input": 0.15, "output": 0.6},
                },
                {
                    "name": "b",
                    "provider": "secondary",
                    "id": "claude-sonnet-4-20250514",
                    "price": {"input": 3, "output": 15},
                },
                {
                    "name": "c",
                    "provider": "third",
                    "id": "gemini-2.0-flash-001",
                    "price": {"input": 0.1, "output": 0.4},
                },
                {
                    "name": "d",
                    "provider": "fourth",
                    "id": "gpt-4o-mini-2024-07-18",
                    "price": {"input": 0.15, "output": 0.6},
                },
            ],
            "routes": [{"name": "main", "candidates": ["a", "b", "c", "d"]}],
            "teams": [{"name": "bench", "key_sha256": hash_key(KEY), "regions": ["us", "eu"]}],
            "routing": routing,
        }
    )


def decision_cost(count: int) -> None:
    print("(1) router decision cost: Router.plan on a 4-candidate route (filter + order)")
    base = policy("http://127.0.0.1:1/v1", "http://127.0.0.1:2", "http://127.0.0.1:3")
    runtime = build_runtime(Settings(), base, {})
    team = runtime.catalog.authenticate(f"Bearer {KEY}")
    route = runtime.catalog.resolve_route(team, "main")
    chat = ChatRequest.from_body(BODY)
    for provider, seconds in (("primary", 0.4), ("secondary", 0.9), ("third", 0.2)):
        runtime.router.observe_latency(provider, seconds)
    print(f"    {'strategy':10s} {'p50 us':>8s} {'p99 us':>8s} {'max us':>8s}")
    for strategy in ("priority", "latency", "cost", "composite"):
        samples = []
        for _ in range(count):
            start = time.perf_counter_ns()
            runtime.router.plan(route, team, chat, task_type="general", strategy=strategy)
            samples.append((time.perf_counter_ns() - start) / 1000)
        print(
            f"    {strategy:10s} {pct(samples, 50):8.1f} {pct(samples, 99):8.1f} "
            f"{max(samples):8.1f}"
        )
    print("    target: <= 100 us p99\n")


async def failover(requests: int) -> None:
    print("(2) time to a successful answer through the API (in-process gateway, loopback fakes)")
    fakes = (FakeOpenAI(), FakeAnthropic(), FakeGemini())
    for fake in fakes:
        await fake.start()
    primary, secondary, third = fakes
    rows = []
    try:
        for label, down, breaker in (
            ("primary healthy", False, None),
            (
                "primary 503, breaker closed",
                True,
                {"consecutive_failures": 10**6, "min_requests": 10**6},
            ),
            ("primary 503, breaker open", True, {"consecutive_failures": 1, "open_s": 3600}),
        ):
            routing = {"breaker": breaker} if breaker else {}
            app = create_app(
                Settings(),
                policy(primary.api_base, secondary.base_url, third.base_url, **routing),
                environ={},
            )
            primary.default = Fail(503) if down else primary.default
            rows.append((label, await _time_requests(app, requests)))
            primary.default = secondary.default  # healthy again (an Ok)
    finally:
        for fake in fakes:
            await fake.stop()
    print(f"    {'case':32s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s}")
    for label, samples in rows:
        print(
            f"    {label:32s} {pct(samples, 50):8.2f} {pct(samples, 99):8.2f} "
            f"{statistics.fmean(samples):8.2f}"
        )


async def _time_requests(app: web.Application, count: int) -> list[float]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    samples = []
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(count + 20):
                start = time.perf_counter()
                async with session.post(
                    url, json=BODY, headers={"Authorization": f"Bearer {KEY}"}
                ) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"unexpected HTTP {response.status}")
                if i >= 20:  # warm-up: connections, breaker opening
                    samples.append((time.perf_counter() - start) * 1000)
    finally:
        await runner.cleanup()
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__)
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # breaker alerts would interleave with the table
    decision_cost(args.decisions)
    asyncio.run(failover(args.requests))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
