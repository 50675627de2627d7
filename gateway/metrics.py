"""Prometheus metrics, in a registry per application (no process-global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)


class Metrics:
    """Every metric the gateway exports; ``registry`` is what ``/metrics`` renders."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests answered",
            ["route", "provider", "status", "source"],
            registry=r,
        )
        self.attempts = Counter(
            "gateway_attempts", "Calls to providers", ["provider", "model", "outcome"], registry=r
        )
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Moves to another candidate after a failure",
            ["from_provider", "to_provider", "reason"],
            registry=r,
        )
        self.drift = Counter(
            "gateway_version_drift",
            "Answers served by another version than the pin",
            ["model", "pinned", "served"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "gateway_breaker_state",
            "Breaker state: 0 closed, 1 half-open, 2 open",
            ["key"],
            registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Total request time",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "gateway_cache_lookups", "Cache lookups by result", ["result"], registry=r
        )
        self.cache_errors = Counter(
            "gateway_cache_errors",
            "Cache store or embedder failures (answered uncached)",
            ["operation"],
            registry=r,
        )
        self.knowledge_hits = Counter(
            "gateway_knowledge_hits",
            "Knowledge lookups that answered (kind=answer) or attached context (kind=context)",
            ["kind"],
            registry=r,
        )
        self.knowledge_errors = Counter(
            "gateway_knowledge_errors",
            "Knowledge store failures and timeouts (the request went on without it)",
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Gateway time excluding providers",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the hot path skips prometheus' label checks."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
