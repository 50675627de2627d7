"""The attempt loop: try a plan's candidates within the attempt budget and the deadline.

After each failure the policy for its error class decides (``RoutingConfig.errors``): retry once,
move to the next candidate (preferring another provider family), skip the whole family, open the
provider's breaker, or stop and return the error as is. Every attempt lands in the decision
record; the served version is compared with the pin (drift). Used for plain and streamed answers:
``call`` does one attempt and returns an ``Outcome``.

Each call waits for its first byte at most its fair share of what is left of the deadline
(``hedging.attempt_budget``), so that a hung candidate leaves time for the next; a route with
``hedge_after`` may run a second candidate beside a slow first (``hedging.race``). When the healthy
candidates are spent, those held back by breakers or embargoes are tried anyway (panic routing,
``router.py``). Cancelling a call (deadline, client gone, lost hedge) closes its upstream
connection: the pool's ``async with`` exits on the cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.core.context import RequestContext
from gateway.core.errors import UpstreamFailure
from gateway.core.runtime import Runtime
from gateway.policy.catalog import Candidate
from gateway.policy.model import ErrorAction, ErrorPolicy
from providers.errors import UnsupportedRequest, UpstreamError

from .diagnostics import deadline_error, exhausted, record_attempt
from .hedging import Result, attempt, attempt_budget, hedge_safe, race
from .router import Plan, breaker_keys

T = TypeVar("T")

log = logging.getLogger(__name__)

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
    return await _Attempts(runtime, ctx, plan, call).run()


class _Attempts(Generic[T]):
    """One request's attempt loop: which candidate next, its time budget, what a failure does."""

    def __init__(
        self,
        runtime: Runtime,
        ctx: RequestContext,
        plan: Plan,
        call: Callable[[Candidate], Awaitable[Outcome[T]]],
    ) -> None:
        self.runtime, self.ctx, self.plan, self.call = runtime, ctx, plan, call
        self.config = runtime.catalog.policy.routing
        self.queue = deque(plan.ordered)
        self.skipped_families: set[str] = set()
        self.retried: set[str] = set()
        self.errors: list[UpstreamError] = []
        self.previous: Candidate | None = None
        # Candidates held back by their health, for panic routing once the healthy ones are
        # spent.
        self.resting = list(plan.resting)
        self.panic = plan.panic
        self.started = 0  # calls started (a hedge is one more)
        self.in_flight: dict[str, tuple[Candidate, float]] = {}

    async def run(self) -> tuple[T, Candidate]:
        ctx = self.ctx
        if self.panic:
            _note_panic(self.runtime, ctx, "no allowed candidate was healthy")
        hedge_after = self._hedge_after()
        try:
            async with asyncio.timeout_at(ctx.deadline):
                while (candidate := await self._next()) is not None:
                    self._count_fallback(candidate)
                    budget = attempt_budget(
                        ctx.deadline - asyncio.get_running_loop().time(),
                        self._attempts_left(),
                        self.config.min_attempt_s,
                    )
                    delay = hedge_after(candidate) if hedge_after else None
                    self._start(candidate)
                    if delay is None:
                        results = [await attempt(self._checked, candidate, budget, ctx.deadline)]
                    else:
                        results = await race(
                            self._checked,
                            candidate,
                            budget,
                            delay,
                            self._partner,
                            self._discard,
                            ctx.deadline,
                        )
                    for result in results:
                        self.in_flight.pop(result.candidate.model.name, None)
                        if (won := self._settle(result)) is not None:
                            return won
        except TimeoutError as exc:
            self._record_cut_off()
            raise deadline_error(ctx) from exc
        raise exhausted(ctx, self.errors)

    # -- choosing -------------------------------------------------------------------------
    async def _next(self) -> Candidate | None:
        """The next candidate to call within the attempt budget, or ``None``."""
        decision = self.ctx.decision
        board = self.runtime.board
        while self.started < self.config.max_attempts:
            if not self.queue:
                tried = {a.model for a in decision.attempts}
                self.resting = [c for c in self.resting if c.model.name not in tried]
                if self.panic or not self.resting:
                    return None
                # Every healthy candidate failed or was skipped: the resting ones are the
                # request's last chance, most likely recovered first.
                self.panic = True
                self.queue = deque(self.runtime.router.by_recovery(self.resting))
                _note_panic(self.runtime, self.ctx, "every healthy candidate failed")
                continue
            candidate = self.queue.popleft()
            if reason := _skip_reason(
                self.runtime, candidate, self.skipped_families, panic=self.panic
            ):
                decision.events.append(
                    {"type": "skipped", "model": candidate.model.name, "reason": reason}
                )
                if not reason.startswith("family"):
                    self.resting.append(candidate)
                continue
            keys = breaker_keys(candidate)
            if not self.panic and not all(
                [await board.acquire_probe(key) for key in keys if board.probing_due(key)]
            ):
                decision.events.append(
                    {"type": "skipped", "model": candidate.model.name, "reason": "probe taken"}
                )
                self.resting.append(candidate)
                continue
            return candidate
        return None

    def _attempts_left(self) -> int:
        """Calls this request may still make, the next one included."""
        waiting = len(self.queue) + (0 if self.panic else len(self.resting))
        return min(self.config.max_attempts - self.started, 1 + waiting)

    def _hedge_after(self) -> Callable[[Candidate], float | None] | None:
        route = self.ctx.route
        setting = route.hedge_after
        router = self.runtime.router
        if setting is None or self.ctx.route.kind != "chat" or not hedge_safe(self.ctx.chat):
            return None
        router.hedges.earn()

        def delay(candidate: Candidate) -> float | None:
            if self.started >= self.config.max_attempts or not self.queue:
                return None
            if isinstance(setting, str):
                return router.first_byte.percentile(candidate.model.name, float(setting[1:]))
            return float(setting)

        return delay

    def _partner(self) -> Candidate | None:
        """A hedge's second candidate: the next in line, if the gateway-wide cap allows."""
        if self.started >= self.config.max_attempts or not self.queue or self.panic:
            return None
        candidate = self.queue[0]
        allowed = self.ctx.allowed_regions
        if allowed is not None and candidate.region not in allowed:
            return None  # never across the residency boundary (the plan already filtered)
        board = self.runtime.board
        if self.runtime.router.health_reason(candidate) is not None or any(
            board.probing_due(key) for key in breaker_keys(candidate)
        ):
            return None  # a hedge is no probe: only a healthy candidate
        if candidate.provider.family_name in self.skipped_families:
            return None
        if not self.runtime.router.hedges.spend():
            self.ctx.decision.events.append({"type": "hedge_capped"})
            return None
        self.queue.popleft()
        self.ctx.decision.events.append({"type": "hedged", "model": candidate.model.name})
        self.runtime.metrics.child(self.runtime.metrics.hedges, self.ctx.route.name).inc()
        self._start(candidate)
        return candidate

    def _start(self, candidate: Candidate) -> None:
        self.started += 1
        self.previous = candidate
        self.in_flight[candidate.model.name] = (candidate, time.perf_counter())

    def _count_fallback(self, candidate: Candidate) -> None:
        previous = self.previous
        if previous is not None and self.errors:
            self.runtime.metrics.fallbacks.labels(
                previous.model.name,
                candidate.model.name,
                previous.provider.name,
                candidate.provider.name,
                self.errors[-1].code,
            ).inc()

    # -- calling --------------------------------------------------------------------------
    async def _checked(self, candidate: Candidate) -> Outcome[T]:
        outcome = await self.call(candidate)
        await _check_version(self.runtime, self.ctx, candidate, outcome)
        return outcome

    async def _discard(self, outcome: Outcome[T]) -> None:
        if outcome.discard is not None:
            await outcome.discard()

    # -- outcomes -------------------------------------------------------------------------
    def _settle(self, result: Result[Outcome[T]]) -> tuple[T, Candidate] | None:
        """Record one ended call; the value and candidate when it is the answer."""
        runtime, ctx, candidate = self.runtime, self.ctx, result.candidate
        keys = breaker_keys(candidate)
        if result.lost_hedge:
            ctx.upstream_s += result.elapsed
            record_attempt(runtime, ctx, candidate, "hedge_lost", result.elapsed)
            for key in keys:
                runtime.board.release_probe(key)
            return None
        if (exc := result.error) is not None:
            if isinstance(exc, UnsupportedRequest):  # the adapter cannot say it: client's error
                raise UpstreamFailure(exc) from exc
            ctx.upstream_s += result.elapsed
            record_attempt(
                runtime,
                ctx,
                candidate,
                exc.code,
                result.elapsed,
                status=exc.upstream_status,
                detail=exc.message[:200],
            )
            self.errors.append(exc)
            action = action_for(self.config.errors, exc)
            _account_failure(runtime, candidate, exc, action)
            if action == "stop":
                raise UpstreamFailure(exc) from exc
            if action == "retry_then_next" and candidate.model.name not in self.retried:
                self.retried.add(candidate.model.name)
                self.queue.appendleft(candidate)
                return None
            if action == "skip_family":
                self.skipped_families.add(candidate.provider.family_name)
            self.queue = _prefer_other_family(self.queue, candidate.provider.family_name)
            return None
        outcome = result.outcome
        assert outcome is not None
        # Only time on the wire counts as upstream: translating is the gateway's work.
        ctx.upstream_s += result.elapsed if outcome.wire_s is None else outcome.wire_s
        record_attempt(runtime, ctx, candidate, "ok", result.elapsed, served=outcome.served_model)
        for key in keys:
            runtime.board.record_success(key)
        runtime.router.observe_latency(candidate.provider.name, result.elapsed)
        runtime.router.first_byte.observe(candidate.model.name, result.elapsed)
        ctx.decision.served_by = candidate.model.name
        ctx.decision.served_model = outcome.served_model
        return outcome.value, candidate

    def _record_cut_off(self) -> None:
        """Calls still running when the deadline passed: in the record, so that a 504 names
        them (their connections were closed by the cancellation)."""
        now = time.perf_counter()
        for candidate, sent in self.in_flight.values():
            record_attempt(self.runtime, self.ctx, candidate, "deadline_exceeded", now - sent)
            for key in breaker_keys(candidate):
                self.runtime.board.release_probe(key)
        self.in_flight.clear()


def _skip_reason(
    runtime: Runtime, candidate: Candidate, skipped_families: set[str], *, panic: bool
) -> str | None:
    """Checks that can change while a request runs (another attempt's outcome). In panic mode
    health is no reason: the candidate is tried anyway."""
    if candidate.provider.family_name in skipped_families:
        return f"family {candidate.provider.family_name} blocked this prompt"
    return None if panic else runtime.router.health_reason(candidate)


def _note_panic(runtime: Runtime, ctx: RequestContext, why: str) -> None:
    ctx.decision.panic = True
    ctx.decision.events.append({"type": "panic", "reason": why})
    runtime.metrics.child(runtime.metrics.panic, ctx.route.name).inc()
    log.warning("request %s: panic routing on route %s (%s)", ctx.request_id, ctx.route.name, why)


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
