"""What the dashboard shows, as one JSON-able snapshot (``GET /dashboard/data``).

The page's charts and tables are rendered from this same snapshot, so the JSON and the page never
disagree. Sources: the pipeline's ``TrafficSeries`` (traffic over time and totals since start),
the decision ring (quality trend and the latest decisions) and the breaker board. No prompt or
answer text is ever in it: decision records carry none, and only their routing fields are copied.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from gateway.core.decision import Decision
from gateway.core.runtime import Runtime
from gateway.stages.knowledge import KnowledgeStage

TRAFFIC_BUCKETS = 90  # 15 minutes of 10 s buckets
QUALITY_BUCKET_S = 60
LATEST_DECISIONS = 25


def snapshot(runtime: Runtime, *, now: float | None = None) -> dict[str, Any]:
    """The dashboard's data: traffic, cost, hit rates, quality, breakers, tier routing, latest
    decisions."""
    series = runtime.series
    totals = series.totals
    recent = runtime.decisions.recent(1000)
    return {
        "generated_at": time.time() if now is None else now,
        "bucket_s": series.bucket_s,
        "traffic": {
            "buckets": [
                {
                    "t": b.start,
                    "requests": b.requests,
                    "fallbacks": b.fallbacks,
                    "errors": b.errors,
                    "cost_usd": b.cost_usd,
                }
                for b in series.buckets(TRAFFIC_BUCKETS)
            ],
            "totals": {
                "requests": totals.requests,
                "fallbacks": totals.fallbacks,
                "requests_with_fallback": totals.fell_back,
                "errors": totals.errors,
                "cost_usd": totals.cost_usd,
                "prompt_tokens": totals.prompt_tokens,
                "completion_tokens": totals.completion_tokens,
                "by_source": dict(totals.by_source),
            },
        },
        "cost": {
            "by_task_type": _sorted(totals.cost_by_task),
            "by_team": _sorted(totals.cost_by_team),
            "by_model": _sorted(totals.cost_by_model),
        },
        "requests": {
            "by_task_type": _sorted(totals.requests_by_task),
            "by_team": _sorted(totals.requests_by_team),
        },
        "hit_rates": {
            "cache": _rate(totals.cache_hits, totals.cache_lookups),
            "knowledge": _rate(totals.knowledge_hits, totals.knowledge_lookups),
        },
        "knowledge_answers": knowledge_answers(runtime),
        "quality": quality_trend(recent),
        "quality_stats": quality_stats(runtime),
        "breakers": [
            {"key": key, "state": state} for key, state in sorted(runtime.board.states().items())
        ],
        "tiering": runtime.tiers.snapshot() if runtime.tiers is not None else {},
        "decisions": [decision_row(d) for d in reversed(recent[-LATEST_DECISIONS:])],
    }


def knowledge_answers(runtime: Runtime) -> dict[str, Any] | None:
    """Curated-answer decisions on this replica: the direct-answer rate among questions whose
    nearest curated entry was considered, verifications by answer, answers withdrawn by feedback
    (None without a knowledge stage)."""
    stage = next((s for s in runtime.interceptors if isinstance(s, KnowledgeStage)), None)
    if stage is None:
        return None
    decisions = stage.decisions
    served = decisions["direct"] + decisions["verified"]
    return {
        "direct": _rate(served, sum(decisions.values())),
        "verified": decisions["verified"],
        "verifications": dict(sorted(stage.verifications.items())),
        "withdrawn": stage.withdrawn,
    }


def quality_score(decision: Decision) -> float | None:
    """A 0..1 quality figure for one answer: the best signal its record holds.

    The client's feedback first (ground truth when given), then a judge's grade, then the
    heuristics' score (every provider answer has one once gateway.quality_monitor scores it).
    Feedback recorded only as a decision event (``POST /v1/feedback``) counts too.
    """
    for signal in ("feedback", "judge", "heuristic"):
        graded = decision.quality.get(signal)
        score = graded.get("score") if isinstance(graded, dict) else None
        if isinstance(score, int | float) and not isinstance(score, bool):
            return float(score)
    for event in reversed(decision.events):
        score = event.get("score") if event.get("type") == "feedback" else None
        if isinstance(score, int | float) and not isinstance(score, bool):
            return float(score)
    return None


def quality_stats(runtime: Runtime) -> list[dict[str, Any]]:
    """Per (model, version, task type): the quality monitor's combined score, evidence, verdict."""
    rows = []
    for row in runtime.quality.snapshot().get("stats", []):
        signals = row.get("signals", {})
        rows.append(
            {
                "model": row.get("model"),
                "version": row.get("version"),
                "task_type": row.get("task_type"),
                "score": row.get("score"),
                "n": {name: s.get("n", 0) for name, s in signals.items()},
                "latest": bool(row.get("latest")),
                "regressed": bool(row.get("regressed")),
            }
        )
    return rows


def quality_trend(decisions: list[Decision]) -> list[dict[str, Any]]:
    """Mean quality per (model, task type) per minute, over the decisions still in the ring."""
    sums: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(dict)
    for decision in decisions:
        if decision.source != "provider" or decision.served_by is None:
            continue
        score = quality_score(decision)
        if score is None:
            continue
        minute = int(decision.started_at // QUALITY_BUCKET_S) * QUALITY_BUCKET_S
        cell = sums[(decision.served_by, decision.task_type)].setdefault(minute, [0.0, 0.0])
        cell[0] += score
        cell[1] += 1
    return [
        {
            "model": model,
            "task_type": task,
            "points": [
                {"t": t, "score": total / n, "n": int(n)} for t, (total, n) in sorted(cells.items())
            ],
        }
        for (model, task), cells in sorted(sums.items())
    ]


def decision_row(decision: Decision) -> dict[str, Any]:
    """The routing facts of one decision, for the table: never prompt, answer or error detail."""
    return {
        "request_id": decision.request_id,
        "started_at": decision.started_at,
        "team": decision.team,
        "route": decision.route,
        "task_type": decision.task_type,
        "source": decision.source,
        "status": decision.status,
        "error": decision.error,
        "served_by": decision.served_by,
        "served_model": decision.served_model,
        "path": [
            {"provider": a.provider, "model": a.model, "outcome": a.outcome}
            for a in decision.attempts
        ],
        "fallbacks": decision.fallbacks,
        "tokens": decision.prompt_tokens + decision.completion_tokens,
        "cost_usd": decision.cost_usd,
        "total_ms": decision.total_ms,
    }


def _sorted(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in sorted(values.items(), key=lambda kv: -kv[1])]


def _rate(hits: int, lookups: int) -> dict[str, Any]:
    return {"hits": hits, "lookups": lookups, "rate": hits / lookups if lookups else None}
