"""The decision record: why a request went where it went, one JSON object per request.

No prompt text: the record names candidates, verdicts, attempts, versions and timings. It is
written as a JSON line to the ``gateway.decisions`` logger and kept in a bounded in-process ring
(the admin API and the dashboard read it).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

log = logging.getLogger("gateway.decisions")


@dataclass(slots=True)
class CandidateVerdict:
    """What the router made of one candidate before any call."""

    model: str
    provider: str
    region: str
    kept: bool
    reason: str  # why dropped, or how it ranked
    score: float | None = None


@dataclass(slots=True)
class Attempt:
    """One call to a provider."""

    model: str
    provider: str
    region: str
    outcome: str  # "ok" or the error class
    latency_ms: float
    served_model: str | None = None
    status: int | None = None
    detail: str = ""

    def public(self) -> dict[str, Any]:
        """What an error body may show the client."""
        return {
            "model": self.model,
            "provider": self.provider,
            "region": self.region,
            "error": self.outcome,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 1),
        }


@dataclass(slots=True)
class Decision:
    request_id: str
    team: str
    route: str
    task_type: str
    strategy: str = "priority"
    stream: bool = False
    started_at: float = field(default_factory=time.time)
    candidates: list[CandidateVerdict] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # drift, breaker, retries
    served_by: str | None = None
    served_model: str | None = None
    status: int = 200
    error: str | None = None
    overhead_ms: float | None = None
    total_ms: float | None = None
    # What the answer cost: filled once an upstream answered (cache and knowledge answers cost 0).
    source: str = "provider"  # provider | cache | knowledge | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # Quality signals of the answer (heuristics, feedback, judge), by signal name.
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def fallbacks(self) -> int:
        return sum(1 for a in self.attempts if a.outcome != "ok")

    @property
    def regions_sent(self) -> list[str]:
        """Every region the prompt was sent to, in order of first use."""
        return list(dict.fromkeys(a.region for a in self.attempts))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DecisionLog:
    """Bounded ring of recent decisions plus the JSON-lines logger."""

    def __init__(self, size: int = 1000) -> None:
        self._recent: deque[Decision] = deque(maxlen=size)

    def record(self, decision: Decision) -> None:
        self._recent.append(decision)
        # DEBUG: a JSON line per request is for a log pipeline that asks for it, not the console.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(orjson.dumps(decision.to_dict()).decode())

    def find(self, request_id: str) -> Decision | None:
        """A recent decision by request id (newest first; ``None`` once it left the ring)."""
        for decision in reversed(self._recent):
            if decision.request_id == request_id:
                return decision
        return None

    def recent(self, limit: int = 100) -> list[Decision]:
        return list(self._recent)[-limit:]
