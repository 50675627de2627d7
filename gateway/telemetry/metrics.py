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
            "Requests answered, by route, served model alias, provider, HTTP status and source",
            ["route", "model", "provider", "status", "source"],
            registry=r,
        )
        self.attempts = Counter(
            "gateway_attempts", "Calls to providers", ["provider", "model", "outcome"], registry=r
        )
        self.fallbacks = Counter(
            "gateway_fallbacks",
            "Moves to another candidate after a failure",
            ["from_model", "to_model", "from_provider", "to_provider", "reason"],
            registry=r,
        )
        self.panic = Counter(
            "gateway_panic_routing",
            "Requests that tried candidates held back by breakers or embargoes (none was healthy)",
            ["route"],
            registry=r,
        )
        self.hedges = Counter(
            "gateway_hedges",
            "Second candidates started beside a slow first (hedged requests)",
            ["route"],
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
            ["route", "source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream = Histogram(
            "gateway_upstream_duration_seconds",
            "Time of one call to a provider (each attempt)",
            ["provider", "model", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Streams: request arrival to the first content sent to the client",
            ["route", "model", "source"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens billed by providers, by team, task type, model alias and kind",
            ["team", "task_type", "model", "kind"],
            registry=r,
        )
        self.cost = Counter(
            "gateway_cost_usd",
            "USD spent on providers (usage x the model's price), by team, task type and model",
            ["team", "task_type", "model"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "gateway_breaker_transitions",
            "Breaker state changes seen by this replica",
            ["key", "state"],
            registry=r,
        )
        self.decision_writes = Counter(
            "gateway_decision_records",
            "Decision records written to a sink (redis, file) or dropped (queue), by result",
            ["sink", "result"],
            registry=r,
        )
        self.tier_decisions = Counter(
            "gateway_tier_decisions",
            "Tier router choices by route, tier and reason code (gateway.tiering.REASONS)",
            ["route", "tier", "code"],
            registry=r,
        )
        self.tier_outcomes = Counter(
            "gateway_tier_outcomes",
            "Tier router outcomes shared through Redis: this replica's written or dropped, "
            "others' learnt, ignored (no such tiered route here) or malformed; sync errors",
            ["result"],
            registry=r,
        )
        self.exporter_exits = Counter(
            "gateway_telemetry_exporter_exits",
            "Times the telemetry exporter process exited unexpectedly (it is started again)",
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
        self.cache_pool_waits = Counter(
            "gateway_cache_pool_waits",
            "Cache store calls that waited for a free Redis connection (outcome: waited, "
            "timed_out)",
            ["outcome"],
            registry=r,
        )
        self.knowledge_hits = Counter(
            "gateway_knowledge_hits",
            "Knowledge lookups that answered (kind=answer) or attached context (kind=context)",
            ["kind"],
            registry=r,
        )
        self.knowledge_answer_decisions = Counter(
            "gateway_knowledge_answer_decisions",
            "Curated-answer decisions: direct, verified, or no_<reason> (guard, withdrawn, below, "
            "margin, verifier)",
            ["outcome"],
            registry=r,
        )
        self.knowledge_verifications = Counter(
            "gateway_knowledge_verifications",
            "Yes/no verifications of a curated answer by a model, by answer "
            "(yes, no, unclear, error, unavailable)",
            ["answer"],
            registry=r,
        )
        self.knowledge_withdrawn = Counter(
            "gateway_knowledge_withdrawn",
            "Direct answers withdrawn by a low feedback score (the entry stops answering that kind "
            "of question)",
            registry=r,
        )
        self.knowledge_errors = Counter(
            "gateway_knowledge_errors",
            "Knowledge store failures and timeouts (the request went on without it)",
            registry=r,
        )
        self.stage_timeouts = Counter(
            "gateway_stage_timeouts",
            "Cache or knowledge lookups cut off by their time budget (the request went on)",
            ["stage"],
            registry=r,
        )
        # Quality (gateway/quality/monitor.py).
        self.quality_score = Gauge(
            "gateway_quality_score",
            "Quality 0..1 of a model's latest version per task type (heuristics, feedback, judge)",
            ["model", "task_type"],
            registry=r,
        )
        self.quality_events = Counter(
            "gateway_quality_events",
            "Scored answers by signal (heuristic, feedback, judge) and result (pass, fail)",
            ["model", "task_type", "signal", "result"],
            registry=r,
        )
        self.quality_flags = Counter(
            "gateway_quality_flags",
            "Heuristic flags (empty, truncated, refusal, invalid_json, stream_error)",
            ["model", "task_type", "flag"],
            registry=r,
        )
        self.quality_regressions = Counter(
            "gateway_quality_regressions",
            "Quality regressions detected per model, task type and signal",
            ["model", "task_type", "signal"],
            registry=r,
        )
        self.fallback_rate_alerts = Counter(
            "gateway_fallback_rate_alerts",
            "Routes whose share of requests needing a fallback crossed the threshold",
            ["route"],
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Gateway time excluding providers",
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited",
            "Requests refused by a team limit (limit: requests, tokens, budget)",
            ["team", "limit"],
            registry=r,
        )
        self.limits_fallback = Counter(
            "gateway_limits_fallback",
            "Team-limit decisions made per replica because Redis was unreachable",
            ["operation"],
            registry=r,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: the hot path skips prometheus' label checks."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """The current samples called ``name`` with their labels, e.g. ``gateway_requests_total``
        or ``gateway_request_duration_seconds_count`` (what a dashboard sums up)."""
        return [
            (dict(sample.labels), sample.value)
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == name
        ]
