"""Prometheus metrics and decision records after scripted traffic against the loopback fakes."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy, hash_key
from tests.conftest import MODELS, PROVIDER_KEYS, TEAM_KEY, Fakes, policy_for
from tests.fakes.base import Fail, Ok

PROMPT = "Summarise the quarterly report on widget sales, please."
MESSAGES = [{"role": "user", "content": PROMPT}]
OPEN_KEY = "sk-team-open-0123456789"
# USD per 1M tokens: round numbers so that the expected costs are exact.
PRICES = {"gpt": (2.0, 8.0), "claude": (3.0, 15.0)}


def priced_policy(fakes: Fakes) -> Policy:
    models = [
        {"name": alias, "provider": provider, "id": upstream}
        | (
            {"price": {"input": PRICES[alias][0], "output": PRICES[alias][1]}}
            if alias in PRICES
            else {}
        )
        for alias, (provider, upstream) in MODELS.items()
    ]
    teams = [
        {"name": "alpha", "key_sha256": hash_key(TEAM_KEY)},
        {"name": "open", "key_sha256": hash_key(OPEN_KEY), "log_prompts": True},
    ]
    # Metric labels take task types from the policy only (anything else is "other").
    task_types: dict[str, Any] = {"summarize": {}, "chat": {}}
    return policy_for(fakes, models=models, teams=teams, task_types=task_types)


def cost(alias: str, prompt: int, completion: int) -> float:
    price_in, price_out = PRICES[alias]
    return (prompt * price_in + completion * price_out) / 1_000_000


async def ask(
    client: TestClient[Any, Any], *, key: str = TEAM_KEY, task: str = "summarize", **body: Any
) -> Any:
    return await client.post(
        "/v1/chat/completions",
        json={"model": "default", "messages": MESSAGES, **body},
        headers={"Authorization": f"Bearer {key}", "x-gateway-task": task},
    )


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    return sum(
        v
        for key, v in samples(text, name).items()
        if all(dict(key).get(k) == want for k, want in labels.items())
    )


@pytest.fixture
async def client(make_gateway: Any, fakes: Fakes) -> TestClient[Any, Any]:
    gateway: TestClient[Any, Any] = await make_gateway(priced_policy(fakes))
    return gateway


async def scripted_traffic(client: TestClient[Any, Any], fakes: Fakes) -> None:
    # 1. gpt answers.
    fakes.openai.push(Ok(prompt_tokens=100, completion_tokens=50))
    assert (await ask(client)).status == 200
    # 2. gpt is overloaded, claude answers: one fallback.
    fakes.openai.push(Fail(503))
    fakes.anthropic.push(Ok(prompt_tokens=200, completion_tokens=20))
    assert (await ask(client)).status == 200
    # 3. a stream from gpt, with its usage.
    fakes.openai.push(Ok(prompt_tokens=30, completion_tokens=10))
    response = await ask(client, task="chat", stream=True, stream_options={"include_usage": True})
    assert response.status == 200
    await response.read()
    # 4. both fail: 503.
    fakes.openai.push(Fail(503))
    fakes.anthropic.push(Fail(529))
    assert (await ask(client)).status == 503
    # 5. gpt serves another version than its pin (drift, alert only).
    fakes.openai.push(Ok(prompt_tokens=1, completion_tokens=1, served_model="gpt-4o-mini-2099"))
    assert (await ask(client)).status == 200


async def test_metrics_after_scripted_traffic(client: TestClient[Any, Any], fakes: Fakes) -> None:
    await scripted_traffic(client, fakes)
    text = await (await client.get("/metrics")).text()

    requests = "gateway_requests_total"
    assert value(text, requests) == 5
    assert value(text, requests, route="default", model="gpt", provider="openai", status="200") == 3
    assert value(text, requests, model="claude", provider="anthropic", source="provider") == 1
    assert value(text, requests, status="503", source="error", model="none") == 1

    assert value(text, "gateway_fallbacks_total", from_model="gpt", to_model="claude") == 2
    assert (
        value(
            text,
            "gateway_fallbacks_total",
            from_provider="openai",
            to_provider="anthropic",
            reason="upstream_overloaded",
        )
        == 2
    )

    tokens = "gateway_tokens_total"
    assert value(text, tokens, team="alpha", task_type="summarize", model="gpt", kind="prompt") == (
        101
    )
    assert value(text, tokens, team="alpha", model="gpt", kind="completion") == 61
    assert value(text, tokens, task_type="chat", model="gpt", kind="prompt") == 30
    assert value(text, tokens, model="claude", kind="prompt") == 200
    expected_gpt = cost("gpt", 100, 50) + cost("gpt", 1, 1)
    assert value(text, "gateway_cost_usd_total", task_type="summarize", model="gpt") == (
        pytest.approx(expected_gpt)
    )
    assert value(text, "gateway_cost_usd_total", model="claude") == pytest.approx(
        cost("claude", 200, 20)
    )
    assert value(text, "gateway_cost_usd_total", task_type="chat") == pytest.approx(
        cost("gpt", 30, 10)
    )

    # Latency histograms: every request, every attempt (7 calls), one stream's first token.
    assert value(text, "gateway_request_duration_seconds_count") == 5
    assert value(text, "gateway_overhead_seconds_count") == 5
    assert value(text, "gateway_upstream_duration_seconds_count") == 7
    assert (
        value(text, "gateway_upstream_duration_seconds_count", outcome="upstream_overloaded") == 3
    )
    assert value(text, "gateway_time_to_first_token_seconds_count", model="gpt") == 1
    assert value(text, "gateway_version_drift_total", served="gpt-4o-mini-2099") == 1
    assert value(text, "gateway_attempts_total", provider="anthropic") == 2


async def test_decision_records_after_scripted_traffic(
    client: TestClient[Any, Any], fakes: Fakes
) -> None:
    await scripted_traffic(client, fakes)
    records = [d.to_dict() for d in client.app[RUNTIME].decisions.recent(10)]
    assert len(records) == 5
    first, fallback, stream, failed, drift = records

    assert first["team"] == "alpha"
    assert first["task_type"] == "summarize"
    assert (first["prompt_tokens"], first["completion_tokens"]) == (100, 50)
    assert first["cost_usd"] == pytest.approx(cost("gpt", 100, 50))
    assert first["served_by"] == "gpt"
    assert first["served_model"] == MODELS["gpt"][1]
    assert first["total_ms"] == pytest.approx(first["upstream_ms"] + first["overhead_ms"])
    assert 0 < first["upstream_ms"] < first["total_ms"]
    assert first["ttft_ms"] is None
    assert [c["model"] for c in first["candidates"]] == ["gpt", "claude"]

    assert [a["outcome"] for a in fallback["attempts"]] == ["upstream_overloaded", "ok"]
    assert fallback["fallbacks"] == 1
    assert fallback["attempts"][0]["status"] == 503
    assert fallback["cost_usd"] == pytest.approx(cost("claude", 200, 20))

    assert stream["stream"] is True
    assert 0 < stream["ttft_ms"] <= stream["total_ms"]
    assert (stream["prompt_tokens"], stream["completion_tokens"]) == (30, 10)

    assert (failed["status"], failed["source"], failed["error"]) == (
        503,
        "error",
        "all_providers_failed",
    )
    assert failed["cost_usd"] == 0
    assert any(e["type"] == "version_drift" for e in drift["events"])

    # No prompt text, only its hash; no key of any kind.
    digest = hashlib.sha256(orjson.dumps(MESSAGES, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert {r["prompt_sha256"] for r in records} == {digest}
    assert all(r["prompt"] is None for r in records)
    dumped = orjson.dumps(records).decode()
    assert PROMPT not in dumped
    for secret in (TEAM_KEY, hash_key(TEAM_KEY), *PROVIDER_KEYS.values()):
        assert secret not in dumped


async def test_prompt_text_only_for_a_team_that_opts_in(
    client: TestClient[Any, Any], fakes: Fakes
) -> None:
    assert (await ask(client, key=OPEN_KEY)).status == 200
    assert (await ask(client)).status == 200
    opted, default = (d.to_dict() for d in client.app[RUNTIME].decisions.recent(2))
    assert opted["team"] == "open"
    assert opted["prompt"] == MESSAGES
    assert default["prompt"] is None
    assert PROMPT not in orjson.dumps(default).decode()
    assert opted["prompt_sha256"] == default["prompt_sha256"]


async def test_metrics_samples_helper(client: TestClient[Any, Any]) -> None:
    assert (await ask(client)).status == 200
    metrics = client.app[RUNTIME].metrics
    found = metrics.samples("gateway_requests_total")
    assert [(labels["model"], value) for labels, value in found] == [("gpt", 1.0)]
