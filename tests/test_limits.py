"""Team limits: requests and tokens per minute, daily budgets, shared through Redis, fail-open."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.core.runtime import RUNTIME, Runtime
from gateway.policy.limits import reset_text
from gateway.policy.model import Policy, hash_key
from tests.conftest import TEAM_KEY, Fakes, RedisServer, policy_for

REDIS_URL = "redis://127.0.0.1:6379/0"
AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}
BODY = {"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]}


def limited_policy(fakes: Fakes, **limits: Any) -> Policy:
    """The test policy with team alpha limited; gpt costs $1000 per 1M input tokens (the fake
    answers with 11 prompt and 7 completion tokens: $0.011 an answer)."""
    base = policy_for(fakes).model_dump()
    for model in base["models"]:
        if model["name"] == "gpt":
            model["price"] = {"input": 1000, "output": 0}
    base["teams"][0].update(limits)
    return Policy.model_validate(base)


def runtime_of(client: TestClient[Any, Any]) -> Runtime:
    assert client.app is not None
    runtime: Runtime = client.app[RUNTIME]
    return runtime


async def ask(client: TestClient[Any, Any], **extra: Any) -> Any:
    return await client.post("/v1/chat/completions", json={**BODY, **extra}, headers=AUTH)


@pytest.fixture
def prefix() -> str:
    return f"gw-limits-{uuid.uuid4().hex[:8]}"


async def test_requests_per_minute_with_openai_headers(
    make_gateway: Any, fakes: Fakes, prefix: str
) -> None:
    gateway = await make_gateway(
        limited_policy(fakes, requests_per_minute=3), redis_url=REDIS_URL, redis_prefix=prefix
    )
    remaining = []
    for _ in range(3):
        response = await ask(gateway)
        assert response.status == 200
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(response.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    refused = await ask(gateway)
    assert refused.status == 429
    body = await refused.json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert body["error"]["type"] == "requests"
    assert "RPM" in body["error"]["message"]
    # One request comes back every 20 s at 3 a minute.
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert TEAM_KEY not in await refused.text()
    assert len(fakes.openai.requests) == 3  # the refused request never reached a provider
    metrics = await (await gateway.get("/metrics")).text()
    assert 'gateway_rate_limited_total{limit="requests",team="alpha"} 1.0' in metrics
    # A refused request is a request like any other in the records and the request counts.
    last = runtime_of(gateway).decisions.recent(1)[0]
    assert (last.status, last.error, last.source) == (429, "rate_limit_exceeded", "error")
    assert last.attempts == []
    assert 'status="429"' in metrics


async def test_unlimited_teams_get_no_headers(make_gateway: Any, fakes: Fakes) -> None:
    gateway = await make_gateway(limited_policy(fakes))
    response = await ask(gateway)
    assert response.status == 200
    assert not any(h.lower().startswith("x-ratelimit") for h in response.headers)


async def test_requests_are_counted_across_replicas(
    make_gateway: Any, fakes: Fakes, prefix: str
) -> None:
    policy = limited_policy(fakes, requests_per_minute=4)
    one = await make_gateway(policy, redis_url=REDIS_URL, redis_prefix=prefix)
    two = await make_gateway(policy, redis_url=REDIS_URL, redis_prefix=prefix)
    statuses = [(await ask(gateway)).status for gateway in (one, two, one, two, one, two)]
    assert statuses == [200, 200, 200, 200, 429, 429]


async def test_tokens_per_minute_are_charged_after_the_answer(
    make_gateway: Any, fakes: Fakes, prefix: str
) -> None:
    gateway = await make_gateway(
        limited_policy(fakes, tokens_per_minute=20), redis_url=REDIS_URL, redis_prefix=prefix
    )
    limits = runtime_of(gateway).limits
    assert limits is not None
    first = await ask(gateway)
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "20"
    assert first.headers["x-ratelimit-remaining-tokens"] == "20"
    await limits.flush()  # 18 tokens charged: 2 left, still admitted
    second = await ask(gateway)
    assert second.status == 200
    assert int(second.headers["x-ratelimit-remaining-tokens"]) in (2, 3)
    await limits.flush()  # 16 tokens in debt
    refused = await ask(gateway)
    assert refused.status == 429
    body = await refused.json()
    assert body["error"]["type"] == "tokens"
    assert "TPM" in body["error"]["message"]
    # 17 tokens to earn back at 20 a minute: about 51 s.
    assert 45 <= int(refused.headers["Retry-After"]) <= 52


async def test_streamed_answers_are_charged(make_gateway: Any, fakes: Fakes, prefix: str) -> None:
    gateway = await make_gateway(
        limited_policy(fakes, tokens_per_minute=10), redis_url=REDIS_URL, redis_prefix=prefix
    )
    response = await ask(gateway, stream=True)
    assert response.status == 200
    assert response.headers["x-ratelimit-remaining-tokens"] == "10"
    assert b"[DONE]" in await response.read()
    limits = runtime_of(gateway).limits
    assert limits is not None
    await limits.flush()
    refused = await ask(gateway, stream=True)
    assert refused.status == 429
    assert (await refused.json())["error"]["type"] == "tokens"


async def test_daily_budget_alerts_once_and_refuses(
    make_gateway: Any, fakes: Fakes, prefix: str
) -> None:
    policy = limited_policy(fakes, daily_budget_usd=0.03, budget_alert_at=0.5)
    one = await make_gateway(policy, redis_url=REDIS_URL, redis_prefix=prefix)
    two = await make_gateway(policy, redis_url=REDIS_URL, redis_prefix=prefix)
    runtimes = [runtime_of(one), runtime_of(two)]

    def alerts(kind: str) -> list[dict[str, Any]]:
        return [a for r in runtimes for a in r.alerts.recent(kind)]

    for gateway in (one, two, one):  # $0.011 each: 0.011, 0.022 (over half), 0.033 (over)
        response = await ask(gateway)
        assert response.status == 200
        for runtime in runtimes:
            assert runtime.limits is not None
            await runtime.limits.flush()
    assert len(alerts("budget_threshold")) == 1  # one replica saw the crossing, once
    assert alerts("budget_threshold")[0]["team"] == "alpha"
    assert len(alerts("budget_exceeded")) == 1
    assert TEAM_KEY not in str(alerts("budget_exceeded"))
    for gateway in (one, two):
        refused = await ask(gateway)
        assert refused.status == 429
        body = await refused.json()
        assert body["error"]["type"] == "budget"
        assert "00:00 UTC" in body["error"]["message"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["x-gateway-budget-remaining-usd"] == "0.000000"
    assert len(alerts("budget_threshold")) == 1


async def test_without_redis_limits_hold_per_process(make_gateway: Any, fakes: Fakes) -> None:
    gateway = await make_gateway(limited_policy(fakes, requests_per_minute=2))
    assert [(await ask(gateway)).status for _ in range(3)] == [200, 200, 429]
    budgeted = await make_gateway(limited_policy(fakes, daily_budget_usd=0.02))
    assert (await ask(budgeted)).status == 200
    assert (await ask(budgeted)).status == 200  # charged at once without Redis: $0.022 spent
    refused = await ask(budgeted)
    assert refused.status == 429
    assert (await refused.json())["error"]["type"] == "budget"
    alerts = runtime_of(budgeted).alerts
    assert [a["kind"] for a in alerts.recent()] == ["budget_threshold", "budget_exceeded"]


async def test_redis_outage_fails_open_with_a_local_limiter(
    make_gateway: Any, fakes: Fakes, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gateway.policy.limits")
    gateway = await make_gateway(
        limited_policy(fakes, requests_per_minute=3), redis_url=redis_server.url
    )
    assert (await ask(gateway)).status == 200  # shared: 2 left, mirrored locally
    redis_server.stop()
    statuses = [(await ask(gateway)).status for _ in range(3)]
    assert statuses == [200, 200, 429]  # the local copy carries on from what Redis said
    assert "limiting per replica" in caplog.text
    metrics = await (await gateway.get("/metrics")).text()
    assert 'gateway_limits_fallback_total{operation="admit"}' in metrics
    redis_server.start()  # back: shared state again (an empty Redis: a full bucket)
    runtime = runtime_of(gateway)
    assert runtime.limits is not None
    runtime.limits._down_until = 0  # skip the retry pause rather than sleep through it
    assert (await ask(gateway)).status == 200
    assert "team limits are shared again" in caplog.text


def test_reset_text_reads_like_openai() -> None:
    assert reset_text(0.25) == "250ms"
    assert reset_text(1) == "1s"
    assert reset_text(20.2) == "21s"
    assert reset_text(360) == "6m0s"


def test_policy_validates_limits(fakes: Fakes) -> None:
    with pytest.raises(ValueError, match="requests_per_minute"):
        limited_policy(fakes, requests_per_minute=0)
    with pytest.raises(ValueError, match="budget_alert_at"):
        limited_policy(fakes, budget_alert_at=1.5)
    assert hash_key(TEAM_KEY) in limited_policy(fakes).teams[0].key_sha256
