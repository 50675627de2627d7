"""Fair shares between teams: a team's requests in flight, and its place in the pools' queues.

``TeamConcurrency.admit`` wraps one request: a team at its ``max_in_flight.total`` (per replica,
see ``gateway/policy/fairness_config.py``) is refused with a 429 before any work is done; an
admitted request waits for provider connection slots in its team's own queue, capped per
provider by ``max_in_flight.per_provider`` (``providers.slots``: round-robin across teams, so
one team's backlog does not hold up another's first request).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from contextvars import Token

from gateway.core.errors import RateLimitExceeded
from gateway.policy.model import TeamConfig
from providers.slots import Share, enter_share, leave_share


def admitted(concurrency: TeamConcurrency | None, team: TeamConfig) -> AbstractContextManager[None]:
    """``concurrency.admit(team)``, or nothing when the app has no governance installed."""
    return contextlib.nullcontext() if concurrency is None else concurrency.admit(team)


class TeamConcurrency:
    """Requests in flight per team on this replica."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}
        self._shares: dict[str, Share] = {}  # per team, rebuilt when its limit changes

    def in_flight(self, team: str) -> int:
        return self._in_flight.get(team, 0)

    def admit(self, team: TeamConfig) -> _Admitted:
        """``with``: hold one of ``team``'s in-flight places for the body; 429 when none is
        free. Inside, provider slots are waited for in the team's queue."""
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
        caps = limit.per_provider if limit is not None else {}
        share = self._shares.get(name)
        if share is None or share.caps != caps:  # a reload may change the team's caps
            share = self._shares[name] = Share(name, caps)
        return _Admitted(self._in_flight, name, share)


class _Admitted:
    """One admitted request (a class, not a generator: it is on every request's path)."""

    __slots__ = ("counts", "name", "share", "token")

    def __init__(self, counts: dict[str, int], name: str, share: Share) -> None:
        self.counts = counts
        self.name = name
        self.share = share
        self.token: Token[Share] | None = None

    def __enter__(self) -> None:
        self.counts[self.name] = self.counts.get(self.name, 0) + 1
        self.token = enter_share(self.share)

    def __exit__(self, *exc: object) -> None:
        if self.token is not None:
            leave_share(self.token)
        left = self.counts[self.name] - 1
        if left:
            self.counts[self.name] = left
        else:
            del self.counts[self.name]
