"""Choosing which candidate of a route gets the request.

Candidates are filtered before any call: a team's data never goes to a region its policy does not
allow. Fallback across candidates, breakers and strategies build on ``eligible``.
"""

from __future__ import annotations

from .catalog import Candidate, Route
from .errors import NoEligibleProvider
from .policy import TeamConfig


def eligible(route: Route, team: TeamConfig) -> list[Candidate]:
    """The route's candidates in order, less those outside the team's allowed regions."""
    if team.regions is None:
        return list(route.candidates)
    allowed = team.regions
    kept = [c for c in route.candidates if c.region in allowed]
    if not kept:
        regions = sorted({c.region for c in route.candidates})
        raise NoEligibleProvider(
            f"No candidate of route {route.name!r} is in the regions team {team.name!r} may use "
            f"({', '.join(allowed)}); the route's candidates are in {', '.join(regions)}."
        )
    return kept
