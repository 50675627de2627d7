"""Traffic over time for the dashboard: a time-bucketed aggregator fed by the pipeline.

``TrafficSeries.observe`` runs once per request from the pipeline's record step, so it does a
handful of dict and integer updates and nothing else. It keeps fixed-width buckets (10 s by
default, the latest hour) of requests, fallbacks, errors, cost and hit counts, plus totals since
the process started (cost by team, task type and model; cache and knowledge hit rates). All of it
is per process: each replica's dashboard shows that replica's traffic.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.core.decision import Decision

# What the cache and knowledge stages said about a request (their ``x-gateway-cache`` header and
# ``ctx.notes["knowledge"]``) that counts as a lookup, and which of those as a hit.
CACHE_LOOKUPS = frozenset({"hit", "miss", "refresh"})
KNOWLEDGE_LOOKUPS = frozenset({"answer", "context", "none", "empty", "error"})
KNOWLEDGE_HITS = frozenset({"answer", "context"})


@dataclass(slots=True)
class Bucket:
    """One time slice of traffic, from ``start`` (epoch seconds) for the series' width."""

    start: int
    requests: int = 0
    fallbacks: int = 0  # failed attempts that moved a request on (x-gateway-fallbacks, summed)
    fell_back: int = 0  # requests with at least one fallback
    errors: int = 0  # requests answered with an error status
    cost_usd: float = 0.0
    cache_hits: int = 0
    knowledge_hits: int = 0


@dataclass(slots=True)
class Totals:
    """Everything since the process started."""

    requests: int = 0
    fallbacks: int = 0
    fell_back: int = 0
    errors: int = 0
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_lookups: int = 0
    cache_hits: int = 0
    knowledge_lookups: int = 0
    knowledge_hits: int = 0
    by_source: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    cost_by_team: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    cost_by_task: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    cost_by_model: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    requests_by_team: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    requests_by_task: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))


class TrafficSeries:
    """Fixed-width buckets of the latest ``keep`` slices and totals since start."""

    def __init__(
        self, *, bucket_s: int = 10, keep: int = 360, clock: Callable[[], float] = time.time
    ) -> None:
        if bucket_s < 1 or keep < 1:
            raise ValueError("bucket_s and keep must be positive")
        self.bucket_s = bucket_s
        self.keep = keep
        self._clock = clock
        self._buckets: deque[Bucket] = deque(maxlen=keep)
        self.totals = Totals()

    def observe(
        self, decision: Decision, *, cache: str | None = None, knowledge: str | None = None
    ) -> None:
        """Count one finished request (``cache``/``knowledge``: what those stages said)."""
        bucket = self._current()
        totals = self.totals
        fallbacks = decision.fallbacks
        failed = decision.status >= 400
        cost = decision.cost_usd
        bucket.requests += 1
        totals.requests += 1
        if fallbacks:
            bucket.fallbacks += fallbacks
            bucket.fell_back += 1
            totals.fallbacks += fallbacks
            totals.fell_back += 1
        if failed:
            bucket.errors += 1
            totals.errors += 1
        totals.by_source["error" if failed else decision.source] += 1
        totals.requests_by_team[decision.team] += 1
        totals.requests_by_task[decision.task_type] += 1
        if cost:
            bucket.cost_usd += cost
            totals.cost_usd += cost
            totals.cost_by_team[decision.team] += cost
            totals.cost_by_task[decision.task_type] += cost
            totals.cost_by_model[decision.served_by or "unknown"] += cost
        totals.prompt_tokens += decision.prompt_tokens
        totals.completion_tokens += decision.completion_tokens
        if cache in CACHE_LOOKUPS:
            totals.cache_lookups += 1
            if cache == "hit":
                totals.cache_hits += 1
                bucket.cache_hits += 1
        if knowledge in KNOWLEDGE_LOOKUPS:
            totals.knowledge_lookups += 1
            if knowledge in KNOWLEDGE_HITS:
                totals.knowledge_hits += 1
                bucket.knowledge_hits += 1

    def buckets(self, last: int | None = None) -> list[Bucket]:
        """The latest ``last`` slices up to now, oldest first, empty slices included."""
        count = min(self.keep, last or self.keep)
        now = self._start_of(self._clock())
        first = now - (count - 1) * self.bucket_s
        kept = {b.start: b for b in self._buckets if b.start >= first}
        return [kept.get(t) or Bucket(t) for t in range(first, now + 1, self.bucket_s)]

    def _start_of(self, t: float) -> int:
        return int(t // self.bucket_s) * self.bucket_s

    def _current(self) -> Bucket:
        start = self._start_of(self._clock())
        buckets = self._buckets
        if not buckets or buckets[-1].start != start:
            buckets.append(Bucket(start))
        return buckets[-1]
