"""The admin API: run-time cache settings, invalidation, recent decisions, quality, tiering.

Behind an admin key (``Authorization: Bearer <admin key>``, its SHA-256 in
``GATEWAY_ADMIN_KEY_SHA256``); without one configured the admin API answers 403. Cache settings
written here live in Redis and reach every replica within seconds.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from aiohttp import web

from cache.store import CacheUnavailable
from gateway.core.body import read_body
from gateway.core.errors import (
    AuthenticationFailed,
    CacheNotConfigured,
    GatewayError,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
)
from gateway.core.runtime import RUNTIME, Runtime
from gateway.policy.cache_config import validate_override
from gateway.policy.catalog import key_digest
from gateway.quality.shadow import SHADOW
from gateway.stages.cache import CacheStage
from gateway.telemetry.decision_store import DecisionQuery


def _authorise(request: web.Request) -> Runtime:
    runtime = request.app[RUNTIME]
    expected = runtime.settings.admin_key_sha256
    if not expected:
        raise ModelNotAllowed(
            "The admin API is disabled: set GATEWAY_ADMIN_KEY_SHA256.", code="admin_disabled"
        )
    scheme, _, key = (request.headers.get("Authorization") or "").partition(" ")
    digest = key_digest(key.strip())
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
        body = orjson.loads(await read_body(request, request.app[RUNTIME].settings.body_timeout_s))
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
    """``GET /admin/decisions?team=&route=&status=&source=&since=&limit=``: the latest matching
    decision records, newest last; every replica's when Redis holds the decision stream
    (``x-gateway-decisions: redis``), else this replica's (``local``)."""
    runtime = _authorise(request)
    query = DecisionQuery.from_params(request.query)
    records, origin = await runtime.decisions.query(query)
    response = _json_response(records[::-1])
    response.headers["x-gateway-decisions"] = origin
    return response


async def get_decision(request: web.Request) -> web.Response:
    """``GET /admin/decisions/{request_id}``: one decision record, from any replica."""
    runtime = _authorise(request)
    request_id = request.match_info["request_id"]
    decision = await runtime.decisions.lookup(request_id)
    if decision is None:
        raise ModelNotFound(f"No decision record for {request_id!r}.", code="decision_not_found")
    return _json_response(decision.to_dict())


async def get_quality(request: web.Request) -> web.Response:
    """``GET /admin/quality``: scores per (model, version, task type), detectors, regressions."""
    return _json_response(_authorise(request).quality.snapshot())


async def promote_quality(request: web.Request) -> web.Response:
    """``POST /admin/quality/promote`` ``{"model", "task_type"}``: end a regression's demotion."""
    runtime = _authorise(request)
    body = await _json(request)
    model, task_type = body.get("model"), body.get("task_type")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model (a model alias) is required.", param="model")
    if not isinstance(task_type, str) or not task_type:
        raise InvalidRequest("task_type is required.", param="task_type")
    promoted = await runtime.quality.promote(model, task_type)
    return _json_response({"model": model, "task_type": task_type, "promoted": promoted})


async def get_tiering(request: web.Request) -> web.Response:
    """``GET /admin/tiering``: each tiered route's knobs, outcomes, feature models and recent
    decisions on this replica, and whether outcomes are shared with the others."""
    runtime = _authorise(request)
    sync = runtime.tier_sync
    return _json_response(
        {
            "enabled": runtime.tiers is not None,
            "routes": runtime.tiers.snapshot() if runtime.tiers is not None else {},
            "sharing": {
                "enabled": sync is not None,
                "healthy": sync.healthy if sync is not None else None,
                "replica": sync.replica if sync is not None else None,
                "queued": sync.queued if sync is not None else 0,
            },
        }
    )


async def get_shadow(request: web.Request) -> web.Response:
    """``GET /admin/shadow``: shadow traffic's comparison per (task type, candidate)."""
    _authorise(request)
    shadow = request.app.get(SHADOW)
    if shadow is None:
        return _json_response({"enabled": False, "config": None, "comparisons": []})
    return _json_response(
        {
            "enabled": True,
            "config": shadow.config.model_dump(),
            "in_flight": shadow.in_flight,
            "comparisons": shadow.report(),
        }
    )


ROUTES = [
    web.get("/admin/shadow", get_shadow),
    web.get("/admin/cache/config", get_cache_config),
    web.put("/admin/cache/config", put_cache_config),
    web.post("/admin/cache/invalidate", invalidate_cache),
    web.get("/admin/decisions", recent_decisions),
    web.get("/admin/quality", get_quality),
    web.get("/admin/tiering", get_tiering),
    web.post("/admin/quality/promote", promote_quality),
    web.get("/admin/decisions/{request_id}", get_decision),
]
