"""Quality stats and regression verdicts shared by two replicas through a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from gateway.core.runtime import RUNTIME, Runtime
from gateway.policy.model import hash_key
from tests.conftest import TEAM_KEY, Fakes, RedisServer, policy_for
from tests.fakes.base import Ok

ADMIN_KEY = "sk-admin-quality-shared"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}
HELLO = [{"role": "user", "content": "Summarise the ticket."}]


async def ask(client: Any) -> str:
    response = await client.post(
        "/v1/chat/completions", json={"model": "default", "messages": HELLO}, headers=AUTH
    )
    assert response.status == 200
    provider: str = response.headers["x-gateway-provider"]
    return provider


def runtime_of(client: Any) -> Runtime:
    runtime: Runtime = client.app[RUNTIME]
    return runtime


async def eventually(check: Callable[[], bool], timeout_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def policy(fakes: Fakes) -> Any:
    return policy_for(
        fakes,
        quality={
            "detector": {"baseline": 40, "min_baseline": 20},
            "task_types": {"general": {"on_regression": "demote"}},
            "sync_interval_s": 0.05,
        },
    )


async def test_a_regression_seen_by_one_replica_demotes_on_every_replica(
    make_gateway: Callable[..., Any], fakes: Fakes, redis_server: RedisServer
) -> None:
    settings = {
        "redis_url": redis_server.url,
        "redis_prefix": "qshared",
        "admin_key_sha256": hash_key(ADMIN_KEY),
    }
    first = await make_gateway(policy(fakes), **settings)
    second = await make_gateway(policy(fakes), **settings)
    for _ in range(20):
        assert await ask(first) == "openai"
    # Counts are shared: the second replica sees the first one's answers.
    await eventually(
        lambda: (
            (runtime_of(second).quality.snapshot()["stats"] or [{}])[0]
            .get("signals", {})
            .get("heuristic", {})
            .get("n")
            == 20
        )
    )
    fakes.openai.default = Ok(text="")
    for _ in range(20):
        if await ask(first) == "anthropic":
            break
    assert runtime_of(first).quality.regressions()
    # The verdict reaches the other replica, which routes the task type away too.
    await eventually(lambda: bool(runtime_of(second).quality.regressions()))
    assert await ask(second) == "anthropic"
    # A promote through either replica's admin API restores it everywhere.
    response = await second.post(
        "/admin/quality/promote", json={"model": "gpt", "task_type": "general"}, headers=ADMIN
    )
    assert (await response.json())["promoted"] is True
    await eventually(lambda: not runtime_of(first).quality.regressions())
    fakes.openai.default = Ok()
    assert await ask(first) == "openai"
    assert await ask(second) == "openai"


async def test_a_redis_outage_keeps_quality_per_replica(
    make_gateway: Callable[..., Any], fakes: Fakes, redis_server: RedisServer
) -> None:
    client = await make_gateway(policy(fakes), redis_url=redis_server.url, redis_prefix="qout")
    quality = runtime_of(client).quality
    await ask(client)
    await quality.sync()
    redis_server.stop()
    for _ in range(3):
        assert await ask(client) == "openai"
    await quality.sync()  # fails, logs, keeps the counts for later
    (row,) = quality.snapshot()["stats"]
    assert row["signals"]["heuristic"]["n"] == 4
    redis_server.start()
    await quality.sync()  # the pending counts reach Redis once it is back
    # This Redis restarted empty (no persistence): it holds the three counted during the outage.
    (row,) = quality.snapshot()["stats"]
    assert row["signals"]["heuristic"]["n"] == 3
