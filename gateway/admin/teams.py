"""Admin endpoints for teams (add, rotate a key, list) and policy reload.

Behind the admin key like the rest of the admin API. A new key is returned once, in the answer
that made it; the gateway keeps only its SHA-256. Listings never show keys or hashes.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.core.errors import (
    InvalidPolicy,
    InvalidRequest,
    TeamExists,
    TeamNotFound,
    TeamsUnavailable,
)
from gateway.core.runtime import LIFECYCLE, RUNTIME
from gateway.policy.model import PolicyError
from gateway.policy.teams import TeamError, TeamStoreUnavailable, public_view

from .api import _authorise, _json, _json_response
from .reload import reload_policy

log = logging.getLogger(__name__)


async def list_teams(request: web.Request) -> web.Response:
    """``GET /admin/teams``: every team, from the file or added at run time; no keys."""
    runtime = _authorise(request)
    assert runtime.teams is not None
    overlay = runtime.teams.overlay
    teams = [
        public_view(
            team,
            "admin" if team.name in overlay and "routes" in overlay[team.name] else "policy",
        )
        for team in runtime.catalog.policy.teams
    ]
    return _json_response({"teams": teams})


async def add_team(request: web.Request) -> web.Response:
    """``POST /admin/teams`` ``{"name", "routes"?, "regions"?, "requests_per_minute"?, ...}``:
    the team and its key (shown this once)."""
    runtime = _authorise(request)
    assert runtime.teams is not None
    spec = await _json(request)
    spec.setdefault("routes", ["*"])
    try:
        team, key = await runtime.teams.add(request.app[LIFECYCLE].policy, spec)
    except TeamError as exc:
        if "already exists" in str(exc):
            raise TeamExists(str(exc), param="name") from exc
        raise InvalidRequest(f"Invalid team: {exc}") from exc
    except TeamStoreUnavailable as exc:
        raise TeamsUnavailable(f"The team store is unavailable: {exc}") from exc
    swap_catalog(request.app)
    log.info("team %s added through the admin API", team.name)
    return _json_response({"team": public_view(team, "admin"), "key": key})


async def rotate_key(request: web.Request) -> web.Response:
    """``POST /admin/teams/{name}/rotate``: a new key; the old one stops working everywhere."""
    runtime = _authorise(request)
    assert runtime.teams is not None
    name = request.match_info["name"]
    try:
        key = await runtime.teams.rotate(request.app[LIFECYCLE].policy, name)
    except KeyError as exc:
        raise TeamNotFound(f"No team named {name!r}.", param="name") from exc
    except TeamError as exc:
        raise InvalidRequest(f"Invalid team: {exc}") from exc
    except TeamStoreUnavailable as exc:
        raise TeamsUnavailable(f"The team store is unavailable: {exc}") from exc
    swap_catalog(request.app)
    log.info("team %s key rotated through the admin API", name)
    return _json_response({"team": name, "key": key})


async def post_reload(request: web.Request) -> web.Response:
    """``POST /admin/reload``: re-read the policy file; a bad one changes nothing."""
    _authorise(request)
    try:
        result = await reload_policy(request.app)
    except PolicyError as exc:
        log.error("reload refused, the running policy stays: %s", exc)
        raise InvalidPolicy(f"Reload refused, the running policy stays: {exc}") from exc
    return _json_response(result)


ROUTES = [
    web.get("/admin/teams", list_teams),
    web.post("/admin/teams", add_team),
    web.post("/admin/teams/{name}/rotate", rotate_key),
    web.post("/admin/reload", post_reload),
]


def swap_catalog(app: web.Application) -> None:
    """Rebuild the catalog after this replica changed the overlay (others follow by sync)."""
    runtime = app[RUNTIME]
    assert runtime.teams is not None
    runtime.catalog = runtime.teams.catalog(app[LIFECYCLE].policy)
