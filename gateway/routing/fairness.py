"""Fair shares between teams: a team's requests in flight, and its place in the pools' queues.

``TeamConcurrency.admit`` wraps one request: a team at its ``max_in_flight.total`` (per replica,
see ``gateway/policy/fairness_config.py``) is refused with a 429 before any work is done; an
admitted request waits for provider connection slots in its team's own queue, capped per
provider by ``max_in_flight.per_provider`` (``providers.slots``: round-robin across teams, so
one team's backlog does not hold up another's first request).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager

from gateway.core.errors import RateLimitExceeded
from gateway.policy.model import TeamConfig
from providers.slots import Share, use_share


def admitted(concurrency: TeamConcurrency | None, team: TeamConfig) -> AbstractContextManager[None]:
    """``concurrency.admit(team)``, or nothing when the app has no governance installed."""
    return contextlib.nullcontext() if concurrency is None else concurrency.admit(team)


class TeamConcurrency:
    """Requests in flight per team on this replica."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def in_flight(self, team: str) -> int:
        return self._in_flight.get(team, 0)

    @contextlib.contextmanager
    def admit(self, team: TeamConfig) -> Iterator[None]:
        """Hold one of ``team``'s in-flight places for the body; 429 when none is free."""
        limit = team.max_in_flight
        name = team.name
        count = self._in_flight.get(name, 0)
        if limit is not None and limit.total is not None and count >= limit.total:
            error = RateLimitExceeded(
                f"Team {name!r} already has {count} requests in flight, its max_in_flight; "
                "retry when one of them has finished.",
                kind="requests",
                retry_after=1.0,
            )
            error.code = "concurrency_limit_exceeded"
            raise error
        self._in_flight[name] = count + 1
        try:
            with use_share(Share(name, limit.per_provider if limit is not None else {})):
                yield
        finally:
            left = self._in_flight[name] - 1
            if left:
                self._in_flight[name] = left
            else:
                del self._in_flight[name]
