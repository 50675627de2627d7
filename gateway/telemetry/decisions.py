"""The decision log: the recent decision records of this replica and the hand-off to the sinks.

``DecisionLog`` keeps a bounded in-process ring (what this replica saw) and, when configured, hands
each record (``gateway.core.decision``) to ``DecisionSinks`` (gateway/telemetry/decision_store.py),
which write them in the background to a bounded Redis stream and a JSON-lines file. The request path
only appends to two deques; it never awaits Redis or the disk.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from gateway.core.decision import Decision

from .decision_store import DecisionQuery, DecisionSinks

log = logging.getLogger("gateway.decisions")  # a stable name ops filter on (docs/telemetry.md)


class DecisionLog:
    """The recent decisions of this replica, and the hand-off to the durable sinks.

    ``recent``/``find`` read the in-process ring (synchronous, for the dashboard and tests);
    ``lookup``/``query`` read the shared Redis stream when there is one, so that every replica
    sees every replica's decisions, and fall back to the ring.
    """

    def __init__(self, size: int = 1000, sinks: DecisionSinks | None = None) -> None:
        self._recent: deque[Decision] = deque(maxlen=size)
        self.sinks = sinks

    def record(self, decision: Decision) -> None:
        self._recent.append(decision)
        if self.sinks is not None:
            self.sinks.submit(decision)
        # DEBUG: a JSON line per request is for a log pipeline that asks for it, not the console.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(decision.to_json().decode())

    def find(self, request_id: str) -> Decision | None:
        """A recent decision of this replica by request id (``None`` once it left the ring)."""
        for decision in reversed(self._recent):
            if decision.request_id == request_id:
                return decision
        return None

    def recent(self, limit: int = 100) -> list[Decision]:
        """This replica's latest decisions, oldest first."""
        if limit >= len(self._recent):
            return list(self._recent)
        return list(self._recent)[-limit:]

    async def lookup(self, request_id: str) -> Decision | None:
        """A decision by request id: this replica's ring, else the shared stream."""
        found = self.find(request_id)
        if found is None and self.sinks is not None:
            record = await self.sinks.lookup(request_id)
            if record is not None:
                found = Decision.from_dict(record)
        return found

    async def query(self, query: DecisionQuery) -> tuple[list[dict[str, Any]], str]:
        """Records matching ``query``, newest first, and where they came from (``redis`` or
        ``local``: the ring, without Redis or while it is down)."""
        if self.sinks is not None:
            found = await self.sinks.query(query)
            if found is not None:
                # The stream is in the order replicas wrote their batches: order by start.
                found.sort(key=lambda r: float(r.get("started_at") or 0), reverse=True)
                return found, "redis"
        matches = []
        for decision in reversed(self._recent):
            if query.since is not None and decision.started_at < query.since:
                continue
            record = decision.to_dict()
            if query.matches(record):
                matches.append(record)
                if len(matches) >= query.limit:
                    break
        return matches, "local"
