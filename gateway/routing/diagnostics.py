"""Saying why a request failed: to the caller (its own candidates only) and to the log (all).

Every attempt lands in the decision record (``record_attempt``), an attempt cut off by the
deadline included, so that a 504 never reads "after 0 attempt(s)" while a provider hung. The
caller's 503/504 message names this request's attempts and why its other allowed candidates were
not tried; candidates outside its allowed regions are only counted (their providers and regions
are another scope's business). The operator gets one log line per 5xx (``log_failure``) with
everything: request id, route, team, each attempt's provider, error class and time, each skip.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.core.context import RequestContext
from gateway.core.decision import Attempt, CandidateVerdict
from gateway.core.errors import AllProvidersFailed, DeadlineExceeded, GatewayError, UpstreamFailure
from gateway.core.runtime import Runtime
from gateway.policy.catalog import Candidate
from providers.errors import ContentBlocked, UpstreamError

log = logging.getLogger("gateway.failures")


def record_attempt(
    runtime: Runtime,
    ctx: RequestContext,
    candidate: Candidate,
    outcome: str,
    elapsed: float,
    *,
    served: str | None = None,
    status: int | None = None,
    detail: str = "",
) -> None:
    """One call to a provider, in the decision record and the attempts metric."""
    ctx.decision.attempts.append(
        Attempt(
            model=candidate.model.name,
            provider=candidate.provider.name,
            region=candidate.region,
            outcome=outcome,
            latency_ms=elapsed * 1000,
            served_model=served,
            status=status,
            detail=detail,
        )
    )
    metrics = runtime.metrics
    metrics.child(metrics.attempts, candidate.provider.name, candidate.model.name, outcome).inc()


def _attempts_text(ctx: RequestContext) -> str:
    return "; ".join(
        f"{a.model}@{a.provider} ({a.region}) {a.outcome} after {a.latency_ms / 1000:.1f} s"
        for a in ctx.decision.attempts
    )


def _skips(ctx: RequestContext) -> dict[str, str]:
    """model -> why it was not tried, for this request's allowed candidates that never were."""
    tried = {a.model for a in ctx.decision.attempts}
    skips: dict[str, str] = {}
    for verdict in ctx.decision.candidates:
        if not verdict.kept and not _outside(verdict) and verdict.model not in tried:
            skips[verdict.model] = verdict.reason
    for event in ctx.decision.events:
        if event.get("type") == "skipped" and event["model"] not in tried:
            skips.setdefault(event["model"], event["reason"])
    return skips


def _outside(verdict: CandidateVerdict) -> bool:
    return verdict.reason.startswith("residency")


def caller_summary(ctx: RequestContext) -> str:
    """This request's attempts and skips, for the caller's error message."""
    parts = []
    if ctx.decision.attempts:
        parts.append(f"attempts: {_attempts_text(ctx)}")
    if skips := _skips(ctx):
        parts.append("not tried: " + "; ".join(f"{m} ({why})" for m, why in skips.items()))
    outside = sum(1 for v in ctx.decision.candidates if _outside(v))
    if outside:
        parts.append(
            f"{outside} candidate(s) outside the request's allowed regions were not tried "
            "(residency)"
        )
    if ctx.decision.panic:
        parts.append("no candidate was healthy: tried anyway (panic routing)")
    return (": " + " | ".join(parts)) if parts else ""


def deadline_error(ctx: RequestContext) -> DeadlineExceeded:
    attempts = len(ctx.decision.attempts)
    return DeadlineExceeded(
        f"The request's {ctx.deadline_s:g} s deadline ran out after {attempts} attempt(s)"
        f"{caller_summary(ctx)}.",
        attempts=[a.public() for a in ctx.decision.attempts],
    )


def exhausted(ctx: RequestContext, errors: list[UpstreamError]) -> GatewayError:
    """The error for a request whose attempts (or candidates) ran out."""
    attempts = [a.public() for a in ctx.decision.attempts]
    if len(errors) == 1 or (errors and all(isinstance(e, ContentBlocked) for e in errors)):
        # One attempt: its own error says most (a 429 keeps its Retry-After). Every family
        # refusing the prompt: the prompt is the problem.
        failure = UpstreamFailure(errors[-1])
        failure.attempts = attempts
        return failure
    waits = [e.retry_after for e in errors if e.retry_after is not None]
    what = (
        f"All {len(attempts)} attempt(s) failed"
        if attempts
        else "No candidate could be tried within the attempt budget"
    )
    return AllProvidersFailed(
        f"{what}{caller_summary(ctx)}.",
        attempts=attempts,
        retry_after=min(waits) if waits else None,
    )


def log_failure(ctx: RequestContext, exc: GatewayError) -> None:
    """One line per request that ends in a 5xx: everything an operator needs to see why."""
    decision = ctx.decision
    fields: dict[str, Any] = {
        "request_id": ctx.request_id,
        "route": ctx.route.name,
        "team": ctx.team.name,
        "status": exc.status,
        "code": exc.code,
        "deadline_s": ctx.deadline_s,
        "panic": decision.panic,
    }
    attempts = ", ".join(
        f"{a.provider}/{a.model}:{a.outcome}:{a.latency_ms / 1000:.2f}s" for a in decision.attempts
    )
    skips = "; ".join(
        f"{v.provider}/{v.model}: {v.reason}" for v in decision.candidates if not v.kept
    )
    skipped_late = "; ".join(
        f"{e['model']}: {e['reason']}" for e in decision.events if e.get("type") == "skipped"
    )
    head = " ".join(f"{k}={v}" for k, v in fields.items())
    log.warning(
        "request failed: %s attempts=[%s] filtered=[%s] skipped=[%s]",
        head,
        attempts,
        skips,
        skipped_late,
    )
