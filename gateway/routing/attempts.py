"""The attempt loop: try a plan's candidates within the attempt budget and the deadline.

After each failure the policy for its error class decides (``RoutingConfig.errors``): retry once,
move to the next candidate (preferring another provider family), skip the whole family, open the
provider's breaker, or stop and return the error as is. Every attempt lands in the decision
record; the served version is compared with the pin (drift). Used for plain and streamed answers:
``call`` does one attempt and returns an ``Outcome``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.core.context import RequestContext
from gateway.core.decision import Attempt
from gateway.core.errors import AllProvidersFailed, DeadlineExceeded, GatewayError, UpstreamFailure
from gateway.core.runtime import Runtime
from gateway.policy.catalog import Candidate
from gateway.policy.model import ErrorAction, ErrorPolicy
from providers.errors import ContentBlocked, UnsupportedRequest, UpstreamError

from .router import Plan, breaker_keys

T = TypeVar("T")

# Error code -> ErrorPolicy field.
_ERROR_CLASS = {
    "upstream_connection_error": "connection",
    "upstream_connection_reset": "connection",
    "upstream_rate_limited": "rate_limited",
    "upstream_overloaded": "overloaded",
    "upstream_timeout": "timeout",
    "bad_upstream_response": "bad_response",
    "upstream_model_not_found": "model_not_found",
    "content_blocked": "content_blocked",
    "upstream_invalid_request": "invalid_request",
    "upstream_auth_error": "auth",
    "version_drift": "drift",
}
# Failures that say the provider's endpoint is unwell (provider breaker) rather than one model.
_TRANSPORT = frozenset(
    {"upstream_connection_error", "upstream_connection_reset", "upstream_timeout"}
)
_MODEL_HEALTH = frozenset({"upstream_overloaded", "bad_upstream_response", "upstream_error"})


@dataclass(slots=True)
class Outcome(Generic[T]):
    """A successful attempt: the value, the version the provider says it served, and how to
    discard the value if it must not be used (a drifted version under ``on_drift: fail_over``)."""

    value: T
    served_model: str
    discard: Callable[[], Awaitable[None]] | None = None
    wire_s: float | None = None  # time on the wire, when the pool measured it


class VersionDrift(UpstreamError):
    """The provider served another version than the pin, and the model fails over on drift."""

    code = "version_drift"


def action_for(errors: ErrorPolicy, exc: UpstreamError) -> ErrorAction:
    if exc.code == "pool_saturated":  # this replica's slots are full: no retry, no breaker
        return "next"
    if exc.code == "upstream_connection_reset":
        return errors.connection
    field = _ERROR_CLASS.get(exc.code, "overloaded")
    action: ErrorAction = getattr(errors, field)
    if field == "connection" and action == "retry_then_next":
        # A refused connection will be refused again: the retry is for dropped connections.
        return "next"
    return action


async def run_attempts(
    runtime: Runtime,
    ctx: RequestContext,
    plan: Plan,
    call: Callable[[Candidate], Awaitable[Outcome[T]]],
) -> tuple[T, Candidate]:
    """The first successful attempt's value and candidate; raises a ``GatewayError`` otherwise."""
    config = runtime.catalog.policy.routing
    board = runtime.board
    decision = ctx.decision
    queue = deque(plan.ordered)
    skipped_families: set[str] = set()
    retried: set[str] = set()
    errors: list[UpstreamError] = []
    previous: Candidate | None = None
    try:
        async with asyncio.timeout_at(ctx.deadline):
            while queue and len(decision.attempts) < config.max_attempts:
                candidate = queue.popleft()
                if reason := _skip_reason(runtime, candidate, skipped_families):
                    decision.events.append(
                        {"type": "skipped", "model": candidate.model.name, "reason": reason}
                    )
                    continue
                keys = breaker_keys(candidate)
                if not all(
                    [await board.acquire_probe(key) for key in keys if board.probing_due(key)]
                ):
                    decision.events.append(
                        {"type": "skipped", "model": candidate.model.name, "reason": "probe taken"}
                    )
                    continue
                if previous is not None and errors:
                    runtime.metrics.fallbacks.labels(
                        previous.model.name,
                        candidate.model.name,
                        previous.provider.name,
                        candidate.provider.name,
                        errors[-1].code,
                    ).inc()
                previous = candidate
                sent = time.perf_counter()
                try:
                    outcome = await call(candidate)
                    await _check_version(runtime, ctx, candidate, outcome)
                except UnsupportedRequest as exc:  # the adapter cannot say it: the client's error
                    raise UpstreamFailure(exc) from exc
                except UpstreamError as exc:
                    elapsed = time.perf_counter() - sent
                    ctx.upstream_s += elapsed
                    _record(
                        runtime,
                        ctx,
                        candidate,
                        exc.code,
                        elapsed,
                        status=exc.upstream_status,
                        detail=exc.message[:200],
                    )
                    errors.append(exc)
                    action = action_for(config.errors, exc)
                    _account_failure(runtime, candidate, exc, action)
                    if action == "stop":
                        raise UpstreamFailure(exc) from exc
                    if action == "retry_then_next" and candidate.model.name not in retried:
                        retried.add(candidate.model.name)
                        queue.appendleft(candidate)
                        continue
                    if action == "skip_family":
                        skipped_families.add(candidate.provider.family_name)
                    queue = _prefer_other_family(queue, candidate.provider.family_name)
                    continue
                elapsed = time.perf_counter() - sent
                # Only time on the wire counts as upstream: translating is the gateway's work.
                ctx.upstream_s += elapsed if outcome.wire_s is None else outcome.wire_s
                _record(runtime, ctx, candidate, "ok", elapsed, served=outcome.served_model)
                for key in keys:
                    board.record_success(key)
                runtime.router.observe_latency(candidate.provider.name, elapsed)
                decision.served_by = candidate.model.name
                decision.served_model = outcome.served_model
                return outcome.value, candidate
    except TimeoutError as exc:
        raise DeadlineExceeded(
            f"The request's {ctx.deadline_s:g} s deadline ran out after "
            f"{len(decision.attempts)} attempt(s){_summary(ctx)}.",
            attempts=[a.public() for a in decision.attempts],
        ) from exc
    raise _exhausted(runtime, ctx, plan, errors)


def _skip_reason(runtime: Runtime, candidate: Candidate, skipped_families: set[str]) -> str | None:
    """Checks that can change while a request runs (another attempt's outcome)."""
    if candidate.provider.family_name in skipped_families:
        return f"family {candidate.provider.family_name} blocked this prompt"
    for key in breaker_keys(candidate):
        if blocked := runtime.board.blocked(key):
            return blocked
    if (left := runtime.board.embargoed_for(candidate.provider.name)) is not None:
        return f"embargo: {left:.1f} s left (Retry-After)"
    return None


def _prefer_other_family(queue: deque[Candidate], failed_family: str) -> deque[Candidate]:
    """Stable: candidates of other families first, then the failed one's."""
    return deque(sorted(queue, key=lambda c: c.provider.family_name == failed_family))


def _account_failure(
    runtime: Runtime, candidate: Candidate, exc: UpstreamError, action: ErrorAction
) -> None:
    board = runtime.board
    provider_key, model_key = breaker_keys(candidate)
    if exc.code == "upstream_rate_limited":
        retry_after = exc.retry_after
        board.embargo(
            candidate.provider.name,
            retry_after
            if retry_after is not None
            else runtime.catalog.policy.routing.default_retry_after_s,
        )
    if action == "open_breaker":
        key = model_key if exc.code == "upstream_model_not_found" else provider_key
        board.record_failure(key, exc.code, force_open=True)
        runtime.alerts.emit(
            "provider_misconfigured",
            f"{candidate.provider.name} refused {candidate.model.name} ({exc.code}); "
            f"breaker {key} opened",
            provider=candidate.provider.name,
            model=candidate.model.name,
            error=exc.code,
        )
    elif exc.code in _TRANSPORT:
        board.record_failure(provider_key, exc.code)
    elif exc.code in _MODEL_HEALTH or exc.code == "version_drift":
        board.record_failure(model_key, exc.code)
    else:  # the request's own problem (blocked, invalid) or an embargo: no verdict on health
        board.release_probe(provider_key)
        board.release_probe(model_key)


async def _check_version(
    runtime: Runtime, ctx: RequestContext, candidate: Candidate, outcome: Outcome[T]
) -> None:
    pinned = candidate.model.id
    served = outcome.served_model
    if not served or served == pinned:
        return
    model = candidate.model
    event = {"type": "version_drift", "model": model.name, "pinned": pinned, "served": served}
    ctx.decision.events.append(event)
    runtime.metrics.drift.labels(model.name, pinned, served).inc()
    runtime.alerts.emit(
        "version_drift",
        f"{model.name}: {candidate.provider.name} served {served!r}, pinned {pinned!r}",
        provider=candidate.provider.name,
        model=model.name,
        pinned=pinned,
        served=served,
        action=model.on_drift,
    )
    if model.on_drift == "fail_over":
        if outcome.discard is not None:
            await outcome.discard()
        raise VersionDrift(
            f"{candidate.provider.name} served {served!r} instead of the pinned {pinned!r}",
            provider=candidate.provider.name,
        )


def _record(
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


def _summary(ctx: RequestContext) -> str:
    if not ctx.decision.attempts:
        return ""
    return ": " + "; ".join(
        f"{a.model}@{a.provider} ({a.region}) {a.outcome}" for a in ctx.decision.attempts
    )


def _exhausted(
    runtime: Runtime, ctx: RequestContext, plan: Plan, errors: list[UpstreamError]
) -> GatewayError:
    attempts = [a.public() for a in ctx.decision.attempts]
    if len(errors) == 1 or (errors and all(isinstance(e, ContentBlocked) for e in errors)):
        # One attempt: its own error says most (a 429 keeps its Retry-After). Every family
        # refusing the prompt: the prompt is the problem.
        failure = UpstreamFailure(errors[-1])
        failure.attempts = attempts
        return failure
    dropped = [v for v in plan.verdicts if not v.kept]
    residency = [v for v in dropped if v.reason.startswith("residency")]
    note = ""
    if residency:
        note += (
            f"; {len(residency)} candidate(s) outside the team's allowed regions were not tried "
            "(residency)"
        )
    if len(dropped) > len(residency):
        note += f"; {len(dropped) - len(residency)} candidate(s) filtered out before any call"
    waits = [e.retry_after for e in errors if e.retry_after is not None]
    return AllProvidersFailed(
        f"All {len(ctx.decision.attempts)} attempt(s) failed{_summary(ctx)}{note}.",
        attempts=attempts,
        retry_after=min(waits) if waits else None,
    )
