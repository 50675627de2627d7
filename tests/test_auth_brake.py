"""The brake on key guessing (gateway/core/auth_brake.py): failed authentications per client
address and per key prefix turn into 429 with Retry-After after a burst, on every replica through
Redis, per process when Redis is down, and valid keys from other addresses are never refused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from gateway.cli.localmodel import free_port
from gateway.policy.model import hash_key
from tests.conftest import EU_TEAM_KEY, TEAM_KEY, RedisServer

ADMIN_KEY = "brake-admin-key-0123456789"
BURST = 5
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}


def client_at(address: str, key: str) -> dict[str, str]:
    """Headers of a client at ``address`` (behind one trusted proxy) presenting ``key``."""
    return {"X-Forwarded-For": address, "Authorization": f"Bearer {key}"}


async def brakes(make_gateway: Any, **settings: Any) -> TestClient[Any, Any]:
    defaults = {"auth_fail_burst": BURST, "auth_fail_window_s": 30, "forwarded_for_hops": 1}
    client: TestClient[Any, Any] = await make_gateway(
        admin_key_sha256=hash_key(ADMIN_KEY), **{**defaults, **settings}
    )
    return client


async def test_wrong_team_keys_from_one_address_get_429_after_the_burst(
    make_gateway: Any,
) -> None:
    gateway = await brakes(make_gateway)
    for i in range(BURST):
        response = await gateway.post(
            "/v1/chat/completions", json=CHAT, headers=client_at("10.0.0.1", f"sk-guess-{i:04}")
        )
        assert response.status == 401
    over = await gateway.post(
        "/v1/chat/completions", json=CHAT, headers=client_at("10.0.0.1", "sk-guess-last")
    )
    assert over.status == 429
    error = (await over.json())["error"]
    assert error["code"] == "too_many_auth_failures"
    assert 1 <= int(over.headers["Retry-After"]) <= 30
    # From that address even a right key waits: a brake that let a right guess through would
    # not slow guessing.
    blocked = await gateway.post(
        "/v1/chat/completions", json=CHAT, headers=client_at("10.0.0.1", TEAM_KEY)
    )
    assert blocked.status == 429
    # Every other client is untouched, also while the brake holds that address.
    for address in ("10.0.0.2", "10.0.0.3"):
        fine = await gateway.post(
            "/v1/chat/completions", json=CHAT, headers=client_at(address, TEAM_KEY)
        )
        assert fine.status == 200, await fine.text()
    # Anthropic clients get the 429 in their own shape.
    messages = await gateway.post(
        "/v1/messages",
        json={**CHAT, "max_tokens": 8},
        headers={"X-Forwarded-For": "10.0.0.1", "x-api-key": "sk-guess"},
    )
    assert messages.status == 429
    assert (await messages.json())["type"] == "error"


async def test_admin_keys_and_dashboard_sign_in_are_braked(make_gateway: Any) -> None:
    gateway = await brakes(make_gateway)
    statuses = []
    for i in range(BURST + 2):
        response = await gateway.get(
            "/admin/decisions", headers=client_at("10.0.1.1", f"admin-guess-{i}")
        )
        statuses.append(response.status)
    assert statuses == [401] * BURST + [429, 429]
    signs = []
    for i in range(BURST + 2):
        response = await gateway.post(
            "/dashboard/login",
            data={"key": f"form-guess-{i}"},
            headers={"X-Forwarded-For": "10.0.1.2"},
            allow_redirects=False,
        )
        signs.append(response.status)
    assert signs == [401] * BURST + [429, 429]
    right = await gateway.post(
        "/dashboard/login",
        data={"key": ADMIN_KEY},
        headers={"X-Forwarded-For": "10.0.1.3"},
        allow_redirects=False,
    )
    assert right.status == 303
    admin = await gateway.get("/admin/decisions", headers=client_at("10.0.1.4", ADMIN_KEY))
    assert admin.status == 200


async def test_one_key_prefix_guessed_from_many_addresses_is_braked(make_gateway: Any) -> None:
    gateway = await brakes(make_gateway)
    statuses = []
    for i in range(BURST + 2):  # a distributed guesser, one attempt per address
        response = await gateway.get(
            "/v1/models", headers=client_at(f"10.1.0.{i}", f"sk-leaked-pre{i:06}")
        )
        statuses.append(response.status)
    assert statuses == [401] * BURST + [429, 429]
    # Other keys, from fresh addresses, are not affected by that prefix.
    other = await gateway.get("/v1/models", headers=client_at("10.1.1.1", EU_TEAM_KEY))
    assert other.status == 200


async def test_no_credential_is_not_a_guess(make_gateway: Any) -> None:
    gateway = await brakes(make_gateway)
    for _ in range(BURST * 3):
        response = await gateway.get("/v1/models", headers={"X-Forwarded-For": "10.2.0.1"})
        assert response.status == 401
    fine = await gateway.get("/v1/models", headers=client_at("10.2.0.1", TEAM_KEY))
    assert fine.status == 200


async def test_the_count_is_shared_by_replicas_through_redis(
    make_gateway: Any, redis_server: RedisServer
) -> None:
    prefix = f"brake{time.time_ns()}"
    replicas = [
        await brakes(make_gateway, redis_url=redis_server.url, redis_prefix=prefix)
        for _ in range(2)
    ]
    statuses = []
    for i in range(BURST + 1):  # alternating replicas: neither sees the burst on its own
        replica = replicas[i % 2]
        response = await replica.get("/v1/models", headers=client_at("10.3.0.1", f"sk-x{i}"))
        statuses.append(response.status)
    assert statuses == [401] * BURST + [429]
    # The other replica learns of the block with the next failure it sees.
    again = await replicas[0].get("/v1/models", headers=client_at("10.3.0.1", "sk-y"))
    assert again.status == 429


async def test_redis_down_counts_per_process(make_gateway: Any) -> None:
    # Nothing listens on that port: the brake fails open to its local count, still bounded.
    gateway = await brakes(make_gateway, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    statuses = []
    started = time.perf_counter()
    for i in range(BURST + 1):
        response = await gateway.get("/v1/models", headers=client_at("10.4.0.1", f"sk-z{i}"))
        statuses.append(response.status)
    assert statuses == [401] * BURST + [429]
    assert time.perf_counter() - started < 10  # no wait per failure on a dead Redis
    fine = await gateway.get("/v1/models", headers=client_at("10.4.0.2", TEAM_KEY))
    assert fine.status == 200


async def test_the_block_ends_with_its_window(make_gateway: Any) -> None:
    gateway = await brakes(make_gateway, auth_fail_window_s=1.0)
    for i in range(BURST + 1):
        await gateway.get("/v1/models", headers=client_at("10.5.0.1", f"sk-w{i}"))
    assert (await gateway.get("/v1/models", headers=client_at("10.5.0.1", TEAM_KEY))).status == 429
    await asyncio.sleep(1.2)
    response = await gateway.get("/v1/models", headers=client_at("10.5.0.1", TEAM_KEY))
    assert response.status == 200, orjson.loads(await response.read())
