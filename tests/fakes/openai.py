"""A loopback fake of OpenAI's chat completions and embeddings APIs (and so of vLLM, xAI,
Moonshot, llama.cpp).

Formats follow OpenAI's API reference: ``chat.completion`` objects, ``chat.completion.chunk`` SSE
events ending in ``data: [DONE]``, the usage-only chunk for ``stream_options.include_usage``,
``{"error": {"message", "type", "param", "code"}}`` bodies and ``retry-after`` on 429; for
``POST /v1/embeddings`` a ``list`` of ``embedding`` objects (floats, or little-endian float32
base64 when ``encoding_format`` says so, as the official SDK asks by default) with
``usage.prompt_tokens``.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
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
    fake_token_count,
    fake_vector,
    json_response,
    malformed_response,
    start_stream,
    words,
)

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind, code = _ERROR_TYPES.get(status, ("server_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeOpenAI(FakeProvider):
    """Serves ``POST /v1/chat/completions``, ``POST /v1/embeddings`` and ``GET /v1/models``."""

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/embeddings", self.embeddings),
            web.get("/v1/models", self.models),
        ]

    async def embeddings(self, request: web.Request) -> web.Response:
        body, behaviour = await self.record(request)
        if not isinstance(body, dict):
            return json_response(openai_error(400, "We could not parse the JSON body."), 400)
        if isinstance(behaviour, Fail):
            headers = {}
            if behaviour.retry_after is not None:
                headers["retry-after"] = str(behaviour.retry_after)
            return json_response(
                openai_error(behaviour.status, behaviour.message), behaviour.status, headers
            )
        if isinstance(behaviour, Malformed | CutStream | Blocked):
            return malformed_response()
        assert isinstance(behaviour, Ok)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            message = "'$.input' is invalid. Please check the API reference."
            return json_response(openai_error(400, message), 400)
        dimensions = body.get("dimensions")
        dim = dimensions if isinstance(dimensions, int) and dimensions > 0 else 8
        data = []
        for index, text in enumerate(texts):
            vector = fake_vector(text, dim)
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(fake_token_count(t) for t in texts)
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": behaviour.served_model or body.get("model", ""),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    async def models(self, request: web.Request) -> web.Response:
        return json_response(
            {
                "object": "list",
                "data": [
                    {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "openai"}
                ],
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self.record(request)
        if not isinstance(body, dict):
            return json_response(openai_error(400, "We could not parse the JSON body."), 400)
        return await self.render(request, body, behaviour)

    async def render(
        self, request: web.Request, body: dict[str, Any], behaviour: Behaviour
    ) -> web.StreamResponse:
        if isinstance(behaviour, Fail):
            headers = {"x-request-id": f"req_{uuid.uuid4().hex}"}
            if behaviour.retry_after is not None:
                headers["retry-after"] = str(behaviour.retry_after)
            return json_response(
                openai_error(behaviour.status, behaviour.message), behaviour.status, headers
            )
        if isinstance(behaviour, Malformed):
            return malformed_response()
        if isinstance(behaviour, Blocked):
            return json_response(
                {
                    "error": {
                        "message": "Your request was rejected as a result of our safety system.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "content_policy_violation",
                    }
                },
                400,
            )
        stream = bool(body.get("stream"))
        if isinstance(behaviour, CutStream):
            return await self.cut_stream(request, body, behaviour)
        assert isinstance(behaviour, Ok)
        if stream:
            return await self.stream(request, body, behaviour)
        return json_response(self.completion(body, behaviour))

    def _tool_call(self, body: dict[str, Any], ok: Ok) -> dict[str, Any] | None:
        if ok.tool_call is None or not body.get("tools"):
            return None
        name, arguments = ok.tool_call
        return {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()},
        }

    def _usage(self, ok: Ok) -> dict[str, Any]:
        return {
            "prompt_tokens": ok.prompt_tokens,
            "completion_tokens": ok.completion_tokens,
            "total_tokens": ok.prompt_tokens + ok.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    def completion(self, body: dict[str, Any], ok: Ok) -> dict[str, Any]:
        tool_call = self._tool_call(body, ok)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if tool_call else ok.text,
            "refusal": None,
            "annotations": [],
        }
        if tool_call:
            message["tool_calls"] = [tool_call]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": ok.served_model or body.get("model", ""),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if tool_call else ok.finish,
                }
            ],
            "usage": self._usage(ok),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def _chunk(self, cid: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    async def stream(
        self, request: web.Request, body: dict[str, Any], ok: Ok
    ) -> web.StreamResponse:
        response = await start_stream(request, "text/event-stream; charset=utf-8")
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        model = ok.served_model or body.get("model", "")
        await response.write(self._chunk(cid, model, {"role": "assistant", "content": ""}, None))
        tool_call = self._tool_call(body, ok)
        if tool_call:
            first = {
                "index": 0,
                "id": tool_call["id"],
                "type": "function",
                "function": {"name": tool_call["function"]["name"], "arguments": ""},
            }
            await response.write(self._chunk(cid, model, {"tool_calls": [first]}, None))
            arguments = tool_call["function"]["arguments"]
            for i in range(0, len(arguments), 8):
                part = {"index": 0, "function": {"arguments": arguments[i : i + 8]}}
                await response.write(self._chunk(cid, model, {"tool_calls": [part]}, None))
            finish = "tool_calls"
        else:
            for piece in words(ok.text):
                await response.write(self._chunk(cid, model, {"content": piece}, None))
                if ok.delay_s:
                    await asyncio.sleep(ok.delay_s)
            finish = ok.finish
        await response.write(self._chunk(cid, model, {}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage_chunk = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": self._usage(ok),
            }
            await response.write(b"data: " + orjson.dumps(usage_chunk) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def cut_stream(
        self, request: web.Request, body: dict[str, Any], cut: CutStream
    ) -> web.StreamResponse:
        if not body.get("stream"):
            # A non-streamed answer cut short: headers promise a body that never completes.
            response = web.StreamResponse(
                status=200, headers={"Content-Type": "application/json", "Content-Length": "500"}
            )
            await response.prepare(request)
            await response.write(b'{"id": "chatcmpl-cut", "object": "chat.comp')
            return await cut_connection(request, response)
        response = await start_stream(request, "text/event-stream; charset=utf-8")
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        model = body.get("model", "")
        await response.write(self._chunk(cid, model, {"role": "assistant", "content": ""}, None))
        for piece in words(cut.text):
            await response.write(self._chunk(cid, model, {"content": piece}, None))
        return await cut_connection(request, response)
