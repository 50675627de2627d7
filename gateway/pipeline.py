"""The request pipeline, top to bottom in one place.

auth -> validate -> resolve route -> interceptors (cache, knowledge) -> choose candidate ->
dispatch -> respond -> interceptors see the answer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from providers.base import Completion
from providers.schema import ChatRequest

from .catalog import Candidate
from .context import RequestContext
from .errors import InvalidRequest, PayloadTooLarge, UpstreamTimeout
from .responses import completion_response
from .router import eligible
from .runtime import REQUEST_ID, RUNTIME, Runtime
from .streaming import stream_answer
from .validation import describe


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    started = time.perf_counter()
    runtime = request.app[RUNTIME]
    catalog = runtime.catalog
    team = catalog.authenticate(request.headers.get("Authorization"))
    chat = parse_chat_request(await read_json_body(request, runtime.settings.max_body_bytes))
    route = catalog.resolve_route(team, chat.model)
    ctx = RequestContext(
        request_id=request.get(REQUEST_ID) or uuid.uuid4().hex,
        started=started,
        team=team,
        route=route,
        chat=chat,
    )
    for interceptor in runtime.interceptors:
        if (answer := await interceptor.before(ctx)) is not None:
            return completion_response(ctx, answer, None)
    candidate = eligible(route, team)[0]
    if chat.stream:
        return await stream_answer(request, runtime, ctx, candidate)
    completion = await dispatch(runtime, ctx, candidate)
    for interceptor in runtime.interceptors:
        await interceptor.after(ctx, completion)
    return completion_response(ctx, completion, candidate)


async def dispatch(runtime: Runtime, ctx: RequestContext, candidate: Candidate) -> Completion:
    """One non-streaming attempt within the request's deadline."""
    sent = time.perf_counter()
    try:
        async with asyncio.timeout(runtime.settings.deadline_s):
            return await runtime.pool.complete(candidate.target, ctx.chat)
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"{candidate.provider.name} did not answer within the "
            f"{runtime.settings.deadline_s:g} s deadline",
            provider=candidate.provider.name,
        ) from exc
    finally:
        ctx.upstream_s += time.perf_counter() - sent


async def read_json_body(request: web.Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, within ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"The request body is {request.content_length} bytes; the limit is {limit}."
        )
    try:
        raw = await request.read()
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
    return body


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    try:
        return ChatRequest.from_body(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        param = ".".join(str(p) for p in first) if first else None
        raise InvalidRequest(describe(exc), param=param) from exc
