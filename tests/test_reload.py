"""Hot reload through POST /admin/reload: validate first, swap atomically, in-flight requests keep
the policy they started with, a bad file changes nothing and says why."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from gateway.core.runtime import LIFECYCLE, RUNTIME
from gateway.policy.model import Policy, hash_key
from tests.conftest import TEAM_KEY, Fakes, policy_for
from tests.fakes.base import Hang, Ok

ADMIN_KEY = "admin-secret-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}


def write_policy(path: Path, policy: Policy | dict[str, Any]) -> None:
    data = policy.model_dump() if isinstance(policy, Policy) else policy
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


async def ask(client: TestClient[Any, Any], model: str = "gpt") -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    return await client.post("/v1/chat/completions", json=body, headers=AUTH)


@pytest.fixture
async def reloadable(
    make_gateway: Any, fakes: Fakes, tmp_path: Path
) -> tuple[TestClient[Any, Any], Path]:
    path = tmp_path / "policy.yaml"
    policy = policy_for(fakes)
    write_policy(path, policy)
    client: TestClient[Any, Any] = await make_gateway(
        policy, config=path, admin_key_sha256=hash_key(ADMIN_KEY)
    )
    return client, path


async def test_reload_applies_a_new_route_and_limits(
    reloadable: tuple[TestClient[Any, Any], Path], fakes: Fakes
) -> None:
    gateway, path = reloadable
    assert (await ask(gateway, "fast")).status == 404
    data = policy_for(fakes).model_dump()
    data["routes"].append({"name": "fast", "candidates": ["ollama"]})
    data["teams"][0]["requests_per_minute"] = 2
    write_policy(path, data)
    response = await gateway.post("/admin/reload", headers=ADMIN)
    assert response.status == 200
    result = await response.json()
    assert result["status"] == "reloaded"
    assert result["changed"] == ["routes", "teams"]
    assert result["restart_required"] == []
    answered = await ask(gateway, "fast")
    assert answered.status == 200
    assert answered.headers["x-gateway-provider"] == "ollama"
    assert (await ask(gateway, "fast")).status == 200
    assert (await ask(gateway, "fast")).status == 429  # the reloaded limit applies


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("providers: [", "not valid YAML"),
        ("- a list", "must be a mapping"),
        (None, "models[0].provider: unknown provider 'nope'"),
    ],
)
async def test_a_bad_file_leaves_the_running_policy(
    reloadable: tuple[TestClient[Any, Any], Path],
    fakes: Fakes,
    content: str | None,
    expected: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway, path = reloadable
    if content is None:
        data = policy_for(fakes).model_dump()
        data["models"][0]["provider"] = "nope"
        write_policy(path, data)
    else:
        path.write_text(content, encoding="utf-8")
    response = await gateway.post("/admin/reload", headers=ADMIN)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "invalid_policy"
    assert str(path) in error["message"]
    assert expected in error["message"]
    assert "running policy stays" in caplog.text
    assert (await ask(gateway)).status == 200


async def test_in_flight_requests_finish_on_their_policy(
    reloadable: tuple[TestClient[Any, Any], Path], fakes: Fakes
) -> None:
    gateway, path = reloadable
    fakes.openai.push(Hang(0.5, Ok(text="from the old policy")))
    in_flight = asyncio.create_task(ask(gateway))
    async with asyncio.timeout(5):
        while not fakes.openai.requests:  # the request reached the provider  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    # The new policy drops the openai provider and the gpt alias: a new pool is built.
    data = policy_for(fakes).model_dump()
    data["providers"] = [p for p in data["providers"] if p["name"] != "openai"]
    data["models"] = [m for m in data["models"] if m["name"] != "gpt"]
    data["routes"] = [{"name": "default", "candidates": ["claude"]}]
    data["teams"][2]["routes"] = ["claude"]
    write_policy(path, data)
    reload = await gateway.post("/admin/reload", headers=ADMIN)
    assert reload.status == 200
    assert set((await reload.json())["changed"]) >= {"providers", "models", "routes"}
    answered = await in_flight
    assert answered.status == 200
    assert (await answered.json())["choices"][0]["message"]["content"] == "from the old policy"
    assert (await ask(gateway)).status == 404  # new requests see the new policy
    assert (await ask(gateway, "default")).headers["x-gateway-provider"] == "anthropic"
    assert gateway.app is not None
    assert gateway.app[LIFECYCLE]._retired  # the old pool closes once nothing can use it


async def test_reload_keeps_run_time_teams(
    reloadable: tuple[TestClient[Any, Any], Path], fakes: Fakes
) -> None:
    gateway, path = reloadable
    created = await (await gateway.post("/admin/teams", json={"name": "ops"}, headers=ADMIN)).json()
    write_policy(path, policy_for(fakes))
    assert (await gateway.post("/admin/reload", headers=ADMIN)).status == 200
    response = await gateway.get(
        "/v1/models", headers={"Authorization": f"Bearer {created['key']}"}
    )
    assert response.status == 200


async def test_reload_needs_the_admin_key(reloadable: tuple[TestClient[Any, Any], Path]) -> None:
    gateway, _ = reloadable
    assert (await gateway.post("/admin/reload", headers=AUTH)).status == 401


async def test_sections_built_at_start_need_a_restart(
    reloadable: tuple[TestClient[Any, Any], Path], fakes: Fakes
) -> None:
    gateway, path = reloadable
    data = policy_for(fakes).model_dump()
    data["knowledge"] = {"collection": "other"}
    write_policy(path, data)
    result = await (await gateway.post("/admin/reload", headers=ADMIN)).json()
    assert result["restart_required"] == ["knowledge"]


async def test_tiering_on_a_gateway_without_an_embedder_needs_a_restart(
    reloadable: tuple[TestClient[Any, Any], Path], fakes: Fakes
) -> None:
    """The tier router compares prompts by their embedding, and the embedding model is loaded at
    start-up only when something needs it: a reload that adds the first ``tiering`` says so."""
    gateway, path = reloadable
    data = policy_for(fakes).model_dump()
    data["routes"][0]["tiering"] = {}
    write_policy(path, data)
    result = await (await gateway.post("/admin/reload", headers=ADMIN)).json()
    assert result["changed"] == ["routes"]
    assert result["restart_required"] == ["routes.tiering"]
    assert gateway.app is not None
    assert gateway.app[RUNTIME].tiers is None
    assert (await ask(gateway, "default")).status == 200


async def test_a_run_time_team_the_new_policy_cannot_hold_is_left_out(
    reloadable: tuple[TestClient[Any, Any], Path], fakes: Fakes, caplog: pytest.LogCaptureFixture
) -> None:
    gateway, path = reloadable
    spec = {"name": "local-only", "routes": ["ollama"]}
    created = await (await gateway.post("/admin/teams", json=spec, headers=ADMIN)).json()
    data = policy_for(fakes).model_dump()
    data["models"] = [m for m in data["models"] if m["name"] != "ollama"]
    write_policy(path, data)
    assert (await gateway.post("/admin/reload", headers=ADMIN)).status == 200
    assert "ignoring run-time team 'local-only'" in caplog.text
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert (await gateway.get("/v1/models", headers=headers)).status == 401
    assert (await ask(gateway)).status == 200  # everyone else carries on
