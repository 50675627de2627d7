"""A loopback fake of the Gemini Developer API's ``generateContent`` and ``streamGenerateContent``.

Formats follow https://ai.google.dev/api/generate-content: a ``GenerateContentResponse`` with
``candidates[].content.parts``, ``finishReason``, ``usageMetadata``, ``modelVersion`` and
``responseId``; ``?alt=sse`` streams send one complete response per ``data: <json>\\r\\n\\r\\n``
event and no ``[DONE]`` (without ``alt=sse`` the stream is one JSON array). Errors are Google's
``{"error": {"code", "message", "status", "details"}}``; a 429 carries ``google.rpc.RetryInfo``.
A blocked prompt is HTTP 200 with ``promptFeedback.blockReason`` and no candidates.
``:batchEmbedContents`` (https://ai.google.dev/api/embeddings) answers
``{"embeddings": [{"values": [...]}]}``, one per request, honouring ``outputDimensionality``.
"""

from __future__ import annotations

import base64
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
    fake_vector,
    json_response,
    malformed_response,
    start_stream,
    words,
)

# HTTP status -> google.rpc.Code name, as Google's JSON error bodies spell it.
_GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_ACTIONS = frozenset({"generateContent", "streamGenerateContent", "batchEmbedContents"})


def gemini_error(status: int, message: str, retry_after: float | None = None) -> dict[str, Any]:
    """Google's error body for ``status``; a 429 lists the quota hit and when to retry."""
    grpc_status = _GRPC_STATUS.get(status, "UNKNOWN" if status >= 500 else "FAILED_PRECONDITION")
    error: dict[str, Any] = {"code": status, "message": message, "status": grpc_status}
    if status == 429:
        details: list[dict[str, Any]] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generativelanguage.googleapis.com/"
                        "generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                        "quotaValue": "10",
                    }
                ],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [
                    {
                        "description": "Learn more about Gemini API quotas",
                        "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                    }
                ],
            },
        ]
        if retry_after is not None:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{retry_after:g}s",
                }
            )
        error["details"] = details
    return {"error": error}


def api_key_invalid_error() -> dict[str, Any]:
    """What Google answers (HTTP 400) for a key it does not know."""
    message = "API key not valid. Please pass a valid API key."
    return {
        "error": {
            "code": 400,
            "message": message,
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                },
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": message,
                },
            ],
        }
    }


def _response_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


class FakeGemini(FakeProvider):
    """Serves ``POST /{version}/models/{model}:generateContent`` and ``:streamGenerateContent``."""

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{version}/models/{model_action}", self.handle)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self.record(request)
        model, _, action = request.match_info["model_action"].partition(":")
        if action not in _ACTIONS:
            return json_response(gemini_error(404, f"Method {action!r} not found."), 404)
        if not isinstance(body, dict):
            return json_response(gemini_error(400, "Invalid JSON payload received."), 400)
        if action == "batchEmbedContents":
            return self.embed(body, behaviour)
        stream = action == "streamGenerateContent"
        return await self.render(request, body, model, stream, behaviour)

    async def render(
        self,
        request: web.Request,
        body: dict[str, Any],
        model: str,
        stream: bool,
        behaviour: Behaviour,
    ) -> web.StreamResponse:
        if isinstance(behaviour, Fail):
            error = gemini_error(behaviour.status, behaviour.message, behaviour.retry_after)
            return json_response(error, behaviour.status)
        if isinstance(behaviour, Malformed):
            return malformed_response()
        if isinstance(behaviour, CutStream):
            return await self.cut_stream(request, model, stream, behaviour)
        if isinstance(behaviour, Blocked):
            chunks = [self.blocked(model)]
        else:
            assert isinstance(behaviour, Ok)
            chunks = (
                self.chunks(body, model, behaviour)
                if stream
                else [self.answer(body, model, behaviour)]
            )
        if not stream:
            return json_response(chunks[0])
        if request.query.get("alt") != "sse":
            return json_response(chunks)  # without alt=sse Google streams one JSON array
        response = await start_stream(request, "text/event-stream")
        for chunk in chunks:
            await response.write(_sse(chunk))
        await response.write_eof()
        return response

    def embed(self, body: dict[str, Any], behaviour: Behaviour) -> web.Response:
        """``batchEmbedContents``: one ``ContentEmbedding`` per ``EmbedContentRequest``."""
        if isinstance(behaviour, Fail):
            error = gemini_error(behaviour.status, behaviour.message, behaviour.retry_after)
            return json_response(error, behaviour.status)
        if not isinstance(behaviour, Ok):
            return malformed_response()
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return json_response(gemini_error(400, "* requests: must not be empty"), 400)
        embeddings = []
        for request in requests:
            parts = (request.get("content") or {}).get("parts") or []
            text = "".join(str(part.get("text", "")) for part in parts)
            dim = request.get("outputDimensionality")
            embeddings.append({"values": fake_vector(text, dim if isinstance(dim, int) else 8)})
        return json_response({"embeddings": embeddings})

    # -- bodies ----------------------------------------------------------------------------
    def _function_call(self, body: dict[str, Any], ok: Ok) -> dict[str, Any] | None:
        declared = any(tool.get("functionDeclarations") for tool in body.get("tools") or [])
        if ok.tool_call is None or not declared:
            return None
        name, arguments = ok.tool_call
        return {"functionCall": {"name": name, "args": arguments}}

    def _usage(self, ok: Ok, *, final: bool = True) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "promptTokenCount": ok.prompt_tokens,
            "totalTokenCount": ok.prompt_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": ok.prompt_tokens}],
        }
        if final:
            usage["candidatesTokenCount"] = ok.completion_tokens
            usage["totalTokenCount"] = ok.prompt_tokens + ok.completion_tokens
        return usage

    def _envelope(
        self, model: str, response_id: str, ok: Ok, candidate: dict[str, Any], final: bool
    ) -> dict[str, Any]:
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(ok, final=final),
            "modelVersion": ok.served_model or model,
            "responseId": response_id,
        }

    def answer(self, body: dict[str, Any], model: str, ok: Ok) -> dict[str, Any]:
        """A complete ``GenerateContentResponse``."""
        call = self._function_call(body, ok)
        candidate = {
            "content": {"parts": [call or {"text": ok.text}], "role": "model"},
            # Gemini reports STOP after function calls too.
            "finishReason": "STOP" if call or ok.finish == "stop" else "MAX_TOKENS",
            "index": 0,
        }
        return self._envelope(model, _response_id(), ok, candidate, final=True)

    def chunks(self, body: dict[str, Any], model: str, ok: Ok) -> list[dict[str, Any]]:
        """The streamed form: one response per text piece, the last with finishReason."""
        response_id = _response_id()
        call = self._function_call(body, ok)
        parts: list[dict[str, Any]] = [call] if call else [{"text": w} for w in words(ok.text)]
        finish = "STOP" if call or ok.finish == "stop" else "MAX_TOKENS"
        out = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}, "index": 0}
            if last:
                candidate["finishReason"] = finish
            out.append(self._envelope(model, response_id, ok, candidate, final=last))
        return out

    def blocked(self, model: str) -> dict[str, Any]:
        """A prompt refused before generation: no candidates, only promptFeedback."""
        ratings = [
            {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"},
        ]
        return {
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": ratings},
            "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11},
            "modelVersion": model,
            "responseId": _response_id(),
        }

    async def cut_stream(
        self, request: web.Request, model: str, stream: bool, cut: CutStream
    ) -> web.StreamResponse:
        if not stream:
            # A non-streamed answer cut short: headers promise a body that never completes.
            response = web.StreamResponse(
                status=200, headers={"Content-Type": "application/json", "Content-Length": "500"}
            )
            await response.prepare(request)
            await response.write(b'{"candidates": [{"content": {"parts": [{"text": "Hel')
            return await cut_connection(request, response)
        response = await start_stream(request, "text/event-stream")
        response_id = _response_id()
        for piece in words(cut.text):
            candidate = {"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0}
            await response.write(_sse(self._envelope(model, response_id, Ok(), candidate, False)))
        return await cut_connection(request, response)
