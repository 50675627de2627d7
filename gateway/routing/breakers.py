"""Circuit breakers per provider and per model, and Retry-After embargoes.

A breaker opens on ``consecutive_failures`` in a row, or on an error rate over ``window_s`` (its
latest 1,024 outcomes at most) once ``min_requests`` were seen, or at once when forced (the
provider rejected the gateway's key). After
``open_s`` it is half-open: one probe request (one across all replicas, through a shared lock) may
go; success closes it, failure reopens it for twice as long (capped at ``max_open_s``).

Reads on the request path are local and synchronous. Transitions are written to the shared store
as they happen; ``sync`` merges every replica's transitions (the newest ``changed_at`` wins).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from gateway.policy.model import BreakerConfig

from .shared import BreakerRecord, SharedState

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
OUTCOMES_KEPT = 1024


@dataclass(slots=True)
class _Breaker:
    state: str = CLOSED
    open_until: float = 0.0
    changed_at: float = 0.0
    opened_count: int = 0
    reason: str = ""
    consecutive: int = 0
    # The error rate looks at the window's latest outcomes, at most OUTCOMES_KEPT of them: the
    # deque is appended on every request, so it must not grow with traffic.
    outcomes: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=OUTCOMES_KEPT))
    probing: bool = False


Listener = Callable[[str, str, str], None]  # (key, new state, reason)


class BreakerBoard:
    """Every breaker and embargo this replica knows, synced with the shared store."""

    def __init__(
        self,
        config: BreakerConfig,
        shared: SharedState,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Listener | None = None,
    ) -> None:
        self.config = config
        self._shared = shared
        self._clock = clock
        self._breakers: dict[str, _Breaker] = {}
        self._embargoes: dict[str, float] = {}
        self._on_change = on_change
        self._pending: set[asyncio.Task[None]] = set()

    # -- reads (hot path) -----------------------------------------------------------------
    def state(self, key: str) -> str:
        breaker = self._breakers.get(key)
        if breaker is None or breaker.state == CLOSED:
            return CLOSED
        if self._clock() >= breaker.open_until:
            return HALF_OPEN
        return OPEN

    def blocked(self, key: str) -> str | None:
        """Why ``key`` may not take a request now, or ``None``."""
        state = self.state(key)
        if state == OPEN:
            breaker = self._breakers[key]
            left = breaker.open_until - self._clock()
            return f"breaker {key} open ({breaker.reason}; {left:.1f} s to a probe)"
        if state == HALF_OPEN and self._breakers[key].probing:
            return f"breaker {key} half-open, probe in flight"
        return None

    def embargoed_for(self, provider: str) -> float | None:
        """Seconds left of a Retry-After embargo on ``provider``."""
        until = self._embargoes.get(provider)
        if until is None:
            return None
        left = until - self._clock()
        return left if left > 0 else None

    def recovery_s(self, keys: tuple[str, ...], provider: str) -> tuple[float, float]:
        """How likely ``keys`` and ``provider``'s embargo are to have recovered, as a sort key:
        (seconds until the latest of them reopens or ends, when the breaker opened). Panic routing
        tries the smallest first: the embargo closest to its end, the breaker opened earliest."""
        now = self._clock()
        left = self.embargoed_for(provider) or 0.0
        opened = now
        for key in keys:
            breaker = self._breakers.get(key)
            if breaker is None or breaker.state == CLOSED:
                continue
            left = max(left, breaker.open_until - now)
            opened = min(opened, breaker.changed_at)
        return max(left, 0.0), opened

    def states(self) -> dict[str, str]:
        return {key: self.state(key) for key in self._breakers}

    # -- probes ---------------------------------------------------------------------------
    def probing_due(self, key: str) -> bool:
        """Whether a request to ``key`` would be a half-open probe (cheap, synchronous)."""
        breaker = self._breakers.get(key)
        return breaker is not None and breaker.state != CLOSED

    async def acquire_probe(self, key: str) -> bool:
        """For a half-open breaker: may this request be the probe?"""
        breaker = self._breakers.get(key)
        if breaker is None or self.state(key) != HALF_OPEN or breaker.probing:
            return self.state(key) == CLOSED
        if not await self._shared.acquire_probe(key, self.config.probe_timeout_s):
            return False
        breaker.probing = True
        return True

    # -- outcomes -------------------------------------------------------------------------
    def record_success(self, key: str) -> None:
        breaker = self._breakers.setdefault(key, _Breaker())
        breaker.consecutive = 0
        self._remember(breaker, ok=True)
        if breaker.state != CLOSED:
            self._transition(key, breaker, CLOSED, "probe succeeded")

    def record_failure(self, key: str, reason: str, *, force_open: bool = False) -> None:
        breaker = self._breakers.setdefault(key, _Breaker())
        breaker.consecutive += 1
        self._remember(breaker, ok=False)
        cfg = self.config
        if breaker.state != CLOSED:
            if breaker.probing or force_open:  # a failed probe: reopen, longer
                self._open(key, breaker, reason)
            return
        failures = sum(1 for _, ok in breaker.outcomes if not ok)
        total = len(breaker.outcomes)
        if force_open:
            self._open(key, breaker, reason)
        elif breaker.consecutive >= cfg.consecutive_failures:
            self._open(key, breaker, f"{breaker.consecutive} consecutive failures: {reason}")
        elif total >= cfg.min_requests and failures / total >= cfg.error_rate:
            self._open(key, breaker, f"{failures}/{total} failed in {cfg.window_s:g} s: {reason}")

    def release_probe(self, key: str) -> None:
        """The probe ended without a verdict on the provider (e.g. the client's own error)."""
        breaker = self._breakers.get(key)
        if breaker is not None:
            breaker.probing = False

    def embargo(self, provider: str, seconds: float) -> None:
        until = self._clock() + seconds
        if until > self._embargoes.get(provider, 0.0):
            self._embargoes[provider] = until
            self._spawn(self._shared.put_embargo(provider, until))

    # -- internals ------------------------------------------------------------------------
    def _remember(self, breaker: _Breaker, *, ok: bool) -> None:
        now = self._clock()
        breaker.outcomes.append((now, ok))
        horizon = now - self.config.window_s
        while breaker.outcomes and breaker.outcomes[0][0] < horizon:
            breaker.outcomes.popleft()

    def _open(self, key: str, breaker: _Breaker, reason: str) -> None:
        cfg = self.config
        duration = min(cfg.open_s * (2**breaker.opened_count), cfg.max_open_s)
        breaker.opened_count += 1
        breaker.open_until = self._clock() + duration
        self._transition(key, breaker, OPEN, reason)

    def _transition(self, key: str, breaker: _Breaker, state: str, reason: str) -> None:
        breaker.state = state
        breaker.reason = reason
        breaker.changed_at = self._clock()
        breaker.probing = False
        breaker.consecutive = 0
        breaker.outcomes.clear()
        if state == CLOSED:
            breaker.opened_count = 0
        log.warning("breaker %s -> %s (%s)", key, state, reason)
        if self._on_change is not None:
            self._on_change(key, state, reason)
        record = BreakerRecord(
            state=state,
            open_until=breaker.open_until,
            changed_at=breaker.changed_at,
            opened_count=breaker.opened_count,
            reason=reason,
        )
        self._spawn(self._shared.put_breaker(key, record, ttl_s=self.config.max_open_s * 4))

    def _spawn(self, write: Coroutine[Any, Any, None]) -> None:
        # Writes are fire-and-forget (the request never waits on Redis) but tracked, so that
        # ``drain`` can flush them and no task is garbage-collected mid-flight.
        task = asyncio.ensure_future(write)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for pending writes to the shared store."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def sync(self, keys: list[str], providers: list[str]) -> None:
        """Merge the shared store's view: newer transitions from other replicas win."""
        for key, record in (await self._shared.get_breakers(keys)).items():
            breaker = self._breakers.setdefault(key, _Breaker())
            if record.changed_at <= breaker.changed_at:
                continue
            if record.state != breaker.state and self._on_change is not None:
                self._on_change(key, record.state, f"from another replica: {record.reason}")
            breaker.state = record.state
            breaker.open_until = record.open_until
            breaker.changed_at = record.changed_at
            breaker.opened_count = record.opened_count
            breaker.reason = record.reason
            breaker.probing = False
            breaker.consecutive = 0
            breaker.outcomes.clear()
        for provider, until in (await self._shared.get_embargoes(providers)).items():
            if until > self._embargoes.get(provider, 0.0):
                self._embargoes[provider] = until
