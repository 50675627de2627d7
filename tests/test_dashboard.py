"""The dashboard: admin auth (bearer and session cookie), and its data after scripted traffic."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.admin.dashboard import COOKIE
from gateway.core.decision import Attempt, Decision
from gateway.policy.model import Policy, hash_key
from gateway.telemetry.timeseries import TrafficSeries
from tests.conftest import LIMITED_TEAM_KEY, MODELS, PROVIDER_KEYS, TEAM_KEY, Fakes, policy_for
from tests.fakes.base import Fail, Ok
from tests.test_cache import settle

ADMIN_KEY = "dashboard-admin-key-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PRICES = {"gpt": (0.15, 0.6), "claude": (3.0, 15.0), "gemini": (0.1, 0.4), "ollama": (0.0, 0.0)}
GPT_USAGE, CLAUDE_USAGE = (100, 50), (200, 100)


def usd(model: str, usage: tuple[int, int]) -> float:
    price_in, price_out = PRICES[model]
    return (usage[0] * price_in + usage[1] * price_out) / 1_000_000


def priced_policy(fakes: Fakes, **overrides: Any) -> Policy:
    models = [
        {
            "name": alias,
            "provider": provider,
            "id": upstream,
            "price": {"input": PRICES[alias][0], "output": PRICES[alias][1]},
        }
        for alias, (provider, upstream) in MODELS.items()
    ]
    return policy_for(fakes, models=models, **overrides)


@dataclass
class Expected:
    """What the scripted traffic must show on the dashboard."""

    requests: int = 10
    fallbacks: int = 4  # two answered after a 503, one error after two failures
    errors: int = 1
    cache_hits: int = 1
    feedback: dict[tuple[str, str], list[float]] = field(
        default_factory=lambda: {("gpt", "summarize"): [0.9, 0.7], ("claude", "code"): [0.2]}
    )
    cost_by_team: dict[str, float] = field(default_factory=dict)
    cost_by_task: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        gpt, claude = usd("gpt", GPT_USAGE), usd("claude", CLAUDE_USAGE)
        self.cost_by_team = {"alpha": 3 * gpt + 2 * claude + gpt, "limited": 2 * gpt}
        self.cost_by_task = {"summarize": 5 * gpt, "code": 2 * claude, "faq": gpt}


QUESTIONS = {
    "summarize": [
        "Summarise the minutes of Tuesday's budget meeting.",
        "Give me the gist of the attached shipping contract.",
        "Condense this incident report into three bullet points.",
        "What are the main points of the quarterly sales memo?",
        "Briefly recap the onboarding guide for new hires.",
    ],
    "code": [
        "Write a Python function that parses ISO-8601 dates.",
        "Why does my Rust borrow checker reject this loop?",
        "Explain the SQL join that returns duplicate rows.",
    ],
    "faq": ["How do I reset my password?"],
}


async def scripted_traffic(client: TestClient[Any, Any], fakes: Fakes) -> Expected:
    """Successes, fallbacks after a 503, one failure, a cache hit; two teams, three task types."""
    fakes.openai.default = Ok(prompt_tokens=GPT_USAGE[0], completion_tokens=GPT_USAGE[1])
    fakes.anthropic.default = Ok(prompt_tokens=CLAUDE_USAGE[0], completion_tokens=CLAUDE_USAGE[1])

    async def ask(key: str, model: str, task: str, question: str) -> tuple[int, Any]:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": question}]},
            headers={"Authorization": f"Bearer {key}", "x-gateway-task": task},
        )
        await response.read()
        await settle(client)  # each answer stored before the next lookup
        return response.status, response.headers

    async def grade(headers: Any, score: float) -> None:
        response = await client.post(
            "/v1/feedback",
            json={"request_id": headers["x-request-id"], "score": score},
            headers={"Authorization": f"Bearer {TEAM_KEY}"},
        )
        assert response.status == 200

    summaries, code = QUESTIONS["summarize"], QUESTIONS["code"]
    for question, score in zip(summaries[:3], (0.9, 0.7, None), strict=True):
        status, headers = await ask(TEAM_KEY, "default", "summarize", question)
        assert status == 200
        if score is not None:
            await grade(headers, score)
    for question in summaries[3:]:
        assert (await ask(LIMITED_TEAM_KEY, "gpt", "summarize", question))[0] == 200
    for question in code[:2]:
        fakes.openai.push(Fail(503))
        status, headers = await ask(TEAM_KEY, "default", "code", question)
        assert (status, headers["x-gateway-provider"]) == (200, "anthropic")
        if question == code[0]:
            await grade(headers, 0.2)
    fakes.openai.push(Fail(503))
    fakes.anthropic.push(Fail(500))
    assert (await ask(TEAM_KEY, "default", "code", code[2]))[0] == 503
    faq = QUESTIONS["faq"][0]
    assert (await ask(TEAM_KEY, "gpt", "faq", faq))[1]["x-gateway-cache"] == "miss"
    assert (await ask(TEAM_KEY, "gpt", "faq", faq))[1]["x-gateway-cache"] == "hit"
    return Expected()


class Marks(HTMLParser):
    """Every element of a page that carries ``data-*`` attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        data = {k: v or "" for k, v in attrs if k.startswith("data-")}
        if data:
            self.found.append((tag, data))

    def select(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        wanted = {f"data-{k.replace('_', '-')}": v for k, v in wanted.items()}
        return [
            d for t, d in self.found if t == tag and all(d.get(k) == v for k, v in wanted.items())
        ]


def marks(html: str) -> Marks:
    parser = Marks()
    parser.feed(html)
    return parser


@pytest.fixture
async def dashboard(make_gateway: Any, fakes: Fakes, embedder: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway(
        priced_policy(fakes, cache={"static_threshold": 0.85}),
        embedder=embedder,
        admin_key_sha256=hash_key(ADMIN_KEY),
    )
    return client


@pytest.fixture
async def plain_dashboard(make_gateway: Any, fakes: Fakes) -> TestClient[Any, Any]:
    """No cache, no embedder: for the auth tests."""
    client: TestClient[Any, Any] = await make_gateway(admin_key_sha256=hash_key(ADMIN_KEY))
    return client


async def test_dashboard_refuses_without_the_admin_key(
    plain_dashboard: TestClient[Any, Any], make_gateway: Any
) -> None:
    page = await plain_dashboard.get("/dashboard")
    assert page.status == 401
    body = await page.text()
    assert 'action="/dashboard/login"' in body
    assert 'data-chart="traffic"' not in body
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for path in ("/dashboard/data", "/dashboard/panels"):
        response = await plain_dashboard.get(path)
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "invalid_admin_key"
    for wrong in ("Bearer not-the-admin-key", f"Bearer {TEAM_KEY}", f"Basic {ADMIN_KEY}"):
        for path in ("/dashboard", "/dashboard/data"):
            response = await plain_dashboard.get(path, headers={"Authorization": wrong})
            assert response.status == 401, (path, wrong)
    forged = {COOKIE: f"{int(time.time()) + 3600}.{'0' * 64}"}
    assert (await plain_dashboard.get("/dashboard/data", cookies=forged)).status == 401
    disabled = await make_gateway()
    response = await disabled.get("/dashboard", headers=ADMIN)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "admin_disabled"


async def test_bearer_admin_key_opens_the_dashboard(plain_dashboard: TestClient[Any, Any]) -> None:
    page = await plain_dashboard.get("/dashboard", headers=ADMIN)
    assert page.status == 200
    assert 'data-chart="traffic"' in await page.text()
    assert page.headers["Cache-Control"] == "no-store"
    data = await (await plain_dashboard.get("/dashboard/data", headers=ADMIN)).json()
    assert data["traffic"]["totals"]["requests"] == 0
    for asked, interval in (
        ("", "10"),
        ("?refresh_s=3", "3"),
        ("?refresh_s=0", "1"),
        ("?refresh_s=x", "10"),
    ):
        page = await plain_dashboard.get(f"/dashboard{asked}", headers=ADMIN)
        assert f'<body data-refresh-s="{interval}">' in await page.text()


async def test_login_sets_a_strict_http_only_session(plain_dashboard: TestClient[Any, Any]) -> None:
    wrong = await plain_dashboard.post("/dashboard/login", data={"key": "guess"})
    assert wrong.status == 401
    assert "not the admin key" in await wrong.text()
    assert COOKIE not in wrong.cookies
    response = await plain_dashboard.post(
        "/dashboard/login", data={"key": ADMIN_KEY}, allow_redirects=False
    )
    assert response.status == 303
    assert response.headers["Location"] == "/dashboard"
    set_cookie = response.headers["Set-Cookie"]
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/dashboard"):
        assert flag in set_cookie
    assert "Secure" not in set_cookie  # plain HTTP here; behind a TLS proxy it is Secure:
    proxied = await plain_dashboard.post(
        "/dashboard/login",
        data={"key": ADMIN_KEY},
        headers={"X-Forwarded-Proto": "https"},
        allow_redirects=False,
    )
    assert "Secure" in proxied.headers["Set-Cookie"]
    token = response.cookies[COOKIE].value
    assert ADMIN_KEY not in token
    assert hash_key(ADMIN_KEY) not in token
    cookies = {COOKIE: token}
    assert (await plain_dashboard.get("/dashboard", cookies=cookies)).status == 200
    assert (await plain_dashboard.get("/dashboard/panels", cookies=cookies)).status == 200
    expires, _, mac = token.partition(".")
    tampered = {COOKIE: f"{int(expires) + 1}.{mac}"}
    assert (await plain_dashboard.get("/dashboard", cookies=tampered)).status == 401
    logout = await plain_dashboard.post("/dashboard/logout", allow_redirects=False)
    assert logout.status == 303
    assert re.search(rf"{COOKIE}=\"?\"?;", logout.headers["Set-Cookie"])


async def test_static_assets_are_served_locally(plain_dashboard: TestClient[Any, Any]) -> None:
    css = await plain_dashboard.get("/dashboard/static/dashboard.css")
    assert css.status == 200
    assert css.content_type == "text/css"
    js = await plain_dashboard.get("/dashboard/static/dashboard.js")
    assert js.status == 200
    assert "/dashboard/panels" in await js.text()
    assert (await plain_dashboard.get("/dashboard/static/../settings.py")).status == 404
    assert (await plain_dashboard.get("/dashboard/static/nope.js")).status == 404


async def test_charts_hold_the_scripted_traffic(
    dashboard: TestClient[Any, Any], fakes: Fakes
) -> None:
    expected = await scripted_traffic(dashboard, fakes)
    data = await (await dashboard.get("/dashboard/data", headers=ADMIN)).json()
    totals = data["traffic"]["totals"]
    assert totals["requests"] == expected.requests
    assert totals["fallbacks"] == expected.fallbacks
    assert totals["errors"] == expected.errors
    assert sum(b["requests"] for b in data["traffic"]["buckets"]) == expected.requests
    assert {c["name"]: c["value"] for c in data["cost"]["by_team"]} == pytest.approx(
        expected.cost_by_team
    )
    assert {c["name"]: c["value"] for c in data["cost"]["by_task_type"]} == pytest.approx(
        expected.cost_by_task
    )
    assert data["hit_rates"]["cache"]["hits"] == expected.cache_hits
    assert data["hit_rates"]["cache"]["lookups"] == expected.requests
    assert len(data["decisions"]) == expected.requests
    assert data["decisions"][0]["source"] == "cache"  # newest first
    assert {b["key"]: b["state"] for b in data["breakers"]}["provider:openai"] == "closed"
    quality = {
        (line["model"], line["task_type"]): _mean(line["points"]) for line in data["quality"]
    }
    # Graded 0.9 and 0.7 vs 0.2 (other answers carry heuristic scores when those are on).
    assert quality[("claude", "code")] < quality[("gpt", "summarize")]
    stats = {(r["model"], r["task_type"]): r for r in data["quality_stats"]}
    assert stats[("gpt", "summarize")]["n"]["feedback"] == 2  # the quality monitor's figures
    assert stats[("claude", "code")]["n"]["feedback"] == 1

    html = await (await dashboard.get("/dashboard", headers=ADMIN)).text()
    assert not any(q in html for qs in QUESTIONS.values() for q in qs)  # no prompt text
    raw = html + str(data)
    for secret in (ADMIN_KEY, hash_key(ADMIN_KEY), TEAM_KEY, *PROVIDER_KEYS.values()):
        assert secret not in raw
    page = marks(html)
    requests = page.select("rect", series="requests")
    fallbacks = page.select("rect", series="fallbacks")
    assert sum(int(r["data-value"]) for r in requests) == expected.requests
    assert sum(int(r["data-value"]) for r in fallbacks) == expected.fallbacks
    for chart, costs in (
        ("cost-by-team", expected.cost_by_team),
        ("cost-by-task-type", expected.cost_by_task),
    ):
        assert _bars(page, chart) == pytest.approx(costs)
    cache = page.select("svg", chart="cache-hit-rate")[0]
    assert (cache["data-hits"], cache["data-lookups"]) == ("1", str(expected.requests))
    rows = page.select("tr")
    decisions = [r for r in rows if "data-request-id" in r]
    assert len(decisions) == expected.requests
    assert sum(int(r["data-fallbacks"]) for r in decisions) == expected.fallbacks


def _mean(points: list[dict[str, Any]]) -> float:
    """The mean score over minute points (each the mean of its ``n`` answers)."""
    n = sum(p["n"] for p in points)
    return sum(p["score"] * p["n"] for p in points) / n


def _bars(page: Marks, chart: str) -> dict[str, float]:
    """The bars of one horizontal bar chart, by label."""
    inside, bars = False, {}
    for tag, data in page.found:
        if tag == "svg":
            inside = data.get("data-chart") == chart
        elif inside and tag == "rect" and "data-label" in data:
            bars[data["data-label"]] = float(data["data-value"])
    return bars


async def test_feedback_draws_the_quality_trend(
    plain_dashboard: TestClient[Any, Any], fakes: Fakes
) -> None:
    ids = []
    for _ in range(2):
        response = await plain_dashboard.post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]},
            headers={"Authorization": f"Bearer {TEAM_KEY}", "x-gateway-task": "chat"},
        )
        ids.append(response.headers["x-request-id"])
    for request_id, score in zip(ids, (1.0, 0.5), strict=True):
        response = await plain_dashboard.post(
            "/v1/feedback",
            json={"request_id": request_id, "score": score},
            headers={"Authorization": f"Bearer {TEAM_KEY}"},
        )
        assert response.status == 200
    data = await (await plain_dashboard.get("/dashboard/data", headers=ADMIN)).json()
    [line] = data["quality"]
    assert (line["model"], line["task_type"]) == ("gpt", "chat")
    assert sum(p["n"] for p in line["points"]) == 2
    page = marks(await (await plain_dashboard.get("/dashboard", headers=ADMIN)).text())
    points = page.select("circle", model="gpt", task_type="chat")
    weighted = sum(float(p["data-value"]) * int(p["data-n"]) for p in points)
    assert weighted == pytest.approx(1.5)


def _decision(team: str, *, status: int = 200, cost: float = 0.0, failed: int = 0) -> Decision:
    decision = Decision(request_id="r", team=team, route="default", task_type="t")
    decision.attempts = [Attempt("m", "p", "us", "upstream_overloaded", 1.0)] * failed
    decision.status, decision.cost_usd, decision.served_by = status, cost, "m"
    return decision


def test_series_buckets_roll_over_and_stay_bounded() -> None:
    now = [1000.0]
    series = TrafficSeries(bucket_s=10, keep=3, clock=lambda: now[0])
    series.observe(_decision("a", cost=0.5, failed=1), cache="hit", knowledge="context")
    now[0] = 1015.0
    series.observe(_decision("b", status=503, failed=2), cache="miss", knowledge="none")
    series.observe(_decision("a"), cache="bypass", knowledge="off")
    now[0] = 1042.0
    buckets = series.buckets()
    assert [b.start for b in buckets] == [1020, 1030, 1040]  # empty slices included, 3 kept
    assert sum(b.requests for b in buckets) == 0
    now[0] = 1019.0
    assert [(b.start, b.requests, b.fallbacks) for b in series.buckets(2)] == [
        (1000, 1, 1),
        (1010, 2, 2),
    ]
    totals = series.totals
    assert (totals.requests, totals.fallbacks, totals.fell_back, totals.errors) == (3, 3, 2, 1)
    assert dict(totals.cost_by_team) == {"a": 0.5}
    assert (totals.cache_hits, totals.cache_lookups) == (1, 2)
    assert (totals.knowledge_hits, totals.knowledge_lookups) == (1, 2)
    assert dict(totals.by_source) == {"provider": 2, "error": 1}
