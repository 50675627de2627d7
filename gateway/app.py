"""The aiohttp application: routes, the error middleware and the lifetimes of shared objects."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import orjson
from aiohttp import web

from providers.pool import ProviderPool

from .catalog import Catalog
from .errors import GatewayError, InvalidRequest, ModelNotFound
from .pipeline import chat_completions
from .policy import Policy
from .responses import error_response
from .runtime import REQUEST_ID, RUNTIME, Runtime
from .settings import Settings

log = logging.getLogger(__name__)

# aiohttp's own HTTP errors (unknown path, wrong method) in the OpenAI error shape.
_HTTP_ERRORS: dict[int, tuple[str, str]] = {
    404: ("invalid_request_error", "unknown_url"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes ``{"error": {...}}`` with the request id; never a traceback."""
    request_id = uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc, request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind, code = _HTTP_ERRORS.get(exc.status, ("invalid_request_error", "http_error"))
        http_error = InvalidRequest(f"{exc.reason}: {request.method} {request.path}", code=code)
        http_error.status, http_error.type = exc.status, kind
        return error_response(http_error, request_id)
    except Exception:
        log.exception("unhandled error in request %s", request_id)
        failure = GatewayError(f"The gateway failed to handle the request (id {request_id}).")
        return error_response(failure, request_id)


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the routes and aliases the caller's team may use."""
    catalog = request.app[RUNTIME].catalog
    team = catalog.authenticate(request.headers.get("Authorization"))
    created = request.app[STARTED]
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "knowledge-gateway"}
        for name in catalog.names_for(team)
    ]
    return web.json_response({"object": "list", "data": data}, dumps=_dumps)


async def retrieve_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{model}``."""
    catalog = request.app[RUNTIME].catalog
    team = catalog.authenticate(request.headers.get("Authorization"))
    name = request.match_info["model"]
    if name not in catalog.names_for(team):
        raise ModelNotFound(f"The model {name!r} does not exist or is not available to you.")
    return web.json_response(
        {
            "id": name,
            "object": "model",
            "created": request.app[STARTED],
            "owned_by": "knowledge-gateway",
        },
        dumps=_dumps,
    )


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness, with each dependency's state."""
    runtime = request.app[RUNTIME]
    providers = {
        p.name: {
            "kind": p.kind,
            "region": p.region,
            "credentials": runtime.catalog.credentials[p.name],
        }
        for p in runtime.catalog.policy.providers
    }
    checks = {
        "providers": providers,
        "redis": "not configured (in-process state)"
        if not runtime.settings.redis_url
        else "configured",
        "qdrant": "not configured" if not runtime.settings.qdrant_url else "configured",
    }
    return web.json_response({"status": "ready", "checks": checks}, dumps=_dumps)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


STARTED = web.AppKey("started", int)


def create_app(
    settings: Settings, policy: Policy, environ: Mapping[str, str] | None = None
) -> web.Application:
    """The gateway application for ``policy``; provider keys come from ``environ``."""
    catalog = Catalog(policy, os.environ if environ is None else environ)
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[RUNTIME] = Runtime(settings=settings, catalog=catalog, pool=ProviderPool(catalog.endpoints))
    app[STARTED] = int(time.time())
    app.cleanup_ctx.append(_pool_lifetime)
    app.add_routes(
        [
            web.post("/v1/chat/completions", chat_completions),
            web.get("/v1/models", list_models),
            web.get("/v1/models/{model}", retrieve_model),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
        ]
    )
    return app


async def _pool_lifetime(app: web.Application) -> AsyncIterator[None]:
    pool = app[RUNTIME].pool
    await pool.start()
    yield
    await pool.close()
