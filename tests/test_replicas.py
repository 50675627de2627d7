"""Two real ``gateway serve`` processes on one (throwaway) Redis share what replicas must share:
rate limits, budgets, breaker state, team keys, cache entries, run-time cache thresholds and tier
router outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from gateway.policy.model import hash_key
from tests.conftest import EU_TEAM_KEY, LIMITED_TEAM_KEY, TEAM_KEY, Fakes, RedisServer, policy_for
from tests.fakes.base import Fail
from tests.serve_process import GatewayProcess, write_policy

ADMIN_KEY = "admin-secret-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
REPO = Path(__file__).resolve().parent.parent


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    """``check`` turns true within ``within_s``."""
    async with asyncio.timeout(within_s):
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


class Client:
    """An HTTP client of one replica."""

    def __init__(self, session: aiohttp.ClientSession, gateway: GatewayProcess) -> None:
        self.session = session
        self.gateway = gateway

    async def ask(
        self, key: str, model: str = "gpt", text: str = "Hi"
    ) -> tuple[int, dict[str, str]]:
        """The status and headers of one chat completion."""
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        async with self.session.post(
            f"{self.gateway.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            await response.read()
            status: int = response.status
            return status, dict(response.headers)

    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        async with self.session.request(
            method, f"{self.gateway.url}{path}", json=body, headers=ADMIN
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()


Replicas = Callable[..., contextlib.AbstractAsyncContextManager[tuple[Client, Client]]]


@pytest.fixture
def replicas(tmp_path: Path, redis_server: RedisServer) -> Replicas:
    """``async with replicas(policy) as (one, two)``: two replicas on the throwaway Redis."""

    @contextlib.asynccontextmanager
    async def start(policy: dict[str, Any], **env: str) -> AsyncIterator[tuple[Client, Client]]:
        config = tmp_path / "policy.yaml"
        write_policy(config, policy)
        settings = {
            "GATEWAY_REDIS_URL": redis_server.url,
            "GATEWAY_ADMIN_KEY_SHA256": hash_key(ADMIN_KEY),
            **env,
        }
        processes = [
            GatewayProcess(config, tmp_path / f"replica-{i}.log", **settings) for i in (1, 2)
        ]
        try:
            await asyncio.gather(*(p.start() for p in processes))
            async with aiohttp.ClientSession() as session:
                yield Client(session, processes[0]), Client(session, processes[1])
        finally:
            for process in processes:
                process.stop()

    return start


def alerts_logged(clients: tuple[Client, Client], kind: str) -> int:
    return sum(
        line.count(f'"kind":"{kind}"') for client in clients for line in [client.gateway.log()]
    )


@pytest.mark.timeout(120)
async def test_replicas_share_limits_budgets_breakers_and_keys(
    fakes: Fakes, replicas: Replicas
) -> None:
    policy = policy_for(fakes).model_dump()
    for model in policy["models"]:
        if model["name"] == "gpt":
            model["price"] = {"input": 1000, "output": 0}  # $0.011 an answer from the fake
    policy["teams"][1]["requests_per_minute"] = 4  # eu
    policy["teams"][2].update(daily_budget_usd=0.03, budget_alert_at=0.5)  # limited
    policy["routing"]["breaker"].update(consecutive_failures=1, open_s=60)
    async with replicas(policy) as (one, two):
        # Requests per minute: 4 in total across both replicas.
        statuses = [(await c.ask(EU_TEAM_KEY, "ollama"))[0] for c in (one, two) * 4]
        assert sorted(statuses) == [200] * 4 + [429] * 4

        # Budget: spent on one replica counts on the other; each alert once in all.
        for client in (one, two, one):
            assert (await client.ask(LIMITED_TEAM_KEY))[0] == 200
            await asyncio.sleep(0.6)  # the charge is flushed within 0.25 s
        for client in (one, two):
            status, headers = await client.ask(LIMITED_TEAM_KEY)
            assert status == 429
            assert headers["x-gateway-budget-remaining-usd"] == "0.000000"
        assert alerts_logged((one, two), "budget_threshold") == 1
        assert alerts_logged((one, two), "budget_exceeded") == 1

        # Breakers: openai fails once on replica one; replica two skips it without a call.
        fakes.openai.push(Fail(500))
        status, headers = await one.ask(TEAM_KEY, "default")
        assert (status, headers["x-gateway-provider"]) == (200, "anthropic")
        calls = len(fakes.openai.requests)
        await asyncio.sleep(1.5)  # replicas read breaker transitions every 0.5 s
        status, headers = await two.ask(TEAM_KEY, "default")
        assert (status, headers["x-gateway-provider"]) == (200, "anthropic")
        assert len(fakes.openai.requests) == calls  # two never called openai

        # Key rotation on one replica: the old key stops working on the other within seconds.
        rotated = await one.admin("POST", "/admin/teams/alpha/rotate")
        assert (await one.ask(TEAM_KEY, "claude"))[0] == 401

        async def old_key_refused_on_two() -> bool:
            return (await two.ask(TEAM_KEY, "claude"))[0] == 401

        await eventually(old_key_refused_on_two)
        assert (await two.ask(rotated["key"], "claude"))[0] == 200
        added = await two.admin("POST", "/admin/teams", {"name": "late", "routes": ["claude"]})

        async def added_team_works_on_one() -> bool:
            return (await one.ask(added["key"], "claude"))[0] == 200

        await eventually(added_team_works_on_one)
        listing = json.dumps(await one.admin("GET", "/admin/teams"))
        assert added["key"] not in listing
        assert hash_key(added["key"]) not in listing


@pytest.mark.timeout(180)
async def test_replicas_share_cache_entries_and_thresholds(
    fakes: Fakes, replicas: Replicas, redis_server: RedisServer
) -> None:
    policy = policy_for(fakes, cache={"static_threshold": 0.9}).model_dump()
    # The ONNX int8 embedder loads in about a second (exported once under data/models).
    env = {"GATEWAY_EMBEDDER": "onnx-int8", "GATEWAY_DATA_DIR": str(REPO / "data")}
    question = "How do I reset my password?"
    async with replicas(policy, **env) as (one, two):
        status, headers = await one.ask(TEAM_KEY, text=question)
        assert (status, headers["x-gateway-cache"]) == (200, "miss")
        calls = len(fakes.openai.requests)
        # One stores the entry after its answer: two asks once it is in Redis (asked earlier,
        # two would miss and call the provider itself).
        store = aioredis.Redis.from_url(redis_server.url)

        async def stored() -> bool:
            return bool(await store.xlen("gw:c:events"))

        await eventually(stored)
        await store.aclose()

        async def hit_on_two() -> bool:
            _, headers = await two.ask(TEAM_KEY, text=question)
            return headers["x-gateway-cache"] == "hit"

        await eventually(hit_on_two, within_s=10)
        assert len(fakes.openai.requests) == calls  # answered from the entry one stored

        await one.admin(
            "PUT", "/admin/cache/config", {"scope": "team:alpha", "values": {"enabled": False}}
        )

        async def bypass_on_two() -> bool:
            _, headers = await two.ask(TEAM_KEY, text=question)
            return headers["x-gateway-cache"] == "bypass"

        await eventually(bypass_on_two, within_s=10)


@pytest.mark.timeout(180)
async def test_replicas_learn_each_others_tier_outcomes(fakes: Fakes, replicas: Replicas) -> None:
    """A cheap answer graded 0 on one replica makes the other send a similar prompt to the
    frontier: the outcome and its late grade travel through the route's outcome stream."""
    policy = policy_for(fakes).model_dump()
    for model in policy["models"]:
        model["tier"] = {"gpt": "cheap", "claude": "frontier"}.get(model["name"], "standard")
    policy["routes"][0]["tiering"] = {"max_frontier_share": 1.0, "exploration": 0.0}
    env = {"GATEWAY_EMBEDDER": "onnx-int8", "GATEWAY_DATA_DIR": str(REPO / "data")}
    async with replicas(policy, **env) as (one, two):
        status, headers = await one.ask(TEAM_KEY, "default", "Prove that 17 is a prime number.")
        assert (status, headers["x-gateway-tier"]) == (200, "cheap")  # no outcome yet: no gain
        body = {"request_id": headers["X-Request-ID"], "score": 0.0}
        async with one.session.post(
            f"{one.gateway.url}/v1/feedback",
            json=body,
            headers={"Authorization": f"Bearer {TEAM_KEY}"},
        ) as graded:
            assert graded.status == 200

        async def two_learnt_the_grade() -> bool:
            async with one.session.get(f"{two.gateway.url}/metrics") as response:
                text = await response.text()
            return 'gateway_tier_outcomes_total{result="learnt"} 2.0' in text

        await eventually(two_learnt_the_grade, within_s=10)
        status, headers = await two.ask(TEAM_KEY, "default", "Prove that 19 is a prime number.")
        assert (status, headers["x-gateway-tier"]) == (200, "frontier")
