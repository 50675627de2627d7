"""A loopback fake of Anthropic's Messages API (``POST /v1/messages``).

Formats follow Anthropic's API reference and the official Python SDK's types: ``message`` objects
with ``text`` / ``tool_use`` content blocks and ``usage`` {input_tokens, output_tokens, cache_*};
SSE streams of named events (``event: <name>`` + ``data: <json>`` + blank line): message_start,
content_block_start, ping, content_block_delta (text_delta / input_json_delta),
content_block_stop, message_delta (stop_reason, cumulative usage), message_stop; error bodies
``{"type": "error", "error": {"type", "message"}, "request_id"}`` with the documented status per
type (529 ``overloaded_error``), a ``request-id`` header on every answer and ``retry-after`` on
429. A safety block is a refusal: ``stop_reason`` "refusal" with no content.

Like the real API it rejects a body without ``model``, ``max_tokens`` or ``messages``, and
sampling parameters under ``anthropic-version`` 2026-10-21 or later.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from .base import (
    Behaviour,
    Blocked,
    CutStream,
    Fail,
    FakeProvider,
    Malformed,
    Ok,
    cut_connection,
    json_response,
    malformed_response,
    words,
)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
SAMPLING_FREE_VERSION = "2026-10-21"


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def anthropic_error(status: int, message: str, request_id: str) -> dict[str, Any]:
    """Anthropic's documented error body."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class FakeAnthropic(FakeProvider):
    """Serves ``POST /v1/messages`` with the shared behaviours in Anthropic's formats."""

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self.messages)]

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self.record(request)
        rid = _request_id()
        problem = self._invalid(body, request.headers.get("anthropic-version", ""))
        if problem:
            return self._error(400, problem, rid)
        assert isinstance(body, dict)
        return await self.render(request, body, behaviour, rid)

    @staticmethod
    def _invalid(body: Any, version: str) -> str | None:
        if not isinstance(body, dict):
            return "There was an issue with the format of your request: invalid JSON"
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return f"{field}: Field required"
        if version >= SAMPLING_FREE_VERSION:
            for field in ("temperature", "top_p", "top_k"):
                if field in body:
                    return f"{field}: Extra inputs are not permitted"
        return None

    def _error(
        self, status: int, message: str, rid: str, retry_after: float | None = None
    ) -> web.Response:
        headers = {"request-id": rid}
        if status == 429:
            # Anthropic sends retry-after (whole seconds) with every rate-limit answer.
            headers["retry-after"] = f"{retry_after if retry_after is not None else 1:g}"
        return json_response(anthropic_error(status, message, rid), status, headers)

    async def render(
        self, request: web.Request, body: dict[str, Any], behaviour: Behaviour, rid: str
    ) -> web.StreamResponse:
        if isinstance(behaviour, Fail):
            return self._error(behaviour.status, behaviour.message, rid, behaviour.retry_after)
        if isinstance(behaviour, Malformed):
            return malformed_response()
        stream = bool(body.get("stream"))
        if isinstance(behaviour, CutStream):
            return await self.cut_stream(request, body, behaviour, rid)
        if isinstance(behaviour, Blocked):
            if stream:
                return await self.refusal_stream(request, body, rid)
            return json_response(self.refusal(body), headers={"request-id": rid})
        assert isinstance(behaviour, Ok)
        if stream:
            return await self.stream(request, body, behaviour, rid)
        return json_response(self.message(body, behaviour), headers={"request-id": rid})

    # -- bodies ----------------------------------------------------------------------------
    @staticmethod
    def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    @staticmethod
    def _tool_use(body: dict[str, Any], ok: Ok) -> dict[str, Any] | None:
        if ok.tool_call is None or not body.get("tools"):
            return None
        name, arguments = ok.tool_call
        return {
            "type": "tool_use",
            "id": f"toolu_{uuid.uuid4().hex[:24]}",
            "name": name,
            "input": arguments,
        }

    def _envelope(
        self, body: dict[str, Any], model: str | None, content: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model or body.get("model", ""),
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(0, 0),
        }

    def message(self, body: dict[str, Any], ok: Ok) -> dict[str, Any]:
        tool_use = self._tool_use(body, ok)
        content = [tool_use] if tool_use else [{"type": "text", "text": ok.text}]
        message = self._envelope(body, ok.served_model, content)
        message["stop_reason"] = "tool_use" if tool_use else STOP_REASONS[ok.finish]
        message["usage"] = self._usage(ok.prompt_tokens, ok.completion_tokens)
        return message

    def refusal(self, body: dict[str, Any]) -> dict[str, Any]:
        message = self._envelope(body, None, [])
        message["stop_reason"] = "refusal"
        message["stop_details"] = {"type": "refusal", "category": None, "explanation": None}
        message["usage"] = self._usage(11, 1)
        return message

    # -- streams ---------------------------------------------------------------------------
    async def _open(
        self, request: web.Request, body: dict[str, Any], model: str | None, rid: str, tokens: int
    ) -> web.StreamResponse:
        """Send the response headers, message_start and a ping."""
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": rid,
            },
        )
        await response.prepare(request)
        start = self._envelope(body, model, [])
        start["usage"] = self._usage(tokens, 1)
        await response.write(sse("message_start", {"type": "message_start", "message": start}))
        await response.write(sse("ping", {"type": "ping"}))
        return response

    @staticmethod
    async def _finish(
        response: web.StreamResponse, stop_reason: str, usage: dict[str, Any]
    ) -> web.StreamResponse:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": usage,
        }
        await response.write(sse("message_delta", delta))
        await response.write(sse("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        return response

    @staticmethod
    async def _text_block(response: web.StreamResponse, text: str, *, close: bool) -> None:
        start = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        await response.write(sse("content_block_start", start))
        for piece in words(text):
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            await response.write(sse("content_block_delta", delta))
        if close:
            await response.write(
                sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            )

    async def stream(
        self, request: web.Request, body: dict[str, Any], ok: Ok, rid: str
    ) -> web.StreamResponse:
        response = await self._open(request, body, ok.served_model, rid, ok.prompt_tokens)
        tool_use = self._tool_use(body, ok)
        if tool_use:
            block = {**tool_use, "input": {}}
            await response.write(
                sse(
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": block},
                )
            )
            arguments = orjson.dumps(tool_use["input"]).decode()
            for i in range(0, len(arguments), 8):
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": arguments[i : i + 8]},
                }
                await response.write(sse("content_block_delta", delta))
            await response.write(
                sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            )
            stop_reason = "tool_use"
        else:
            await self._text_block(response, ok.text, close=True)
            stop_reason = STOP_REASONS[ok.finish]
        # message_delta usage is cumulative: the input count repeats, the output count is final.
        usage = {
            "input_tokens": ok.prompt_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": ok.completion_tokens,
        }
        return await self._finish(response, stop_reason, usage)

    async def refusal_stream(
        self, request: web.Request, body: dict[str, Any], rid: str
    ) -> web.StreamResponse:
        response = await self._open(request, body, None, rid, 11)
        return await self._finish(response, "refusal", {"output_tokens": 1})

    async def cut_stream(
        self, request: web.Request, body: dict[str, Any], cut: CutStream, rid: str
    ) -> web.StreamResponse:
        if not body.get("stream"):
            # A non-streamed answer cut short: headers promise a body that never completes.
            response = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": "application/json",
                    "Content-Length": "500",
                    "request-id": rid,
                },
            )
            await response.prepare(request)
            await response.write(b'{"id": "msg_cut", "type": "message", "role": "assis')
            return await cut_connection(request, response)
        response = await self._open(request, body, None, rid, 11)
        await self._text_block(response, cut.text, close=False)
        return await cut_connection(request, response)
