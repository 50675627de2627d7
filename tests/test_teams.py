"""The team admin API: add a team, rotate its key, list teams; an overlay shared through Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.policy.model import hash_key
from gateway.policy.teams import SYNC_INTERVAL_S
from tests.conftest import TEAM_KEY, Fakes, RedisServer, policy_for

REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = "admin-secret-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BODY = {"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]}


async def ask(client: TestClient[Any, Any], key: str, model: str = "gpt") -> int:
    response = await client.post(
        "/v1/chat/completions",
        json={**BODY, "model": model},
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.status


async def eventually(check: Any) -> None:
    """``check`` turns true within a few sync intervals."""
    deadline = asyncio.get_running_loop().time() + 3 * SYNC_INTERVAL_S + 2
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the sync interval"
        await asyncio.sleep(0.1)


@pytest.fixture
def prefix() -> str:
    return f"gw-teams-{uuid.uuid4().hex[:8]}"


async def build(make_gateway: Any, fakes: Fakes, **settings: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway(
        policy_for(fakes), admin_key_sha256=hash_key(ADMIN_KEY), **settings
    )
    return client


async def test_add_a_team_and_use_its_key(make_gateway: Any, fakes: Fakes) -> None:
    gateway = await build(make_gateway, fakes)
    response = await gateway.post(
        "/admin/teams",
        json={"name": "research", "routes": ["gpt"], "requests_per_minute": 2},
        headers=ADMIN,
    )
    assert response.status == 200
    created = await response.json()
    key = created["key"]
    assert key.startswith("sk-gw-")
    assert len(key) > 40
    assert created["team"]["requests_per_minute"] == 2
    assert await ask(gateway, key) == 200
    assert await ask(gateway, key, model="claude") == 403  # only the routes it was given
    assert await ask(gateway, key) == 200
    assert await ask(gateway, key) == 429  # its limit applies
    again = await gateway.post("/admin/teams", json={"name": "research"}, headers=ADMIN)
    assert again.status == 409
    assert (await again.json())["error"]["code"] == "team_exists"


async def test_bad_team_specs_are_400_naming_the_field(make_gateway: Any, fakes: Fakes) -> None:
    gateway = await build(make_gateway, fakes)
    for spec, field in [
        ({"name": "x", "routes": ["nope"]}, "routes"),
        ({"name": "x", "requests_per_minute": 0}, "requests_per_minute"),
        ({"name": "x", "key_sha256": "ab" * 32}, "key_sha256"),
        ({"routes": ["gpt"]}, "name"),
        ({"name": "x", "colour": "blue"}, "colour"),
    ]:
        response = await gateway.post("/admin/teams", json=spec, headers=ADMIN)
        assert response.status == 400, spec
        assert field in (await response.json())["error"]["message"]
    assert (await gateway.post("/admin/teams", json={"name": "x"})).status == 401


async def test_rotate_a_policy_teams_key(make_gateway: Any, fakes: Fakes) -> None:
    gateway = await build(make_gateway, fakes)
    assert await ask(gateway, TEAM_KEY) == 200
    response = await gateway.post("/admin/teams/alpha/rotate", headers=ADMIN)
    assert response.status == 200
    new_key = (await response.json())["key"]
    assert await ask(gateway, TEAM_KEY) == 401
    assert await ask(gateway, new_key) == 200
    missing = await gateway.post("/admin/teams/nobody/rotate", headers=ADMIN)
    assert missing.status == 404


async def test_listing_never_shows_keys_or_hashes(make_gateway: Any, fakes: Fakes) -> None:
    gateway = await build(make_gateway, fakes)
    added = await (await gateway.post("/admin/teams", json={"name": "ops"}, headers=ADMIN)).json()
    listing = await gateway.get("/admin/teams", headers=ADMIN)
    text = await listing.text()
    teams = {t["name"]: t for t in (await listing.json())["teams"]}
    assert set(teams) == {"alpha", "eu", "limited", "ops"}
    assert teams["ops"]["source"] == "admin"
    assert teams["alpha"]["source"] == "policy"
    assert teams["alpha"]["keys"] == 1
    for secret in (added["key"], hash_key(added["key"]), TEAM_KEY, hash_key(TEAM_KEY)):
        assert secret not in text


async def test_rotation_reaches_every_replica_within_seconds(
    make_gateway: Any, fakes: Fakes, prefix: str
) -> None:
    one = await build(make_gateway, fakes, redis_url=REDIS_URL, redis_prefix=prefix)
    two = await build(make_gateway, fakes, redis_url=REDIS_URL, redis_prefix=prefix)
    created = await (await one.post("/admin/teams", json={"name": "new"}, headers=ADMIN)).json()
    # Before two has synced: the name is still taken (checked in Redis, not two's copy).
    clash = await two.post("/admin/teams", json={"name": "new"}, headers=ADMIN)
    assert clash.status == 409

    async def known_on_two() -> bool:
        return await ask(two, created["key"]) == 200

    await eventually(known_on_two)
    rotated = await (await two.post("/admin/teams/new/rotate", headers=ADMIN)).json()
    assert await ask(two, created["key"]) == 401  # at once where it was rotated

    async def old_key_refused_on_one() -> bool:
        return await ask(one, created["key"]) == 401

    await eventually(old_key_refused_on_one)
    assert await ask(one, rotated["key"]) == 200
    # A replica started later reads the overlay before serving.
    three = await build(make_gateway, fakes, redis_url=REDIS_URL, redis_prefix=prefix)
    assert await ask(three, rotated["key"]) == 200


async def test_overlay_survives_a_redis_outage(
    make_gateway: Any, fakes: Fakes, redis_server: RedisServer
) -> None:
    gateway = await build(make_gateway, fakes, redis_url=redis_server.url)
    created = await (
        await gateway.post("/admin/teams", json={"name": "kept"}, headers=ADMIN)
    ).json()
    redis_server.stop()
    await asyncio.sleep(SYNC_INTERVAL_S + 0.5)  # a sync pass fails: the last overlay stays
    assert await ask(gateway, created["key"]) == 200
    refused = await gateway.post("/admin/teams", json={"name": "later"}, headers=ADMIN)
    assert refused.status == 503
    assert (await refused.json())["error"]["code"] == "team_store_unavailable"
