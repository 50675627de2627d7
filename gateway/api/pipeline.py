"""The request pipeline, top to bottom in one place.

auth -> validate -> resolve route -> interceptors (cache, knowledge) -> plan candidates ->
attempts with fallback -> respond -> interceptors see the answer -> decision record.

The client's wire format is a parameter (``gateway.api.ingress``): OpenAI chat completions,
Anthropic Messages and OpenAI Responses all become the internal request at the top and their
answer is rendered at the bottom; everything in between is the same path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from gateway.core.body import check_depth, read_body
from gateway.core.context import Interceptor, RequestContext
from gateway.core.decision import Decision
from gateway.core.errors import (
    GatewayError,
    InvalidRequest,
    NoEligibleProvider,
    PayloadTooLarge,
)
from gateway.core.runtime import REQUEST_ID, REQUEST_STARTED, RUNTIME, Runtime
from gateway.policy.catalog import Candidate, Route
from gateway.policy.model import RoutingConfig, TeamConfig
from gateway.quality.shadow import mirror_answer
from gateway.routing.attempts import Outcome, run_attempts
from gateway.routing.diagnostics import log_failure
from gateway.routing.fairness import admitted
from gateway.routing.router import allowed_regions
from gateway.routing.tasks import apply_task_type
from gateway.telemetry.cost import charge
from gateway.telemetry.observe import complete_decision, observe_request
from gateway.tiering.router import apply_tier, settle_tier
from providers.base import Completion
from providers.schema import ChatRequest

from .ingress.anthropic_messages import ANTHROPIC_MESSAGES
from .ingress.base import Exchange, IngressFormat
from .ingress.openai_chat import OPENAI_CHAT
from .ingress.openai_responses import OPENAI_RESPONSES
from .responses import completion_response
from .streaming import replay_stream, stream_answer

_TASK_MAX = 64

log = logging.getLogger(__name__)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    return await handle(request, OPENAI_CHAT)


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages`` (Anthropic Messages)."""
    return await handle(request, ANTHROPIC_MESSAGES)


async def responses(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses`` (OpenAI Responses, stateless)."""
    return await handle(request, OPENAI_RESPONSES)


async def handle(request: web.Request, ingress: IngressFormat) -> web.StreamResponse:
    """One chat request in the client's format ``ingress``, through the whole pipeline."""
    runtime = request.app[RUNTIME].snapshot()  # a reload mid-request does not change it
    catalog = runtime.catalog
    team = ingress.authenticate(catalog, request.headers)
    body = await read_json_body(request, runtime.settings.max_body_bytes)
    exchange = ingress.parse(body, request[REQUEST_ID])
    chat = exchange.chat
    route = catalog.resolve_route(team, chat.model)
    ctx = new_context(request, runtime, team, route, chat, ingress.api)
    try:
        # The team's limits (429 when over); a well-formed, allowed request is what counts.
        if runtime.limits is not None:
            ctx.headers.update(await runtime.limits.admit(team))
        # Its place among the team's requests in flight (429 when at max_in_flight) and its
        # team's queue for provider slots.
        with admitted(runtime.concurrency, team):
            explicit = "x-gateway-task" in request.headers
            await apply_task_type(ctx, runtime.tasks, catalog, explicit=explicit)
            response = await _answer(request, runtime, ctx, exchange)
    except GatewayError as exc:
        failed(ctx, exc)
        raise
    except asyncio.CancelledError:
        # The client went away (or the server is stopping): the upstream call was cancelled
        # with the handler, which closed its connection.
        ctx.decision.status, ctx.decision.error = 499, "client_disconnected"
        raise
    finally:
        settle(runtime, ctx, chat)
    return response


def new_context(
    request: web.Request,
    runtime: Runtime,
    team: TeamConfig,
    route: Route,
    chat: ChatRequest,
    api: str,
) -> RequestContext:
    """The request's context: task type, deadline, allowed regions, a fresh decision record."""
    task_type = _task_type(request, route.task_type)
    deadline_s = _deadline_s(request, runtime.catalog.policy.routing)
    requested = _requested_regions(request)
    ctx = RequestContext(
        request_id=request[REQUEST_ID],
        started=request[REQUEST_STARTED],
        team=team,
        route=route,
        chat=chat,
        task_type=task_type,
        deadline=asyncio.get_running_loop().time() + deadline_s,
        deadline_s=deadline_s,
        decision=Decision(
            request_id=request[REQUEST_ID],
            team=team.name,
            route=route.name,
            task_type=task_type,
            strategy=route.strategy,
            stream=chat.stream,
            api=api,
        ),
        request_headers=request.headers,
        allowed_regions=allowed_regions(team.regions, requested),
        embedder=runtime.embedder,
    )
    ctx.notes["requested_regions"] = requested
    return ctx


def failed(ctx: RequestContext, exc: GatewayError) -> None:
    """Note a failed request in its record; the regions the prompt reached go on the error; a
    5xx is logged."""
    ctx.decision.status, ctx.decision.error = exc.status, exc.code
    if isinstance(exc, NoEligibleProvider) and not ctx.decision.candidates:
        ctx.decision.candidates = exc.verdicts
    if exc.status >= 500:
        log_failure(ctx, exc)  # one line with every attempt and skip (the caller sees its own)
    if regions := ctx.decision.regions_sent:
        exc.extra_headers["x-gateway-regions"] = ",".join(regions)


def settle(runtime: Runtime, ctx: RequestContext, chat: ChatRequest) -> None:
    """The end of every request, answered or not: its record, and its tokens and cost charged
    to the team."""
    _record(runtime, ctx, chat)
    if runtime.limits is not None:
        used = ctx.decision
        runtime.limits.charge(ctx.team, used.prompt_tokens + used.completion_tokens, used.cost_usd)


async def _answer(
    request: web.Request, runtime: Runtime, ctx: RequestContext, exchange: Exchange
) -> web.StreamResponse:
    for interceptor in runtime.interceptors:
        if (answer := await _before(runtime, interceptor, ctx)) is not None:
            ctx.decision.served_model = answer.served_model
            ctx.decision.source = ctx.headers.get("x-gateway-source", "cache")
            if ctx.chat.stream:
                return await replay_stream(request, ctx, answer, exchange)
            return completion_response(ctx, answer, None, exchange)
    plan = runtime.router.plan(
        ctx.route,
        ctx.team,
        ctx.chat,
        task_type=ctx.task_type,
        regions=ctx.notes["requested_regions"],
        strategy=ctx.route.strategy,
    )
    ctx.decision.candidates = plan.verdicts
    plan = await apply_tier(runtime.tiers, ctx, plan, runtime.metrics)
    if ctx.chat.stream:
        return await stream_answer(request, runtime, ctx, plan, exchange)

    async def complete(candidate: Candidate) -> Outcome[Completion]:
        completion = await runtime.pool.complete(candidate.target, ctx.chat)
        return Outcome(completion, completion.served_model, wire_s=completion.wire_s)

    completion, candidate = await run_attempts(runtime, ctx, plan, complete)
    charge(ctx.decision, candidate.model, completion.usage)
    runtime.quality.observe_completion(ctx, candidate, completion)
    for interceptor in runtime.interceptors:
        await interceptor.after(ctx, completion)
    mirror_answer(request, runtime, ctx, completion, candidate)  # background; never awaited
    return completion_response(ctx, completion, candidate, exchange)


async def _before(
    runtime: Runtime, interceptor: Interceptor, ctx: RequestContext
) -> Completion | None:
    """A stage's lookup within its time budget: the smaller of ``stage_timeout_s`` and half of
    what is left of the deadline. A stage slowed down by its store or an embedder backlog is cut
    off and the request goes on without it (fail-open), so it is neither late nor lost."""
    loop = asyncio.get_running_loop()
    now = loop.time()
    budget = min(runtime.settings.stage_timeout_s, (ctx.deadline - now) / 2)
    timeout = asyncio.timeout_at(now + max(budget, 0.0))
    try:
        async with timeout:
            return await interceptor.before(ctx)
    except TimeoutError:
        if not timeout.expired():
            raise  # the stage's own timeout, not its budget
        stage = type(interceptor).__name__
        ctx.decision.events.append({"type": "stage_timeout", "stage": stage, "budget_s": budget})
        runtime.metrics.child(runtime.metrics.stage_timeouts, stage).inc()
        log.warning(
            "request %s: %s took over %.3f s; going on without it", ctx.request_id, stage, budget
        )
        return None


def _record(runtime: Runtime, ctx: RequestContext, chat: ChatRequest) -> None:
    decision = ctx.decision
    complete_decision(ctx, chat)  # timings, cache/knowledge verdicts, prompt hash or text
    settle_tier(runtime.tiers, ctx)
    runtime.decisions.record(decision)
    runtime.quality.observe_request(decision)
    runtime.series.observe(
        decision, cache=ctx.headers.get("x-gateway-cache"), knowledge=ctx.notes.get("knowledge")
    )
    observe_request(runtime, ctx, chat)  # Prometheus metrics and, when configured, the trace


def _task_type(request: web.Request, default: str) -> str:
    task = request.headers.get("x-gateway-task")
    if task is None:
        return default
    task = task.strip()
    if not task or len(task) > _TASK_MAX or not task.replace("-", "").replace("_", "").isalnum():
        raise InvalidRequest(
            "x-gateway-task must be a short name (letters, digits, '-', '_').",
            param="x-gateway-task",
        )
    return task


def _deadline_s(request: web.Request, routing: RoutingConfig) -> float:
    raw = request.headers.get("x-gateway-deadline-ms")
    if raw is None:
        return routing.default_deadline_s
    try:
        value = float(raw) / 1000
    except ValueError:
        value = -1.0
    if not 0 < value <= routing.max_deadline_s:
        raise InvalidRequest(
            f"x-gateway-deadline-ms must be a number of milliseconds in "
            f"(0, {routing.max_deadline_s * 1000:g}].",
            param="x-gateway-deadline-ms",
        )
    return value


def _requested_regions(request: web.Request) -> list[str] | None:
    raw = request.headers.get("x-gateway-regions")
    if raw is None:
        return None
    return [r.strip() for r in raw.split(",") if r.strip()]


async def read_json_body(request: web.Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, within ``limit`` bytes, the body timeout and
    ``MAX_JSON_DEPTH`` levels of nesting."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"The request body is {request.content_length} bytes; the limit is {limit}."
        )
    try:
        raw = await read_body(request, request.app[RUNTIME].settings.body_timeout_s)
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"The request body is over the {limit}-byte limit.") from exc
    if len(raw) > limit:
        raise PayloadTooLarge(f"The request body is {len(raw)} bytes; the limit is {limit}.")
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The request body is not valid JSON: {exc}", code="invalid_json"
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    check_depth(body, raw)
    return body
