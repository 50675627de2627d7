"""One attempt within its share of the deadline, and hedged attempts.

``attempt`` runs one call bounded by the attempt's time budget (``attempt_budget``): a candidate
that sends nothing within its fair share of what is left of the deadline fails with
``upstream_timeout`` so that the candidates after it still have time. ``race`` is the same with a
hedge: when the first candidate has not answered after the route's ``hedge_after`` (seconds, or a
percentile of that model's recent first-byte latency), a second candidate starts in parallel; the
first success wins and the other is cancelled, which closes its upstream connection at once.

Which requests are hedged (``hedge_safe``): a duplicate must cost only tokens. Chat requests are
stateless at the provider, and a tool call in an answer runs only if the client runs it, and the
client receives one answer: safe. Not hedged: requests that ask the provider to keep state
(``store: true``, OpenAI stored completions; ``previous_response_id``), and embeddings (cheap and
fast, nothing to win). A hedge stays within the request's plan, whose candidates residency has
already filtered, and re-checks the region anyway. ``HedgeBudget`` caps the share of requests
hedged across the gateway (``routing.hedge_max_share``) so that a slow provider cannot double the
load on the others.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.policy.catalog import Candidate
from providers.errors import PoolSaturated, UpstreamError, UpstreamTimeout
from providers.schema import ChatRequest
from providers.slots import WaitBound, bound_wait

V = TypeVar("V")

SAMPLES_KEPT = 256
MIN_SAMPLES = 20  # a percentile of fewer first bytes says little: no hedge until then
# A slot wait ends this much (at most a tenth of the attempt's time) before the attempt's own
# end, so that saturation is reported as ``pool_saturated`` rather than lost in the timeout.
SLOT_MARGIN_S = 0.05


@dataclass(slots=True)
class Result(Generic[V]):
    """How one call ended: a value (``outcome``), an upstream error, or lost to a hedge."""

    candidate: Candidate
    elapsed: float
    outcome: V | None = None
    error: UpstreamError | None = None
    lost_hedge: bool = False


def attempt_budget(remaining_s: float, attempts_left: int, floor_s: float) -> float | None:
    """Seconds the next attempt may wait for its first byte; ``None``: the rest of the deadline.

    The rule (docs/routing.md): the remaining deadline divided among the attempts that may still
    be made, never less than ``floor_s``; the last attempt has all that is left.
    """
    if attempts_left <= 1:
        return None
    budget = max(remaining_s / attempts_left, floor_s)
    return None if budget >= remaining_s else budget


async def attempt(
    call: Callable[[Candidate], Awaitable[V]],
    candidate: Candidate,
    budget: float | None,
    deadline: float | None = None,
) -> Result[V]:
    """One call within ``budget``; upstream errors come back in the ``Result``.

    A wait for one of the provider's connection slots ends within the attempt's own time (its
    budget, or the request's ``deadline``, a loop time, for the last attempt) and sooner by the
    provider's ``slot_wait``: a saturated provider yields to the next candidate as
    ``pool_saturated`` (no breaker) inside the deadline (docs/routing.md#fair-shares).
    """
    sent = time.perf_counter()
    now = asyncio.get_running_loop().time()
    end = now + budget if budget is not None else deadline
    try:
        if end is None:  # no deadline known (a direct caller): the slot wait alone bounds it
            value = await call(candidate)
            return Result(candidate, time.perf_counter() - sent, outcome=value)
        bound = WaitBound(end - min(SLOT_MARGIN_S, (end - now) / 10))
        if budget is None:
            with bound_wait(bound):
                value = await call(candidate)
        else:
            scope = asyncio.timeout(budget)
            try:
                with bound_wait(bound):
                    async with scope:
                        value = await call(candidate)
            except TimeoutError:
                if not scope.expired():
                    raise
                if bound.waiting:  # the timeout fired first while it still waited for a slot
                    raise PoolSaturated(
                        f"{candidate.provider.name}: no free connection slot within "
                        f"{budget:.3g} s (its share of the request's deadline)",
                        provider=candidate.provider.name,
                        retry_after=1.0,
                    ) from None
                raise UpstreamTimeout(
                    f"{candidate.provider.name} sent no first byte within {budget:.1f} s "
                    "(its share of the request's deadline)",
                    provider=candidate.provider.name,
                ) from None
    except UpstreamError as exc:
        return Result(candidate, time.perf_counter() - sent, error=exc)
    return Result(candidate, time.perf_counter() - sent, outcome=value)


async def race(
    call: Callable[[Candidate], Awaitable[V]],
    primary: Candidate,
    budget: float | None,
    hedge_after: float,
    partner: Callable[[], Candidate | None],
    discard: Callable[[V], Awaitable[None]],
    deadline: float | None = None,
) -> list[Result[V]]:
    """``primary``, and after ``hedge_after`` s without an answer the candidate ``partner`` gives
    (if any) in parallel. Every call that ended is returned; the winner (if any) last. The loser is
    cancelled (its upstream connection closed) and returned with ``lost_hedge``; a loser that
    succeeded at the same moment has its value discarded."""
    started = {primary.model.name: time.perf_counter()}
    first = asyncio.create_task(attempt(call, primary, budget, deadline))
    tasks: dict[asyncio.Task[Result[V]], Candidate] = {first: primary}
    results: list[Result[V]] = []
    try:
        first_done, _ = await asyncio.wait([first], timeout=hedge_after)
        if not first_done and (second := partner()) is not None:
            started[second.model.name] = time.perf_counter()
            tasks[asyncio.create_task(attempt(call, second, budget, deadline))] = second
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            finished = [task.result() for task in done]
            results.extend(r for r in finished if r.outcome is None)
            winners = [r for r in finished if r.outcome is not None]
            if winners:
                for extra in winners[1:]:
                    assert extra.outcome is not None
                    await discard(extra.outcome)
                    extra.outcome, extra.lost_hedge = None, True
                    results.append(extra)
                results.append(winners[0])
                break
    finally:
        losers = [task for task in tasks if not task.done()]
        for task in losers:
            task.cancel()
        if losers:
            await asyncio.gather(*losers, return_exceptions=True)
        for task in losers:
            candidate = tasks[task]
            elapsed = time.perf_counter() - started[candidate.model.name]
            results.insert(0, Result(candidate, elapsed, lost_hedge=True))
    return results


def hedge_safe(chat: ChatRequest) -> bool:
    """Whether a duplicate of this request costs nothing but tokens (see the module docstring)."""
    raw = chat.raw
    return not (raw.get("store") or raw.get("previous_response_id"))


class FirstByteLatency:
    """Recent first-byte latencies per model (successful attempts), for percentile hedging."""

    def __init__(self) -> None:
        self._samples: dict[str, deque[float]] = {}

    def observe(self, model: str, seconds: float) -> None:
        self._samples.setdefault(model, deque(maxlen=SAMPLES_KEPT)).append(seconds)

    def percentile(self, model: str, pct: float) -> float | None:
        samples = self._samples.get(model)
        if samples is None or len(samples) < MIN_SAMPLES:
            return None
        ordered = sorted(samples)
        return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


class HedgeBudget:
    """At most ``share`` of requests hedged, gateway-wide: each request earns ``share`` of a
    token (up to a small burst), a hedge spends one."""

    def __init__(self, share: float, burst: float = 5.0) -> None:
        self.share = share
        self._burst = max(burst, 1.0)
        self._tokens = 1.0 if share > 0 else 0.0

    def earn(self) -> None:
        self._tokens = min(self._tokens + self.share, self._burst)

    def spend(self) -> bool:
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
