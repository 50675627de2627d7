"""The admin API: run-time cache settings, invalidation, recent decisions.

Behind an admin key (``Authorization: Bearer <admin key>``, its SHA-256 in
``GATEWAY_ADMIN_KEY_SHA256``); without one configured the admin API answers 403. Cache settings
written here live in Redis and reach every replica within seconds.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson
from aiohttp import web

from cache.store import CacheUnavailable

from .cache_config import validate_override
from .caching import CacheStage
from .errors import AuthenticationFailed, GatewayError, InvalidRequest, ModelNotAllowed
from .runtime import RUNTIME, Runtime


class CacheNotConfigured(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "cache_not_configured"


def _authorise(request: web.Request) -> Runtime:
    runtime = request.app[RUNTIME]
    expected = runtime.settings.admin_key_sha256
    if not expected:
        raise ModelNotAllowed(
            "The admin API is disabled: set GATEWAY_ADMIN_KEY_SHA256.", code="admin_disabled"
        )
    scheme, _, key = (request.headers.get("Authorization") or "").partition(" ")
    digest = hashlib.sha256(key.strip().encode()).hexdigest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(digest, expected):
        raise AuthenticationFailed("Admin key required.", code="invalid_admin_key")
    return runtime


def _cache(runtime: Runtime) -> CacheStage:
    for stage in runtime.interceptors:
        if isinstance(stage, CacheStage):
            return stage
    raise CacheNotConfigured("This gateway's policy has no cache section.")


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def _json_response(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


async def get_cache_config(request: web.Request) -> web.Response:
    """``GET /admin/cache/config``: the policy's cache section and the run-time overrides."""
    stage = _cache(_authorise(request))
    try:
        runtime_overrides = await stage.store.get_config()
    except CacheUnavailable as exc:
        raise GatewayError(
            f"The cache store is unavailable: {exc}", code="cache_unavailable"
        ) from exc
    return _json_response({"policy": stage.config.model_dump(), "runtime": runtime_overrides})


async def put_cache_config(request: web.Request) -> web.Response:
    """``PUT /admin/cache/config`` ``{"scope": "default" | "team:<t>" | "route:<r>", "values"}``.

    ``values``: the overrides (an object), or null to remove them.
    """
    stage = _cache(_authorise(request))
    body = await _json(request)
    scope = body.get("scope")
    if not isinstance(scope, str) or not (
        scope == "default" or scope.startswith(("team:", "route:"))
    ):
        raise InvalidRequest(
            "scope must be 'default', 'team:<name>' or 'route:<name>'.", param="scope"
        )
    values = body.get("values")
    if values is not None:
        if not isinstance(values, dict):
            raise InvalidRequest("values must be an object or null.", param="values")
        try:
            values = validate_override(values)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="values") from exc
    try:
        await stage.store.set_config(scope, values)
        stage.runtime = await stage.store.get_config()  # this replica at once; others sync
    except CacheUnavailable as exc:
        raise GatewayError(
            f"The cache store is unavailable: {exc}", code="cache_unavailable"
        ) from exc
    return _json_response({"scope": scope, "values": values})


async def invalidate_cache(request: web.Request) -> web.Response:
    """``POST /admin/cache/invalidate`` ``{"team": ..., "route": ...}`` or ``{"all": true}``."""
    stage = _cache(_authorise(request))
    body = await _json(request)
    team, route = body.get("team"), body.get("route")
    if not (team or route or body.get("all") is True):
        raise InvalidRequest('Name a team, a route, or send {"all": true}.')
    try:
        removed = await stage.store.invalidate(team=team, route=route, chunks=None)
    except CacheUnavailable as exc:
        raise GatewayError(
            f"The cache store is unavailable: {exc}", code="cache_unavailable"
        ) from exc
    if team is None and route is None:
        stage.indexes.clear()
    return _json_response({"removed": removed})


async def recent_decisions(request: web.Request) -> web.Response:
    """``GET /admin/decisions?limit=N``: the latest decision records, newest last."""
    runtime = _authorise(request)
    try:
        limit = max(1, min(1000, int(request.query.get("limit", "100"))))
    except ValueError as exc:
        raise InvalidRequest("limit must be a number.", param="limit") from exc
    return _json_response([d.to_dict() for d in runtime.decisions.recent(limit)])


ROUTES = [
    web.get("/admin/cache/config", get_cache_config),
    web.put("/admin/cache/config", put_cache_config),
    web.post("/admin/cache/invalidate", invalidate_cache),
    web.get("/admin/decisions", recent_decisions),
]
