"""Shadow traffic through the real app: share, isolation from the client, residency, the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from gateway.policy.model import Policy, PolicyError, hash_key, load_policy
from gateway.quality.shadow import SHADOW, ShadowTraffic, agreement, sampled
from tests.conftest import EU_TEAM_KEY, TEAM_KEY, Fakes, GatewayFactory, policy_for
from tests.fakes.base import Fail, Hang, Ok

ADMIN_KEY = "admin-secret-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ALPHA = {"Authorization": f"Bearer {TEAM_KEY}"}
EU = {"Authorization": f"Bearer {EU_TEAM_KEY}"}


def shadow_policy(fakes: Fakes, *mirrors: dict[str, Any], **settings: Any) -> Policy:
    return policy_for(
        fakes,
        routes=[
            {"name": "default", "candidates": ["gpt"], "task_type": "general"},
            {"name": "local", "candidates": ["ollama"], "task_type": "general"},
        ],
        shadow={"mirrors": list(mirrors), **settings},
    )


async def ask(
    gateway: TestClient[Any, Any],
    headers: dict[str, str],
    model: str = "default",
    text: str = "What is the capital of France?",
    **extra: Any,
) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return await gateway.post("/v1/chat/completions", json=body, headers=headers)


def shadow_of(gateway: TestClient[Any, Any]) -> ShadowTraffic:
    app = gateway.app
    assert app is not None
    shadow: ShadowTraffic = app[SHADOW]
    return shadow


async def report(gateway: TestClient[Any, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    await shadow_of(gateway).drain()
    response = await gateway.get("/admin/shadow", headers=ADMIN)
    assert response.status == 200
    body = await response.json()
    assert body["enabled"] is True
    return {(c["task_type"], c["candidate"]): c for c in body["comparisons"]}


async def test_mirrors_the_configured_share(fakes: Fakes, make_gateway: GatewayFactory) -> None:
    policy = shadow_policy(fakes, {"task_type": "general", "candidate": "gemini", "share": 0.3})
    gateway = await make_gateway(policy, admin_key_sha256=hash_key(ADMIN_KEY))
    ids = []
    for _ in range(200):
        response = await ask(gateway, ALPHA)
        assert response.status == 200
        ids.append(response.headers["x-request-id"])
    stats = (await report(gateway))[("general", "gemini")]
    expected = sum(sampled(i, "gemini", 0.3) for i in ids)
    assert len(fakes.gemini.requests) == expected == stats["mirrored"]
    assert 35 <= expected <= 85  # 0.3 of 200, within ~4 standard deviations
    assert stats["considered"] == 200
    assert stats["compared"] == expected
    assert len(fakes.openai.requests) == 200  # the primary answered every request itself
    # The candidate got the client's conversation at its own pinned version.
    sent = fakes.gemini.requests[0]
    assert sent.path.endswith("gemini-2.0-flash-001:generateContent")
    assert "capital of France" in str(sent.body)


async def test_client_answer_unchanged_and_not_delayed_by_a_hanging_candidate(
    fakes: Fakes, make_gateway: GatewayFactory
) -> None:
    fakes.gemini.default = Hang(30, Ok(text="SHADOW ANSWER"))
    policy = shadow_policy(
        fakes, {"task_type": "general", "candidate": "gemini", "share": 1.0}, max_in_flight=2
    )
    gateway = await make_gateway(policy, admin_key_sha256=hash_key(ADMIN_KEY))
    for i in range(6):
        started = time.perf_counter()
        response = await ask(gateway, ALPHA, stream=i % 2 == 1)
        text = await response.text()
        elapsed = time.perf_counter() - started
        assert response.status == 200
        assert elapsed < 2, f"request {i} took {elapsed:.1f} s"
        assert "Hello" in text
        assert "SHADOW" not in text
        assert response.headers["x-gateway-provider"] == "openai"
    shadow = shadow_of(gateway)
    assert shadow.in_flight == 2  # still hanging: bounded, the rest were not mirrored
    body = await (await gateway.get("/admin/shadow", headers=ADMIN)).json()
    (stats,) = body["comparisons"]
    assert stats["mirrored"] == 2
    assert stats["dropped"] == 4
    assert stats["compared"] == 0
    assert body["in_flight"] == 2
    # Closing the gateway cancels the shadow calls rather than waiting on them.
    started = time.perf_counter()
    await gateway.close()
    assert time.perf_counter() - started < 5
    assert shadow.in_flight == 0


async def test_streamed_requests_are_mirrored_whole(
    fakes: Fakes, make_gateway: GatewayFactory
) -> None:
    policy = shadow_policy(fakes, {"task_type": "general", "candidate": "gemini", "share": 1.0})
    gateway = await make_gateway(policy, admin_key_sha256=hash_key(ADMIN_KEY))
    response = await ask(gateway, ALPHA, stream=True, stream_options={"include_usage": True})
    assert "data: [DONE]" in await response.text()
    stats = (await report(gateway))[("general", "gemini")]
    assert stats["compared"] == 1
    assert fakes.gemini.requests[0].path.endswith(":generateContent")  # not streamed


async def test_residency_is_respected(fakes: Fakes, make_gateway: GatewayFactory) -> None:
    """The EU team's prompts never reach the US candidate; other teams' do."""
    policy = shadow_policy(fakes, {"task_type": "general", "candidate": "claude", "share": 1.0})
    gateway = await make_gateway(policy, admin_key_sha256=hash_key(ADMIN_KEY))
    for _ in range(10):
        response = await ask(gateway, EU, model="local", text="EU-ONLY payroll question")
        assert response.status == 200
        assert response.headers["x-gateway-region"] == "onprem"
    narrowed = {**ALPHA, "x-gateway-regions": "onprem"}
    for _ in range(5):
        assert (await ask(gateway, narrowed, model="local", text="NARROWED")).status == 200
    stats = (await report(gateway))[("general", "claude")]
    assert fakes.anthropic.requests == []
    assert stats["skipped_residency"] == 15
    assert stats["mirrored"] == 0
    # Control: a team allowed any region is mirrored to the same candidate.
    assert (await ask(gateway, ALPHA, model="local", text="ANY REGION")).status == 200
    await shadow_of(gateway).drain()
    assert len(fakes.anthropic.requests) == 1
    assert "ANY REGION" in str(fakes.anthropic.requests[0].body)
    decisions = await (await gateway.get("/admin/decisions?limit=50", headers=ADMIN)).json()
    outcomes = [e["outcome"] for d in decisions for e in d["events"] if e["type"] == "shadow"]
    assert outcomes.count("skipped_residency") == 15
    assert outcomes.count("mirrored") == 1


async def test_comparison_report(fakes: Fakes, make_gateway: GatewayFactory) -> None:
    policy = policy_for(
        fakes,
        routes=[{"name": "default", "candidates": ["gpt"], "task_type": "general"}],
        quality={
            # sample 0: the live judge grades nothing; shadow mode grades both answers.
            "task_types": {"general": {"judge": {"model": "claude", "rubric": "r", "sample": 0}}}
        },
        shadow={"mirrors": [{"task_type": "general", "candidate": "gemini", "share": 1.0}]},
    )
    gateway = await make_gateway(policy, admin_key_sha256=hash_key(ADMIN_KEY))
    fakes.openai.default = Ok(text="The capital of France is Paris.")
    fakes.anthropic.default = Ok(text='{"score": 0.8, "reason": "fine"}')
    fakes.gemini.push(
        Ok(text="The capital of France is Paris."),  # agrees
        Ok(text="I'm sorry, but I can't help with that."),  # a refusal: fails the heuristics
        Fail(503),  # an error: not compared
    )
    for _ in range(3):
        assert (await ask(gateway, ALPHA)).status == 200
        await shadow_of(gateway).drain()
    stats = (await report(gateway))[("general", "gemini")]
    assert stats["mirrored"] == 3
    assert stats["compared"] == 2
    assert stats["errors"] == {"upstream_overloaded": 1}
    primary, candidate = stats["primary"], stats["candidate_answers"]
    assert primary["answers"] == candidate["answers"] == 2
    assert primary["heuristic_pass_rate"] == 1.0
    assert candidate["heuristic_pass_rate"] == 0.5
    assert stats["agreement_rate"] == 0.5
    assert 0.5 <= stats["agreement_mean"] < 0.6  # 1.0 and ~0.1
    assert primary["judged"] == candidate["judged"] == 2
    assert primary["judge_score_mean"] == candidate["judge_score_mean"] == 0.8
    assert len(fakes.anthropic.requests) == 4  # two answers graded per compared request
    # Cost from usage x price (prices are 0 in this policy) and latencies are reported.
    assert candidate["latency_p95_ms"] is not None
    metrics = await (await gateway.get("/metrics")).text()
    assert (
        'gateway_shadow_requests_total{candidate="gemini",outcome="mirrored",'
        'task_type="general"} 3.0' in metrics
    )
    assert (
        'gateway_shadow_heuristic_passes_total{candidate="gemini",side="candidate",'
        'task_type="general"} 1.0' in metrics
    )


async def test_only_the_configured_task_type_is_mirrored(
    fakes: Fakes, make_gateway: GatewayFactory
) -> None:
    policy = shadow_policy(fakes, {"task_type": "summarization", "candidate": "gemini", "share": 1})
    gateway = await make_gateway(policy, admin_key_sha256=hash_key(ADMIN_KEY))
    assert (await ask(gateway, ALPHA)).status == 200
    summary = {**ALPHA, "x-gateway-task": "summarization"}
    assert (await ask(gateway, summary, text="Summarise this.")).status == 200
    stats = await report(gateway)
    assert list(stats) == [("summarization", "gemini")]
    assert stats[("summarization", "gemini")]["mirrored"] == 1
    assert len(fakes.gemini.requests) == 1


async def test_admin_shadow_needs_the_admin_key(fakes: Fakes, make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(policy_for(fakes), admin_key_sha256=hash_key(ADMIN_KEY))
    assert (await gateway.get("/admin/shadow", headers=ALPHA)).status == 401
    body = await (await gateway.get("/admin/shadow", headers=ADMIN)).json()
    assert body == {"enabled": False, "config": None, "comparisons": []}


@pytest.mark.parametrize(
    ("shadow", "message"),
    [
        (
            {"mirrors": [{"task_type": "qa", "candidate": "nope", "share": 0.1}]},
            "shadow.mirrors[0].candidate: unknown model 'nope'",
        ),
        (
            {"mirrors": [{"task_type": "qa", "candidate": "gpt", "share": 1.5}]},
            "shadow.mirrors[0].share: Input should be less than or equal to 1",
        ),
        ({"mirrors": []}, "shadow.mirrors: List should have at least 1 item"),
        (
            {"mirrors": [{"task_type": "qa", "candidate": "gpt", "share": 0.1, "shares": 1}]},
            "shadow.mirrors[0].shares: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_shadow_config_names_the_field(
    tmp_path: Path, shadow: dict[str, Any], message: str
) -> None:
    data = {
        "providers": [{"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:9"}],
        "models": [{"name": "gpt", "provider": "p", "id": "gpt-4o-mini-2024-07-18"}],
        "teams": [{"name": "t", "key_sha256": "0" * 64}],
        "shadow": shadow,
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_agreement() -> None:
    assert agreement("Paris is the capital.", "the capital is Paris") == 1.0
    assert agreement("", "") == 1.0
    assert agreement("yes", "no") == 0.0
    assert 0 < agreement("The answer is 42.", "42") < 1


async def test_an_out_of_region_judge_is_not_asked(
    fakes: Fakes, make_gateway: GatewayFactory
) -> None:
    """The EU team's request is mirrored to the on-prem candidate, but the US judge, which
    would see the prompt too, grades nothing."""
    policy = policy_for(
        fakes,
        routes=[{"name": "eu-route", "candidates": ["gemini"], "task_type": "general"}],
        quality={
            "task_types": {"general": {"judge": {"model": "claude", "rubric": "r", "sample": 0}}}
        },
        shadow={"mirrors": [{"task_type": "*", "candidate": "ollama", "share": 1.0}]},
    )
    gateway = await make_gateway(policy, admin_key_sha256=hash_key(ADMIN_KEY))
    fakes.anthropic.default = Ok(text='{"score": 0.9}')
    assert (await ask(gateway, EU, model="eu-route")).status == 200
    stats = (await report(gateway))[("general", "ollama")]
    assert stats["compared"] == 1
    assert len(fakes.ollama.requests) == 1
    assert fakes.anthropic.requests == []
    assert stats["primary"]["judged"] == stats["candidate_answers"]["judged"] == 0
    # The same request from a team allowed any region is graded (both answers).
    assert (await ask(gateway, ALPHA, model="eu-route")).status == 200
    stats = (await report(gateway))[("general", "ollama")]
    assert stats["primary"]["judged"] == stats["candidate_answers"]["judged"] == 1
    assert len(fakes.anthropic.requests) == 2


async def test_the_candidate_that_answered_is_not_asked_again(
    fakes: Fakes, make_gateway: GatewayFactory
) -> None:
    policy = shadow_policy(fakes, {"task_type": "*", "candidate": "gpt", "share": 1.0})
    gateway = await make_gateway(policy, admin_key_sha256=hash_key(ADMIN_KEY))
    assert (await ask(gateway, ALPHA)).status == 200
    stats = (await report(gateway))[("general", "gpt")]
    assert stats["skipped_same_model"] == 1
    assert stats["mirrored"] == 0
    assert len(fakes.openai.requests) == 1
