"""Streaming to the client, in the client's format, whatever the provider spoke.

Adapters turn every provider's stream into OpenAI ``chat.completion.chunk`` dicts; the request's
ingress format (``gateway.api.ingress``) encodes them for the client: OpenAI SSE chunks, Anthropic
Messages events or Responses events. Chunks are held back until the first one that carries
content (text, a tool call or a finish reason): until then nothing has reached the client, the
response status is still open and an error becomes an ordinary error response (the seam for
fallback). After it, an upstream failure ends the stream with the format's error event; two
models' output is never spliced.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.core.context import RequestContext
from gateway.core.errors import UpstreamFailure
from gateway.core.runtime import Runtime
from gateway.policy.catalog import Candidate
from gateway.quality.shadow import mirror_answer
from gateway.routing.attempts import Outcome, run_attempts
from gateway.routing.router import Plan
from gateway.telemetry.cost import charge
from providers.base import Completion, StreamState
from providers.errors import UpstreamError
from providers.pool import UpstreamStream

from .ingress.base import Exchange, StreamEncoder
from .responses import gateway_headers

log = logging.getLogger(__name__)

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


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


@dataclass(slots=True)
class _Opened:
    """A stream that produced its first content: what the client will be sent."""

    upstream: UpstreamStream
    chunks: AsyncIterator[dict[str, Any]]
    held: list[dict[str, Any]]
    stack: contextlib.AsyncExitStack


async def _open(runtime: Runtime, ctx: RequestContext, candidate: Candidate) -> Outcome[_Opened]:
    """One streaming attempt, up to the first content; a failure closes the upstream."""
    stack = contextlib.AsyncExitStack()
    try:
        upstream = await stack.enter_async_context(runtime.pool.stream(candidate.target, ctx.chat))
        chunks = aiter(upstream)
        held = await _first_content(chunks)
    except BaseException as exc:
        # Exit with the exception so the pool translates and redacts it on the way out.
        await stack.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    served = upstream.state.served_model or candidate.target.model
    return Outcome(_Opened(upstream, chunks, held, stack), served, discard=stack.aclose)


async def stream_answer(
    request: web.Request, runtime: Runtime, ctx: RequestContext, plan: Plan, exchange: Exchange
) -> web.StreamResponse:
    """Stream the first candidate that produces content; fail over invisibly before that."""
    opened, candidate = await run_attempts(
        runtime, ctx, plan, lambda candidate: _open(runtime, ctx, candidate)
    )
    async with opened.stack:
        upstream = opened.upstream
        served = Completion(
            body={},
            served_model=upstream.state.served_model or candidate.target.model,
            usage=upstream.state.usage,
            finish_reason=None,
        )
        response = web.StreamResponse(
            headers={**SSE_HEADERS, **gateway_headers(ctx, served, candidate), **exchange.headers}
        )
        await response.prepare(request)
        transcript = _Transcript()
        encoder = exchange.encoder()
        disconnected = False
        try:
            for chunk in opened.held:
                transcript.add(chunk)
                await response.write(encoder.chunk(chunk))
            ctx.decision.ttft_ms = (time.perf_counter() - ctx.started) * 1000
            completed = await _relay(response, opened.chunks, upstream, ctx, transcript, encoder)
            await response.write(encoder.end(upstream.state, completed))
        except ConnectionResetError:
            log.info("client %s went away mid-stream", ctx.request_id)
            ctx.decision.events.append({"type": "client_disconnected"})
            completed, disconnected = False, True
    if not disconnected:  # a client that left says nothing about the answer's quality
        runtime.quality.observe_text(
            ctx,
            candidate,
            text="".join(transcript.parts),
            finish_reason=upstream.state.finish_reason,
            tool_calls=transcript.tool_calls,
            stream_error=not completed,
        )
    # Whatever the upstream streamed was generated and billed, completed or not.
    charge(ctx.decision, candidate.model, upstream.state.usage)
    if completed and (answer := transcript.completion(upstream, candidate.target.model)):
        for interceptor in runtime.interceptors:
            await interceptor.after(ctx, answer)
        mirror_answer(request, runtime, ctx, answer, candidate)  # the client has it all
    return response


class _Transcript:
    """The text of a streamed answer, so that later stages (the cache) see it whole."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tool_calls = False

    def add(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("tool_calls"):
                self.tool_calls = True
            if content := delta.get("content"):
                self.parts.append(content)

    def completion(self, upstream: UpstreamStream, pinned: str) -> Completion | None:
        if self.tool_calls or not self.parts:
            return None
        state = upstream.state
        served = state.served_model or pinned
        body = {
            "id": state.id,
            "object": "chat.completion",
            "created": state.created,
            "model": served,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self.parts)},
                    "logprobs": None,
                    "finish_reason": state.finish_reason,
                }
            ],
            "usage": state.usage.to_openai(),
        }
        return Completion(body, served, state.usage, state.finish_reason)


async def replay_stream(
    request: web.Request, ctx: RequestContext, answer: Completion, exchange: Exchange
) -> web.StreamResponse:
    """A complete answer (from the cache or the knowledge base) streamed in pieces."""
    headers = {**SSE_HEADERS, **gateway_headers(ctx, answer, None), **exchange.headers}
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    encoder = exchange.encoder()
    body = answer.body
    base = {
        "id": body.get("id"),
        "object": "chat.completion.chunk",
        "created": body.get("created"),
        "model": answer.served_model,
    }
    message = body["choices"][0]["message"]
    text = message.get("content") or ""
    pieces = [text[i : i + 64] for i in range(0, len(text), 64)] or [""]
    # What the encoder's closing events read: the answer's ids, usage and finish reason.
    state = StreamState(
        id=body.get("id"),  # type: ignore[arg-type]  # None stays null, as it was stored
        model=answer.served_model,
        created=body.get("created"),  # type: ignore[arg-type]
        served_model=answer.served_model,
        usage=answer.usage,
        finish_reason=answer.finish_reason,
    )
    try:
        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
            await response.write(encoder.chunk({**base, "choices": [choice]}))
            if i == 0:
                ctx.decision.ttft_ms = (time.perf_counter() - ctx.started) * 1000
        finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": answer.finish_reason}
        await response.write(encoder.chunk({**base, "choices": [finish]}))
        await response.write(encoder.end(state, True))
    except ConnectionResetError:
        log.info("client %s went away mid-stream", ctx.request_id)
    return response


async def _relay(
    response: web.StreamResponse,
    chunks: AsyncIterator[dict[str, Any]],
    upstream: UpstreamStream,
    ctx: RequestContext,
    transcript: _Transcript,
    encoder: StreamEncoder,
) -> bool:
    """Copy the rest of the stream; an upstream failure becomes an error event, not a splice.

    Returns whether the upstream stream completed.
    """
    try:
        async for chunk in chunks:
            transcript.add(chunk)
            await response.write(encoder.chunk(chunk))
    except UpstreamError as exc:
        log.warning(
            "stream from %s failed after content was sent: %s", upstream.target.provider, exc.code
        )
        ctx.decision.events.append({"type": "stream_failed_after_content", "error": exc.code})
        await response.write(encoder.failed(UpstreamFailure(exc)))
        return False
    return True
