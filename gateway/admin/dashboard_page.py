"""The dashboard's HTML: the page shell and login form (templates), and the panels from a snapshot.

The panels are one fragment (``<div id="panels">``) so the page's small refresh script can swap
in a fresh one from ``/dashboard/panels``. Every value is escaped.
"""

from __future__ import annotations

import functools
from html import escape
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from .dashboard_svg import bar_list, clock, quality_chart, rate_bar, traffic_chart, usd

REFRESH_S = 10


@functools.cache
def asset(name: str) -> bytes:
    """A packaged template or static file, read once."""
    return resources.files("gateway.admin").joinpath(name).read_bytes()


def page(snapshot: dict[str, Any], *, refresh_s: int = REFRESH_S) -> str:
    template = Template(asset("templates/dashboard.html").decode())
    return template.substitute(refresh_s=refresh_s, panels=panels(snapshot))


def login_page(message: str = "") -> str:
    return Template(asset("templates/login.html").decode()).substitute(message=escape(message))


def panels(snapshot: dict[str, Any]) -> str:
    traffic = snapshot["traffic"]
    totals = traffic["totals"]
    cost, rates = snapshot["cost"], snapshot["hit_rates"]
    minutes = len(traffic["buckets"]) * snapshot["bucket_s"] // 60
    return "\n".join(
        [
            f'<div id="panels" data-generated-at="{snapshot["generated_at"]:.3f}">',
            _section("Since start", _cards(totals), wide=True),
            _section(
                f"Requests and fallbacks per {snapshot['bucket_s']} s (last {minutes} min, UTC)",
                traffic_chart(traffic["buckets"], snapshot["bucket_s"])
                + '<div class="legend"><span class="swatch requests"></span>requests'
                '<span class="swatch fallbacks"></span>fallbacks (failed attempts moved on)'
                "</div>",
                wide=True,
            ),
            _section(
                "Cost per task type (USD)", bar_list("cost-by-task-type", cost["by_task_type"], usd)
            ),
            _section("Cost per team (USD)", bar_list("cost-by-team", cost["by_team"], usd)),
            _section(
                "Cache and knowledge hit rates",
                rate_bar("cache", rates["cache"])
                + rate_bar("knowledge", rates["knowledge"])
                + _knowledge_answers(snapshot.get("knowledge_answers")),
            ),
            _section("Breakers", _breakers(snapshot["breakers"])),
            _section(
                "Quality per model and task type (mean score per minute)",
                quality_chart(snapshot["quality"]) + _quality_stats(snapshot["quality_stats"]),
                wide=True,
            ),
            _section("Tier routing (this replica)", _tiering(snapshot["tiering"]), wide=True),
            _section("Latest decisions", _decisions(snapshot["decisions"]), wide=True),
            "</div>",
        ]
    )


def _section(title: str, body: str, *, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return f"<section{cls}><h2>{escape(title)}</h2>{body}</section>"


def _cards(totals: dict[str, Any]) -> str:
    figures = [
        ("requests", totals["requests"], "requests"),
        ("fallbacks", totals["fallbacks"], "fallbacks"),
        ("errors", totals["errors"], "errors"),
        ("cost", usd(totals["cost_usd"]), "cost"),
        ("tokens", totals["prompt_tokens"] + totals["completion_tokens"], "tokens"),
    ]
    by_source = ", ".join(f"{k} {v}" for k, v in sorted(totals["by_source"].items()))
    cards = "".join(
        f'<div class="card" data-total="{name}"><div class="figure">{escape(str(value))}</div>'
        f'<div class="what">{what}</div></div>'
        for name, value, what in figures
    )
    return f'<div class="cards">{cards}</div><p class="legend">by source: {escape(by_source)}</p>'


def _knowledge_answers(answers: dict[str, Any] | None) -> str:
    """Curated answers served directly, their verifications and the withdrawn ones."""
    if answers is None:
        return ""
    checks = ", ".join(f"{k} {v}" for k, v in answers["verifications"].items()) or "none"
    return rate_bar("direct-answers", answers["direct"]) + (
        f'<p class="legend" data-knowledge-answers="">verified answers {answers["verified"]}; '
        f"verifications: {escape(checks)}; withdrawn by feedback: {answers['withdrawn']}</p>"
    )


def _breakers(breakers: list[dict[str, Any]]) -> str:
    if not breakers:
        return '<p class="empty">No breaker has seen traffic yet.</p>'
    rows = "".join(
        f'<tr data-breaker="{escape(b["key"], quote=True)}" data-state="{escape(b["state"])}">'
        f'<td>{escape(b["key"])}</td><td><span class="state {escape(b["state"])}">'
        f"{escape(b['state'].replace('_', '-'))}</span></td></tr>"
        for b in breakers
    )
    return f"<table><tr><th>breaker</th><th>state</th></tr>{rows}</table>"


def _quality_stats(rows: list[dict[str, Any]]) -> str:
    """The quality monitor's figures per (model, version, task type)."""
    if not rows:
        return ""
    body = []
    for r in rows:
        score = "-" if r["score"] is None else f"{r['score']:.2f}"
        signals = ", ".join(f"{k} {v}" for k, v in sorted(r["n"].items()))
        version = escape(str(r["version"])) + ("" if r["latest"] else " (older)")
        verdict = '<span class="state open">regressed</span>' if r["regressed"] else ""
        body.append(
            f'<tr data-quality-model="{escape(str(r["model"]), quote=True)}" '
            f'data-task-type="{escape(str(r["task_type"]), quote=True)}" '
            f'data-score="{"" if r["score"] is None else r["score"]}" '
            f'data-regressed="{str(r["regressed"]).lower()}">'
            f"<td>{escape(str(r['model']))}</td><td>{version}</td>"
            f'<td>{escape(str(r["task_type"]))}</td><td class="num">{score}</td>'
            f"<td>{escape(signals)}</td><td>{verdict}</td></tr>"
        )
    return (
        '<div class="table-wrap"><table class="quality"><tr><th>model</th><th>version</th>'
        "<th>task</th><th class='num'>score</th><th>signals (n)</th><th></th></tr>"
        f"{''.join(body)}</table></div>"
    )


def _tiering(routes: dict[str, Any]) -> str:
    """Each tiered route: the knob, recent decisions and their frontier share, the threshold,
    the outcomes it learns from and why requests went where they did (``GET /admin/tiering``)."""
    if not routes:
        return '<p class="empty">No route has tiering.</p>'
    body = []
    for name, r in sorted(routes.items()):
        recent, outcomes = r["recent"], r["outcomes"]
        share = recent["frontier_share"]
        threshold = recent["threshold"]
        reasons = ", ".join(f"{code} {n}" for code, n in r["decisions"].items() if n)
        body.append(
            f'<tr data-tier-route="{escape(name, quote=True)}" '
            f'data-frontier-share="{"" if share is None else share}">'
            f"<td>{escape(name)}</td>"
            f'<td class="num">{r["config"]["max_frontier_share"]:.0%}</td>'
            f'<td class="num">{recent["decisions"]}</td>'
            f'<td class="num">{"-" if share is None else f"{share:.0%}"}</td>'
            f'<td class="num">{"-" if threshold is None else f"{threshold:.3f}"}</td>'
            f'<td class="num">{outcomes["cheap"]} / {outcomes["frontier"]}</td>'
            f'<td class="num">{outcomes["from_other_replicas"]}</td>'
            f"<td>{_tier_model(r.get('model'))}</td>"
            f"<td>{escape(reasons)}</td></tr>"
        )
    return (
        '<div class="table-wrap"><table class="tiering"><tr><th>route</th>'
        "<th class='num'>frontier cap</th><th class='num'>recent decisions</th>"
        "<th class='num'>to the frontier</th><th class='num'>gain threshold</th>"
        "<th class='num'>outcomes cheap / frontier</th><th class='num'>from other replicas</th>"
        "<th>trained model (its share of decisions)</th>"
        f"<th>decisions by reason</th></tr>{''.join(body)}</table></div>"
    )


def _tier_model(model: dict[str, Any] | None) -> str:
    """The route's trained model: file, version, training size and date, and how much of the
    decisions it makes now and made recently (the rest: the route's live outcomes)."""
    if model is None:
        return "none (live outcomes only)"
    recent = model["share_recent_decisions"]
    return escape(
        f"{Path(model['path']).name} v{model['version']}, {model['training_prompts']} prompts, "
        f"trained {model['trained_at']}; {model['share_now']:.0%} now"
        + ("" if recent is None else f", {recent:.0%} of recent decisions")
    )


def _decisions(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return '<p class="empty">No requests yet.</p>'
    head = (
        "<tr><th>time (UTC)</th><th>request</th><th>team</th><th>route</th><th>task</th>"
        "<th>source</th><th>status</th><th>path</th><th>served</th><th class='num'>fallbacks</th>"
        "<th class='num'>tokens</th><th class='num'>cost</th><th class='num'>ms</th></tr>"
    )
    body = []
    for row in rows:
        path = " → ".join(
            f'<span class="{"" if a["outcome"] == "ok" else "outcome-fail"}">'
            f"{escape(a['provider'])} {escape(a['outcome'])}</span>"
            for a in row["path"]
        )
        status = row["status"] if row["error"] is None else f"{row['status']} {row['error']}"
        ms = row["total_ms"]
        total_ms = "" if ms is None else f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"
        body.append(
            f'<tr data-request-id="{escape(row["request_id"], quote=True)}" '
            f'data-team="{escape(row["team"], quote=True)}" data-source="{escape(row["source"])}" '
            f'data-status="{row["status"]}" data-fallbacks="{row["fallbacks"]}" '
            f'data-cost="{row["cost_usd"]!r}">'
            f"<td>{clock(row['started_at'])}</td><td>{escape(row['request_id'][:12])}</td>"
            f"<td>{escape(row['team'])}</td><td>{escape(row['route'])}</td>"
            f"<td>{escape(row['task_type'])}</td><td>{escape(row['source'])}</td>"
            f'<td class="{"status-bad" if row["status"] >= 400 else ""}">{escape(str(status))}</td>'
            f'<td class="wrap">{path}</td><td>{escape(row["served_model"] or "")}</td>'
            f'<td class="num">{row["fallbacks"]}</td><td class="num">{row["tokens"]}</td>'
            f'<td class="num">{usd(row["cost_usd"])}</td><td class="num">{total_ms}</td></tr>'
        )
    return f'<div class="table-wrap"><table>{head}{"".join(body)}</table></div>'
