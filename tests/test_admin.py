"""The admin API: auth, run-time cache settings, invalidation, decisions; the cache CLI."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.cli.main import main
from gateway.policy.model import hash_key
from tests.conftest import Fakes, policy_for
from tests.test_cache import QUESTION, ask, settle

ADMIN_KEY = "admin-secret-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

REDIS_URL = "redis://127.0.0.1:6379/0"  # the shared Redis (tests/conftest.py)


@pytest.fixture
async def admin_gateway(make_gateway: Any, fakes: Fakes, embedder: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway(
        policy_for(fakes, cache={"static_threshold": 0.85}),
        embedder=embedder,
        admin_key_sha256=hash_key(ADMIN_KEY),
    )
    return client


async def test_admin_needs_the_admin_key(
    admin_gateway: TestClient[Any, Any], make_gateway: Any
) -> None:
    response = await admin_gateway.get("/admin/cache/config")
    assert response.status == 401
    response = await admin_gateway.get(
        "/admin/cache/config", headers={"Authorization": "Bearer sk-team-alpha-0123456789"}
    )
    assert response.status == 401
    disabled = await make_gateway()
    response = await disabled.get("/admin/decisions", headers=ADMIN)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "admin_disabled"


async def test_run_time_settings_apply_at_once(admin_gateway: TestClient[Any, Any]) -> None:
    response = await admin_gateway.put(
        "/admin/cache/config",
        json={"scope": "team:alpha", "values": {"enabled": False}},
        headers=ADMIN,
    )
    assert response.status == 200
    _, _, headers = await ask(admin_gateway)
    assert headers["x-gateway-cache"] == "bypass"
    config = await (await admin_gateway.get("/admin/cache/config", headers=ADMIN)).json()
    assert config["runtime"] == {"team:alpha": {"enabled": False}}
    bad = await admin_gateway.put(
        "/admin/cache/config",
        json={"scope": "team:alpha", "values": {"max_error_rate": 7}},
        headers=ADMIN,
    )
    assert bad.status == 400
    assert "max_error_rate" in (await bad.json())["error"]["message"]


async def test_invalidate_by_team(admin_gateway: TestClient[Any, Any], fakes: Fakes) -> None:
    await ask(admin_gateway)
    await settle(admin_gateway)
    _, _, headers = await ask(admin_gateway)
    assert headers["x-gateway-cache"] == "hit"
    response = await admin_gateway.post(
        "/admin/cache/invalidate", json={"team": "alpha"}, headers=ADMIN
    )
    assert (await response.json())["removed"] >= 1
    _, _, headers = await ask(admin_gateway)
    assert headers["x-gateway-cache"] == "miss"


async def test_recent_decisions(admin_gateway: TestClient[Any, Any]) -> None:
    await ask(admin_gateway)
    decisions = await (await admin_gateway.get("/admin/decisions?limit=5", headers=ADMIN)).json()
    assert decisions[-1]["team"] == "alpha"
    assert decisions[-1]["attempts"][0]["provider"] == "openai"
    assert QUESTION not in str(decisions)  # no prompt text in decision records


def test_cache_cli_sets_and_shows(capsys: pytest.CaptureFixture[str]) -> None:
    prefix = f"gw-test-{uuid.uuid4().hex[:8]}"
    base = ["cache", "--redis-url", REDIS_URL, "--redis-prefix", prefix]
    assert main([*base, "set", "route:gpt", "max_error_rate=0.005", "enabled=true"]) == 0
    assert main([*base, "show"]) == 0
    assert '"max_error_rate": 0.005' in capsys.readouterr().out
    assert main([*base, "set", "route:gpt", "max_error_rate=9"]) == 2
    assert "max_error_rate" in capsys.readouterr().err
    assert main([*base, "unset", "route:gpt"]) == 0
    assert main([*base, "invalidate", "--all"]) == 0
