"""Quality signals through the real app: heuristics on answers, regressions, demotion, webhook."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.core.decision import Decision
from gateway.core.runtime import RUNTIME, Runtime
from gateway.policy.model import hash_key
from tests.conftest import TEAM_KEY, Fakes, policy_for
from tests.fakes.base import CutStream, Fail, Ok

AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}
ADMIN_KEY = "sk-admin-quality-0123"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "Summarise the ticket."}]
REFUSAL = "I'm sorry, but I can't help with that."
# Small windows keep the app tests quick; the detector's defaults are tested directly.
FAST_DETECTOR = {"baseline": 40, "min_baseline": 20}


class Webhook:
    """A loopback alert receiver."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(orjson.loads(await request.read()))
        return web.Response(status=204)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [a for a in self.received if a.get("kind") == kind]


@pytest.fixture
async def webhook(aiohttp_server: Callable[..., Any]) -> tuple[Webhook, str]:
    receiver = Webhook()
    app = web.Application()
    app.router.add_post("/alerts", receiver.handle)
    server = await aiohttp_server(app)
    return receiver, str(server.make_url("/alerts"))


def runtime_of(client: TestClient[Any, Any]) -> Runtime:
    app = client.app
    assert app is not None
    runtime: Runtime = app[RUNTIME]
    return runtime


async def ask(
    client: TestClient[Any, Any], model: str = "default", **extra: Any
) -> tuple[int, dict[str, str], Any]:
    headers = {**AUTH, **extra.pop("headers", {})}
    response = await client.post(
        "/v1/chat/completions", json={"model": model, "messages": HELLO, **extra}, headers=headers
    )
    body = await response.read()
    return response.status, {k.lower(): v for k, v in response.headers.items()}, body


def last_decision(client: TestClient[Any, Any]) -> Decision:
    return runtime_of(client).decisions.recent(1)[0]


async def test_every_provider_answer_carries_its_heuristic_signals(
    make_gateway: Callable[..., Any], fakes: Fakes
) -> None:
    client = await make_gateway()
    status, _, _ = await ask(client)
    assert status == 200
    assert last_decision(client).quality["heuristic"] == {
        "score": 1.0,
        "flags": [],
        "passed": True,
    }
    fakes.openai.push(Ok(text="not json"), Ok(text="", finish="length"), Ok(text=REFUSAL))
    await ask(client, response_format={"type": "json_object"})
    assert last_decision(client).quality["heuristic"]["flags"] == ["invalid_json"]
    await ask(client)
    assert last_decision(client).quality["heuristic"]["flags"] == ["empty", "truncated"]
    await ask(client)
    assert last_decision(client).quality["heuristic"]["flags"] == ["refusal"]
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_quality_flags_total{flag="refusal",model="gpt",task_type="general"} 1.0' in (
        metrics
    )


async def test_streamed_answers_are_scored_and_a_cut_stream_is_a_stream_error(
    make_gateway: Callable[..., Any], fakes: Fakes
) -> None:
    client = await make_gateway()
    status, _, body = await ask(client, stream=True)
    assert status == 200
    assert body.endswith(b"data: [DONE]\n\n")
    assert last_decision(client).quality["heuristic"]["flags"] == []
    fakes.openai.push(CutStream(text="Hello from the"))
    status, _, body = await ask(client, stream=True)
    assert status == 200
    assert b'"error"' in body
    assert last_decision(client).quality["heuristic"]["flags"] == ["stream_error"]
    fakes.openai.push(Ok(text=REFUSAL))
    await ask(client, stream=True)
    assert last_decision(client).quality["heuristic"]["flags"] == ["refusal"]


async def test_a_model_that_degrades_mid_run_raises_a_regression_alert_within_a_bound(
    make_gateway: Callable[..., Any], fakes: Fakes, webhook: tuple[Webhook, str]
) -> None:
    receiver, url = webhook
    # The default detector (baseline 500, at least 200 answers before testing).
    client = await make_gateway(alert_webhook_url=url)
    runtime = runtime_of(client)
    for _ in range(220):
        assert (await ask(client))[0] == 200
    assert runtime.alerts.recent("quality_regression") == []
    fakes.openai.default = Ok(text=REFUSAL)  # a new version that refuses everything
    bound = 25
    degraded = 0
    for degraded in range(1, bound + 1):  # noqa: B007 - the count is asserted below
        await ask(client)
        if runtime.alerts.recent("quality_regression"):
            break
    alerts = runtime.alerts.recent("quality_regression")
    assert len(alerts) == 1, f"no regression alert within {bound} degraded requests"
    alert = alerts[0]
    assert alert["model"] == "gpt"
    assert alert["task_type"] == "general"
    assert alert["version"] == "gpt-4o-mini-2024-07-18"
    assert alert["signal"] == "heuristic"
    assert alert["drop"] == pytest.approx(1.0)
    evidence = alert["evidence"]
    assert evidence["baseline_rate"] == 1.0
    assert evidence["recent_rate"] == 0.0
    assert evidence["recent_n"] == degraded
    assert evidence["baseline_n"] >= 200
    assert evidence["cusum"] > evidence["threshold"]
    assert "gpt" in alert["message"]
    assert "general" in alert["message"]
    await runtime.alerts.close()  # delivers the webhook
    delivered = receiver.of_kind("quality_regression")
    assert len(delivered) == 1
    assert delivered[0]["evidence"] == evidence
    assert delivered[0]["model"] == "gpt"
    metrics = await (await client.get("/metrics")).text()
    assert (
        'gateway_quality_regressions_total{model="gpt",signal="heuristic",task_type="general"} 1.0'
        in metrics
    )


async def test_a_stable_model_raises_no_regression_through_the_app(
    make_gateway: Callable[..., Any], fakes: Fakes
) -> None:
    # Noisy but stationary: one answer in ten is cut by the token limit, in a fixed pattern.
    client = await make_gateway(
        policy_for(fakes, quality={"detector": FAST_DETECTOR}),
    )
    for i in range(300):
        fakes.openai.push(Ok(finish="length") if i % 10 == 3 else Ok())
        await ask(client)
    assert runtime_of(client).alerts.recent("quality_regression") == []


async def test_feedback_changes_the_score(make_gateway: Callable[..., Any], fakes: Fakes) -> None:
    client = await make_gateway(admin_key_sha256=hash_key(ADMIN_KEY))
    ids = []
    for _ in range(5):
        _, headers, _ = await ask(client)
        ids.append(headers["x-request-id"])
    quality = runtime_of(client).quality
    assert quality.score("gpt", "general") == 1.0
    for request_id in ids:
        response = await client.post(
            "/v1/feedback", json={"request_id": request_id, "score": 0.0}, headers=AUTH
        )
        assert response.status == 200
        assert (await response.json())["quality_counted"] is True
    again = await client.post("/v1/feedback", json={"request_id": ids[0], "score": 0}, headers=AUTH)
    assert (await again.json())["quality_counted"] is False  # one grade per request counts
    score = quality.score("gpt", "general")
    assert score is not None
    assert score < 0.5
    snapshot = await (await client.get("/admin/quality", headers=ADMIN)).json()
    (row,) = [r for r in snapshot["stats"] if r["model"] == "gpt"]
    assert row["signals"]["feedback"]["n"] == 5
    assert row["signals"]["feedback"]["mean"] == 0.0
    assert row["signals"]["heuristic"]["n"] == 5
    assert row["score"] == pytest.approx(score, abs=1e-4)
    await quality.sync()  # what the background sync does: refresh the score gauge
    metrics = await (await client.get("/metrics")).text()
    assert f'gateway_quality_score{{model="gpt",task_type="general"}} {score}' in metrics


async def test_demote_removes_the_model_for_that_task_type_until_promoted(
    make_gateway: Callable[..., Any], fakes: Fakes
) -> None:
    policy = policy_for(
        fakes,
        quality={"detector": FAST_DETECTOR, "task_types": {"general": {"on_regression": "demote"}}},
    )
    client = await make_gateway(policy, admin_key_sha256=hash_key(ADMIN_KEY))
    for _ in range(FAST_DETECTOR["min_baseline"]):
        await ask(client)
    fakes.openai.default = Ok(text="")
    for _ in range(20):
        _, headers, _ = await ask(client)
        if headers["x-gateway-provider"] == "anthropic":
            break
    assert headers["x-gateway-provider"] == "anthropic"
    (verdict,) = [v for v in last_decision(client).candidates if v.model == "gpt"]
    assert not verdict.kept
    assert verdict.reason.startswith("demoted")
    # Only that task type: another one still goes to gpt.
    _, headers, _ = await ask(client, headers={"x-gateway-task": "translation"})
    assert headers["x-gateway-provider"] == "openai"
    snapshot = await (await client.get("/admin/quality", headers=ADMIN)).json()
    (regression,) = snapshot["regressions"]
    assert regression["model"] == "gpt"
    assert regression["on_regression"] == "demote"
    response = await client.post(
        "/admin/quality/promote", json={"model": "gpt", "task_type": "general"}, headers=ADMIN
    )
    assert (await response.json())["promoted"] is True
    _, headers, _ = await ask(client)
    assert headers["x-gateway-provider"] == "openai"
    assert (await (await client.get("/admin/quality", headers=ADMIN)).json())["regressions"] == []


async def test_the_quality_admin_api_needs_the_admin_key_and_valid_input(
    make_gateway: Callable[..., Any],
) -> None:
    client = await make_gateway(admin_key_sha256=hash_key(ADMIN_KEY))
    assert (await client.get("/admin/quality", headers=AUTH)).status == 401
    response = await client.post("/admin/quality/promote", json={"model": "gpt"}, headers=ADMIN)
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "task_type"
    response = await client.post(
        "/admin/quality/promote", json={"model": "gpt", "task_type": "general"}, headers=ADMIN
    )
    assert (await response.json())["promoted"] is False


async def test_a_high_fallback_rate_raises_one_alert(
    make_gateway: Callable[..., Any], fakes: Fakes, webhook: tuple[Webhook, str]
) -> None:
    receiver, url = webhook
    policy = policy_for(
        fakes,
        quality={"fallback_alert": {"rate": 0.5, "window": 20, "min_requests": 10}},
        routing={"breaker": {"consecutive_failures": 1000, "min_requests": 1000}},
    )
    client = await make_gateway(policy, alert_webhook_url=url)
    for _ in range(10):
        await ask(client)
    fakes.openai.default = Fail(500)
    for _ in range(30):
        _, headers, _ = await ask(client)
        assert headers["x-gateway-provider"] == "anthropic"
    runtime = runtime_of(client)
    (alert,) = runtime.alerts.recent("fallback_rate")
    assert alert["route"] == "default"
    assert alert["rate"] > 0.5
    await runtime.alerts.close()
    assert [a["route"] for a in receiver.of_kind("fallback_rate")] == ["default"]


async def test_a_reloaded_quality_section_applies_at_once(
    make_gateway: Callable[..., Any], fakes: Fakes, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    policy = policy_for(fakes, quality={"detector": FAST_DETECTOR})
    path.write_text(yaml.safe_dump(policy.model_dump()), encoding="utf-8")
    client = await make_gateway(policy, config=path, admin_key_sha256=hash_key(ADMIN_KEY))
    for _ in range(FAST_DETECTOR["min_baseline"]):
        await ask(client)
    data = policy.model_dump()
    data["quality"]["task_types"] = {"general": {"on_regression": "demote"}}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = await (await client.post("/admin/reload", headers=ADMIN)).json()
    assert result["changed"] == ["quality"]
    assert result["restart_required"] == []
    # The detector kept its baseline across the reload; the new action demotes.
    fakes.openai.default = Ok(text="")
    for _ in range(20):
        _, headers, _ = await ask(client)
        if headers["x-gateway-provider"] == "anthropic":
            break
    assert headers["x-gateway-provider"] == "anthropic"


async def test_a_worse_new_version_is_tested_against_the_old_versions_baseline(
    make_gateway: Callable[..., Any], fakes: Fakes
) -> None:
    client = await make_gateway()
    runtime = runtime_of(client)
    for _ in range(220):
        await ask(client)
    # The provider starts serving another version (drift, answered under on_drift: alert) that
    # returns broken JSON: its own baseline would need 200 answers; the old one's is reused.
    new = "gpt-4o-mini-2024-09-30"
    fakes.openai.default = Ok(text="{'not': json", served_model=new)
    for _ in range(25):
        await ask(client, response_format={"type": "json_object"})
        if runtime.alerts.recent("quality_regression"):
            break
    (alert,) = runtime.alerts.recent("quality_regression")
    assert alert["version"] == new
    assert alert["evidence"]["baseline_version"] == "gpt-4o-mini-2024-07-18"
    assert alert["evidence"]["baseline_rate"] == 1.0
    assert "against gpt-4o-mini-2024-07-18's baseline" in alert["message"]
    assert runtime.alerts.recent("version_drift")
    snapshot = runtime.quality.snapshot()
    versions = {row["version"]: row for row in snapshot["stats"] if row["model"] == "gpt"}
    assert versions[new]["latest"] is True
    assert versions["gpt-4o-mini-2024-07-18"]["latest"] is False
    assert runtime.quality.score("gpt", "general") == versions[new]["score"]


async def test_a_demoted_model_that_is_the_only_candidate_keeps_serving(
    make_gateway: Callable[..., Any], fakes: Fakes
) -> None:
    policy = policy_for(
        fakes, quality={"detector": FAST_DETECTOR, "routes": {"gpt": {"on_regression": "demote"}}}
    )
    client = await make_gateway(policy)
    for _ in range(FAST_DETECTOR["min_baseline"]):
        await ask(client, model="gpt")
    fakes.openai.default = Ok(text="")
    for _ in range(20):
        await ask(client, model="gpt")
        if runtime_of(client).quality.regressions():
            break
    _, headers, _ = await ask(client, model="gpt")
    assert headers["x-gateway-provider"] == "openai"  # a worse answer beats no answer
    (verdict,) = last_decision(client).candidates
    assert verdict.kept
    assert "demoted but kept" in verdict.reason
