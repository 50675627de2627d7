"""The aiohttp application: routes, the error middleware and the lifetimes of shared objects."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cache.embedder import Embedder
from gateway.admin import api as admin
from gateway.admin import dashboard
from gateway.admin import knowledge as admin_knowledge
from gateway.admin import teams as admin_teams
from gateway.api import connections, lifecycle
from gateway.core.auth_brake import AUTH_BRAKE, AuthBrake, AuthFailuresExceeded, presented_key
from gateway.core.background import stop_tasks
from gateway.core.context import Interceptor
from gateway.core.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RequestTimedOut,
    client_error,
)
from gateway.core.runtime import LIFECYCLE, REQUEST_ID, REQUEST_STARTED, RUNTIME, Runtime
from gateway.policy.catalog import Catalog, key_digest
from gateway.policy.model import Policy
from gateway.policy.settings import Settings
from gateway.quality.monitor import QualityMonitor, quality_store
from gateway.quality.shadow import install_shadow
from gateway.routing.breakers import BreakerBoard
from gateway.routing.router import Router, breaker_keys
from gateway.routing.shared import LocalState, RedisState, SharedState
from gateway.routing.tasks import TaskClassifier
from gateway.stages.cache_sync import running_cache
from gateway.stages.knowledge import open_knowledge
from gateway.stages.knowledge_verify import Verifier
from gateway.telemetry.alerts import Alerts
from gateway.telemetry.decision_store import decision_sinks
from gateway.telemetry.decisions import DecisionLog
from gateway.telemetry.exporter_link import ExporterLink
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.observe import running_telemetry
from gateway.telemetry.timeseries import TrafficSeries
from gateway.telemetry.tracing import Tracing
from gateway.tiering.deployed import route_models
from gateway.tiering.router import TierRouter
from gateway.tiering.sync import sharing_outcomes
from providers.errors import ProviderError
from providers.pool import ProviderPool

from .count_tokens import count_tokens
from .embeddings import embeddings
from .feedback import post_feedback
from .ingress.anthropic_messages import ANTHROPIC_MESSAGES, anthropic_models
from .openapi import get_openapi
from .pipeline import chat_completions, messages, responses
from .responses import error_response

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
    request[REQUEST_STARTED] = time.perf_counter()
    request_id = f"{random.getrandbits(128):032x}"  # unique, not secret: no syscall needed
    request[REQUEST_ID] = request_id
    brake = request.app[AUTH_BRAKE]
    try:
        if brake.active and (key := presented_key(request)) is not None:
            brake.check(request, key)  # a dict lookup, and only while something is blocked
        return await handler(request)
    except AuthenticationFailed as exc:
        error: GatewayError = exc
        if (key := presented_key(request)) is not None:
            try:
                await brake.failed(request, key)
            except AuthFailuresExceeded as over:
                error = over
        return _error(request, error, request_id)
    except RequestTimedOut as exc:
        response = _error(request, exc, request_id)
        response.force_close()  # the rest of a stalled body is not waited for
        connections.skip_lingering(request)
        return response
    except GatewayError as exc:
        return _error(request, exc, request_id)
    except ConnectionResetError:
        # The client left before its answer (e.g. before a stream's first token): one line.
        log.info("request %s: the client went away before its answer", request_id)
        gone = InvalidRequest("The client closed the connection.", code="client_disconnected")
        return _error(request, gone, request_id)
    except ProviderError as exc:  # a provider error no stage translated: the one mapping
        return _error(request, client_error(exc), request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind, code = _HTTP_ERRORS.get(exc.status, ("invalid_request_error", "http_error"))
        http_error = InvalidRequest(f"{exc.reason}: {request.method} {request.path}", code=code)
        http_error.status, http_error.type = exc.status, kind
        return _error(request, http_error, request_id)
    except Exception:
        log.exception("unhandled error in request %s", request_id)
        failure = GatewayError(f"The gateway failed to handle the request (id {request_id}).")
        return _error(request, failure, request_id)


def _error(request: web.Request, error: GatewayError, request_id: str) -> web.Response:
    """The error in the shape the client's SDK reads: Anthropic's on the Messages API (and on
    ``/v1/models`` asked by an Anthropic client), OpenAI's everywhere else."""
    if _anthropic_client(request):
        return ANTHROPIC_MESSAGES.error_response(error, request_id)
    return error_response(error, request_id)


def _anthropic_client(request: web.Request) -> bool:
    path = request.path
    if path.startswith("/v1/messages"):
        return True
    return path.startswith("/v1/models") and "anthropic-version" in request.headers


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: the routes and aliases the caller's team may use (in Anthropic's
    list shape when an Anthropic client asks: it sends ``anthropic-version``)."""
    catalog = request.app[RUNTIME].catalog
    created = request.app[STARTED]
    if "anthropic-version" in request.headers:
        team = ANTHROPIC_MESSAGES.authenticate(catalog, request.headers)
        return web.json_response(anthropic_models(catalog.names_for(team), created), dumps=_dumps)
    team = catalog.authenticate(request.headers.get("Authorization"))
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "knowledge-gateway"}
        for name in catalog.names_for(team)
    ]
    return web.json_response({"object": "list", "data": data}, dumps=_dumps)


async def retrieve_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{model}``."""
    catalog = request.app[RUNTIME].catalog
    anthropic = "anthropic-version" in request.headers
    if anthropic:
        team = ANTHROPIC_MESSAGES.authenticate(catalog, request.headers)
    else:
        team = catalog.authenticate(request.headers.get("Authorization"))
    name = request.match_info["model"]
    if name not in catalog.names_for(team):
        raise ModelNotFound(f"The model {name!r} does not exist or is not available to you.")
    if anthropic:
        info = anthropic_models([name], request.app[STARTED])["data"][0]
        return web.json_response(info, dumps=_dumps)
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
    """Readiness, with each dependency's state (with a metrics key set: for that key only)."""
    runtime = request.app[RUNTIME]
    draining = request.app[LIFECYCLE].draining
    if not _operator(request, runtime.settings):
        # With a metrics key, the providers, regions and breakers are for operators only; a
        # load balancer's probe needs the status alone.
        status = "draining" if draining else "ready"
        return web.json_response({"status": status}, status=503 if draining else 200)
    providers = {
        p.name: {
            "kind": p.kind,
            "region": p.region,
            "credentials": runtime.catalog.credentials[p.name],
        }
        for p in runtime.catalog.policy.providers
    }
    redis = "not configured (per-process state)"
    if isinstance(runtime.shared, RedisState):
        redis = "ok" if await runtime.shared.ping() else "unreachable (degraded: per-process state)"
    breakers = runtime.board.states()
    checks: dict[str, Any] = {
        "providers": providers,
        "breakers_open": sorted(key for key, state in breakers.items() if state != "closed"),
        "redis": redis,
        "stages": {
            type(stage).__name__: "ok" if getattr(stage, "healthy", True) else "degraded"
            for stage in runtime.interceptors
        },
    }
    if draining:  # shutting down: send traffic elsewhere
        return web.json_response({"status": "draining", "checks": checks}, status=503, dumps=_dumps)
    # Degraded dependencies fail open, so the gateway stays ready; the body says what is off.
    return web.json_response({"status": "ready", "checks": checks}, dumps=_dumps)


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


STARTED = web.AppKey("started", int)
METRICS_SITE = web.AppKey("metrics_site", list[str])  # the address the metrics port bound
SYNC_INTERVAL_S = 0.5


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition; with ``GATEWAY_METRICS_KEY_SHA256`` set, behind that key (or
    the admin key): the series name teams, routes and spend."""
    runtime = request.app[RUNTIME]
    if not _operator(request, runtime.settings):
        raise AuthenticationFailed(
            "GET /metrics wants 'Authorization: Bearer <metrics key>'.",
            code="invalid_metrics_key",
        )
    return render_metrics(runtime)


def _operator(request: web.Request, settings: Settings) -> bool:
    """Whether the request may see operational detail: no metrics key is configured, or it
    carries that key (or the admin key) as a bearer token."""
    if not settings.metrics_key_sha256:
        return True
    scheme, _, key = (request.headers.get("Authorization") or "").partition(" ")
    digest = key_digest(key.strip())
    allowed = [d for d in (settings.metrics_key_sha256, settings.admin_key_sha256) if d]
    return scheme.lower() == "bearer" and any(hmac.compare_digest(digest, d) for d in allowed)


def render_metrics(runtime: Runtime) -> web.Response:
    """The registry in Prometheus' text format, breaker states refreshed."""
    gauge = runtime.metrics.breaker_state
    for key, state in runtime.board.states().items():
        gauge.labels(key).set({"closed": 0, "half_open": 1, "open": 2}[state])
    return web.Response(
        body=generate_latest(runtime.metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def build_runtime(
    settings: Settings,
    policy: Policy,
    environ: Mapping[str, str],
    embedder: Embedder | None = None,
) -> Runtime:
    """The objects every request uses, for ``policy``."""
    catalog = Catalog(policy, environ)
    shared: SharedState = (
        RedisState(settings.redis_url, prefix=settings.redis_prefix)
        if settings.redis_url
        else LocalState()
    )
    alerts = Alerts(settings.alert_webhook_url)
    metrics_ = Metrics()

    def breaker_changed(key: str, state: str, reason: str) -> None:
        metrics_.child(metrics_.breaker_transitions, key, state).inc()
        if state == "open":
            alerts.emit("breaker_opened", f"breaker {key} opened: {reason}", key=key, reason=reason)

    board = BreakerBoard(policy.routing.breaker, shared, on_change=breaker_changed)
    quality = QualityMonitor(
        policy.quality, alerts=alerts, metrics=metrics_, store=quality_store(settings)
    )
    exporter = ExporterLink.from_settings(settings)
    if exporter is not None:
        exporter.on_exit = metrics_.exporter_exits.inc
    return Runtime(
        settings=settings,
        catalog=catalog,
        pool=ProviderPool(catalog.endpoints),
        shared=shared,
        board=board,
        router=Router(policy.routing, board, quality=quality, demotions=quality),
        alerts=alerts,
        metrics=metrics_,
        quality=quality,
        series=TrafficSeries(),
        decisions=DecisionLog(
            settings.decision_ring_size, sinks=decision_sinks(settings, metrics_, exporter)
        ),
        tracing=Tracing.from_settings(settings, exporter),
        exporter=exporter,
        tiers=TierRouter(policy, models=route_models(settings, policy, embedder))
        if any(r.tiering for r in policy.routes)
        else None,
    )


def create_app(
    settings: Settings,
    policy: Policy,
    environ: Mapping[str, str] | None = None,
    *,
    embedder: Embedder | None = None,
) -> web.Application:
    """The gateway application for ``policy``; provider keys come from ``environ``.

    ``embedder``: share an already loaded model (tests, several apps in one process).
    """
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=settings.max_body_bytes,
    )
    app[RUNTIME] = build_runtime(
        settings, policy, os.environ if environ is None else environ, embedder
    )
    app[AUTH_BRAKE] = AuthBrake.from_settings(settings)
    app[METRICS_SITE] = []
    app[RUNTIME].embedder = embedder
    if policy.shadow is not None:
        install_shadow(app, policy.shadow, app[RUNTIME].metrics.registry)
    app[STARTED] = int(time.time())
    app.cleanup_ctx.append(_lifetimes)
    app.add_routes(
        [
            web.post("/v1/chat/completions", chat_completions),
            web.post("/v1/messages", messages),
            web.post("/v1/messages/count_tokens", count_tokens),
            web.post("/v1/responses", responses),
            web.post("/v1/embeddings", embeddings),
            web.get("/v1/models", list_models),
            web.get("/v1/models/{model}", retrieve_model),
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/openapi.json", get_openapi),
            web.post("/v1/feedback", post_feedback),
            *admin.ROUTES,
            *admin_teams.ROUTES,
            *admin_knowledge.ROUTES,
        ]
    )
    dashboard.setup(app)
    lifecycle.install(app, os.environ if environ is None else environ)
    connections.install(app, settings.header_timeout_s)
    if settings.metrics_port is not None:
        app.cleanup_ctx.append(_metrics_port)
    return app


async def _metrics_port(app: web.Application) -> AsyncIterator[None]:
    """``/metrics`` alone on ``GATEWAY_METRICS_PORT`` (same host), for a Prometheus that
    reaches only that port; the main port's ``/metrics`` keeps its key."""
    runtime = app[RUNTIME]
    settings = runtime.settings
    assert settings.metrics_port is not None

    async def scrape(request: web.Request) -> web.Response:
        return render_metrics(runtime)

    side = web.Application()
    side.router.add_get("/metrics", scrape)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.metrics_port)
    await site.start()
    app[METRICS_SITE].extend(f"{host}:{port}" for host, port, *_ in runner.addresses)
    yield
    await runner.cleanup()


def knowledge_verifier(runtime: Runtime) -> Verifier:
    """The knowledge stage's verifier: the current pool, candidates no breaker blocks."""

    def usable(candidate: Any) -> bool:
        board = runtime.board
        return not any(board.blocked(key) for key in breaker_keys(candidate))

    return Verifier(lambda: runtime.pool, usable)


async def _lifetimes(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    policy = runtime.catalog.policy
    await runtime.pool.start()
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_telemetry(runtime))
        stages: list[Interceptor] = []
        caching = policy.cache is not None and policy.cache.enabled
        examples = {name: t.examples for name, t in policy.task_types.items() if t.examples}
        builtin = any(p.kind == "builtin" for p in policy.providers)  # serves /v1/embeddings
        wants_embedder = (
            caching or policy.knowledge is not None or examples or runtime.tiers or builtin
        )
        if wants_embedder and runtime.embedder is None:
            runtime.embedder = await asyncio.to_thread(make_embedder, runtime.settings)
            stack.push_async_callback(runtime.embedder.close)
        if examples and runtime.embedder is not None:
            classifier = policy.task_classifier
            runtime.tasks = await TaskClassifier.build(
                runtime.embedder,
                examples,
                min_confidence=classifier.min_confidence,
                temperature=classifier.temperature,
                min_similarity=classifier.min_similarity,
            )
        if caching and policy.cache is not None and runtime.embedder is not None:
            # First: a cached answer (already built on the knowledge it needed) ends the request.
            stages.append(
                await stack.enter_async_context(
                    running_cache(policy.cache, runtime.settings, runtime.embedder, runtime.metrics)
                )
            )
        knowledge = await open_knowledge(
            runtime.settings,
            policy,
            runtime.embedder,
            metrics=runtime.metrics,
            verifier=knowledge_verifier(runtime),
        )
        if knowledge is not None:
            stack.push_async_callback(knowledge.close)
            stages.append(knowledge)
        runtime.interceptors = tuple(stages)
        settings = runtime.settings
        if settings.redis_url and settings.tier_outcome_stream and runtime.embedder is not None:
            # Tier outcomes shared by the replicas (a reload may create the tier router later).
            runtime.tier_sync = await stack.enter_async_context(
                sharing_outcomes(
                    lambda: runtime.tiers,
                    settings.redis_url,
                    model=runtime.embedder.name,
                    dim=runtime.embedder.dim,
                    prefix=settings.redis_prefix,
                    metrics=runtime.metrics,
                )
            )
        await stack.enter_async_context(
            runtime.quality.running(lambda: runtime.pool, lambda: runtime.catalog)
        )
        sync = asyncio.create_task(_sync_shared_state(runtime), name="shared-state-sync")
        yield
        await stop_tasks([sync])
    await runtime.board.drain()
    await app[AUTH_BRAKE].close()
    await runtime.pool.close()
    await runtime.alerts.close()
    await runtime.shared.close()


def make_embedder(settings: Settings) -> Embedder:
    """The embedding model the cache and the knowledge base share."""
    from cache.embedders import make_embedder as build

    return build(settings.embedder, settings.data_dir)


async def _sync_shared_state(runtime: Runtime) -> None:
    """Pull other replicas' breaker transitions and embargoes, twice a second."""
    while True:
        catalog = runtime.catalog  # a reload may swap it
        await runtime.board.sync(catalog.breaker_keys, catalog.provider_names)
        await asyncio.sleep(SYNC_INTERVAL_S)
