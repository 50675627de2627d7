"""Streaming to the client: always OpenAI SSE chunks, whatever the provider spoke.

Chunks are held back until the first one that carries content (text, a tool call or a finish
reason): until then nothing has reached the client, the response status is still open and an
error becomes an ordinary error response (the seam for fallback). After it, an upstream failure
ends the stream with an OpenAI-style error event; two models' output is never spliced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import web

from providers.base import Completion
from providers.pool import UpstreamStream

from .catalog import Candidate
from .context import RequestContext
from .errors import UpstreamError, UpstreamTimeout
from .responses import gateway_headers
from .runtime import Runtime

log = logging.getLogger(__name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
            return True
    return False


async def _first_content(chunks: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chunks up to and including the first that carries content (all of them if none does)."""
    held: list[dict[str, Any]] = []
    async for chunk in chunks:
        held.append(chunk)
        if _has_content(chunk):
            break
    return held


async def stream_answer(
    request: web.Request, runtime: Runtime, ctx: RequestContext, candidate: Candidate
) -> web.StreamResponse:
    deadline = runtime.settings.deadline_s
    sent = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        try:
            # The deadline covers connecting, the provider's headers and the first content.
            async with asyncio.timeout(deadline):
                upstream = await stack.enter_async_context(
                    runtime.pool.stream(candidate.target, ctx.chat)
                )
                chunks = aiter(upstream)
                held = await _first_content(chunks)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"{candidate.provider.name} sent no content within the {deadline:g} s deadline",
                provider=candidate.provider.name,
            ) from exc
        finally:
            ctx.upstream_s += time.perf_counter() - sent
        served = Completion(
            body={},
            served_model=upstream.state.served_model or candidate.target.model,
            usage=upstream.state.usage,
            finish_reason=None,
        )
        response = web.StreamResponse(
            headers={**SSE_HEADERS, **gateway_headers(ctx, served, candidate)}
        )
        await response.prepare(request)
        try:
            for chunk in held:
                await response.write(sse(chunk))
            completed = await _relay(response, chunks, upstream)
            if completed and ctx.chat.wants_stream_usage:
                await response.write(sse(upstream.state.usage_chunk()))
            await response.write(DONE)
        except ConnectionResetError:
            log.info("client %s went away mid-stream", ctx.request_id)
    return response


async def _relay(
    response: web.StreamResponse, chunks: AsyncIterator[dict[str, Any]], upstream: UpstreamStream
) -> bool:
    """Copy the rest of the stream; an upstream failure becomes an error event, not a splice.

    Returns whether the upstream stream completed.
    """
    try:
        async for chunk in chunks:
            await response.write(sse(chunk))
    except UpstreamError as exc:
        log.warning(
            "stream from %s failed after content was sent: %s", upstream.target.provider, exc.code
        )
        await response.write(sse(exc.to_body()))
        return False
    return True
