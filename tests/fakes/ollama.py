"""A loopback fake of Ollama's native API: ``POST /api/chat``, ``POST /api/embed`` and the probes
clients send.

Formats follow Ollama's API docs (docs/api.md, docs/api/streaming.mdx, docs/api/errors.mdx):
a non-streamed answer is one JSON object with ``message``, ``done: true``, ``done_reason``, the
token counts (``prompt_eval_count``, ``eval_count``) and timings in nanoseconds; a streamed one
is ``application/x-ndjson``, one object per line, the last with ``done: true`` and the counts;
``stream`` defaults to true when the request leaves it out. Tool calls carry their arguments as a
JSON object and arrive whole in one line. Errors are ``{"error": "message"}``, before the answer
with the HTTP status, after it as one more NDJSON line under the 200 already sent.
``/api/embed`` takes ``input`` (a string or a list) and answers ``{"model", "embeddings",
"total_duration", "load_duration", "prompt_eval_count"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from .base import (
    Behaviour,
    Blocked,
    CutStream,
    Fail,
    FakeProvider,
    Hang,
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

NDJSON = "application/x-ndjson"
VERSION = "0.12.6"

_NO_MODERATION = (
    "Ollama has no moderation layer: there is no Blocked answer to fake "
    "(the conformance suite skips the safety-block case for Ollama)"
)


@dataclass(frozen=True)
class ErrorMidStream:
    """Ollama-only behaviour: a streamed answer that fails after the 200 with an error line.

    Non-streamed requests get the error as a 500 ``{"error": ...}``, as Ollama answers them.
    """

    text: str = "Hello from the"
    message: str = "an error was encountered while running the model"


def _created_at() -> str:
    # Ollama writes RFC 3339 with sub-second digits and a Z (Go's time.Time in UTC).
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj) + b"\n"


def _check_not_blocked(behaviour: Behaviour) -> None:
    while isinstance(behaviour, Hang):
        behaviour = behaviour.then
    if isinstance(behaviour, Blocked):
        raise NotImplementedError(_NO_MODERATION)


class FakeOllama(FakeProvider):
    """Serves ``POST /api/chat``, ``POST /api/embed``, ``GET /api/tags``, ``GET /api/version``
    and ``GET /``."""

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/chat", self.chat),
            web.post("/api/embed", self.embed),
            web.get("/api/tags", self.tags),
            web.get("/api/version", self.version),
            web.get("/", self.root),
        ]

    def push(self, *behaviours: Behaviour | ErrorMidStream) -> None:
        """Script behaviours; ``Blocked`` raises ``NotImplementedError`` (no moderation layer)."""
        for behaviour in behaviours:
            if not isinstance(behaviour, ErrorMidStream):
                _check_not_blocked(behaviour)
        self.script.extend(behaviours)  # type: ignore[arg-type]

    # -- probes ----------------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return json_response({"version": VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        seen = {
            str(r.body["model"])
            for r in self.requests
            if isinstance(r.body, dict) and r.body.get("model")
        }
        names = sorted(seen or {"llama3.2:latest"})
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": "2025-01-01T00:00:00.000000Z",
                "size": 2019393189,
                "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                "details": {
                    "parent_model": "",
                    "format": "gguf",
                    "family": "llama",
                    "families": ["llama"],
                    "parameter_size": "3.2B",
                    "quantization_level": "Q4_K_M",
                },
            }
            for name in names
        ]
        return json_response({"models": models})

    # -- embed -----------------------------------------------------------------------------
    async def embed(self, request: web.Request) -> web.Response:
        body, behaviour = await self.record(request)
        if not isinstance(body, dict):
            return json_response({"error": "invalid character in request body"}, 400)
        if not body.get("model"):
            return json_response({"error": "model is required"}, 400)
        if isinstance(behaviour, Fail):
            headers = {}
            if behaviour.retry_after is not None:
                headers["Retry-After"] = str(behaviour.retry_after)
            return json_response({"error": behaviour.message}, behaviour.status, headers)
        if not isinstance(behaviour, Ok):
            return malformed_response()
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return json_response({"error": "invalid input type"}, 400)
        dimensions = body.get("dimensions")
        dim = dimensions if isinstance(dimensions, int) and dimensions > 0 else 8
        return json_response(
            {
                "model": self._model(body, behaviour),
                "embeddings": [fake_vector(t, dim) for t in texts],
                "total_duration": 14_143_917,
                "load_duration": 1_019_500,
                "prompt_eval_count": sum(fake_token_count(t) for t in texts),
            }
        )

    # -- chat ------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self.record(request)
        # Ollama's own validation messages (server/routes.go).
        if body is None:
            return json_response({"error": "missing request body"}, 400)
        if not isinstance(body, dict):
            return json_response({"error": "invalid character in request body"}, 400)
        if not body.get("model"):
            return json_response({"error": "model is required"}, 400)
        return await self.render(request, body, behaviour)

    async def render(
        self, request: web.Request, body: dict[str, Any], behaviour: Behaviour | ErrorMidStream
    ) -> web.StreamResponse:
        # Ollama streams unless the request says "stream": false.
        stream = body.get("stream", True) is not False
        if isinstance(behaviour, ErrorMidStream):
            if stream:
                return await self.stream_error(request, body, behaviour)
            return json_response({"error": behaviour.message}, 500)
        _check_not_blocked(behaviour)  # a Blocked default: the handler fails loudly (HTTP 500)
        if isinstance(behaviour, Fail):
            headers = {}
            if behaviour.retry_after is not None:
                headers["Retry-After"] = str(behaviour.retry_after)
            return json_response({"error": behaviour.message}, behaviour.status, headers)
        if isinstance(behaviour, Malformed):
            return malformed_response()
        if isinstance(behaviour, CutStream):
            return await self.cut_stream(request, body, behaviour, stream)
        assert isinstance(behaviour, Ok)
        if stream:
            return await self.stream(request, body, behaviour)
        return json_response(self.completion(body, behaviour))

    def _model(self, body: dict[str, Any], ok: Ok | None = None) -> str:
        return (ok.served_model if ok else None) or str(body.get("model", ""))

    def _tool_calls(self, body: dict[str, Any], ok: Ok) -> list[dict[str, Any]]:
        if ok.tool_call is None or not body.get("tools"):
            return []
        name, arguments = ok.tool_call
        return [{"function": {"name": name, "arguments": arguments}}]

    def _final_fields(self, ok: Ok, done_reason: str) -> dict[str, Any]:
        eval_duration = 9_000_000 * max(ok.completion_tokens, 1)
        prompt_eval_duration = 1_200_000 * max(ok.prompt_tokens, 1)
        load_duration = 2_154_458
        fields: dict[str, Any] = {
            "done": True,
            "done_reason": done_reason,
            "total_duration": load_duration + prompt_eval_duration + eval_duration + 1_000_000,
            "load_duration": load_duration,
            "prompt_eval_count": ok.prompt_tokens,
            "prompt_eval_duration": prompt_eval_duration,
            "eval_count": ok.completion_tokens,
            "eval_duration": eval_duration,
        }
        # Go's omitempty drops zero counts (a fully cached prompt has no prompt_eval_count).
        return {k: v for k, v in fields.items() if v != 0}

    def completion(self, body: dict[str, Any], ok: Ok) -> dict[str, Any]:
        tool_calls = self._tool_calls(body, ok)
        message: dict[str, Any] = {"role": "assistant", "content": "" if tool_calls else ok.text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        done_reason = "stop" if tool_calls else ok.finish
        return {
            "model": self._model(body, ok),
            "created_at": _created_at(),
            "message": message,
            **self._final_fields(ok, done_reason),
        }

    def _partial(self, model: str, message: dict[str, Any]) -> bytes:
        return _line(
            {
                "model": model,
                "created_at": _created_at(),
                "message": {"role": "assistant", **message},
                "done": False,
            }
        )

    async def stream(
        self, request: web.Request, body: dict[str, Any], ok: Ok
    ) -> web.StreamResponse:
        response = await start_stream(request, NDJSON)
        model = self._model(body, ok)
        tool_calls = self._tool_calls(body, ok)
        if tool_calls:
            await response.write(self._partial(model, {"content": "", "tool_calls": tool_calls}))
        else:
            for piece in words(ok.text):
                await response.write(self._partial(model, {"content": piece}))
        final = {
            "model": model,
            "created_at": _created_at(),
            "message": {"role": "assistant", "content": ""},
            **self._final_fields(ok, "stop" if tool_calls else ok.finish),
        }
        await response.write(_line(final))
        await response.write_eof()
        return response

    async def cut_stream(
        self, request: web.Request, body: dict[str, Any], cut: CutStream, stream: bool
    ) -> web.StreamResponse:
        if not stream:
            # A non-streamed answer cut short: headers promise a body that never completes.
            response = web.StreamResponse(
                status=200,
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Content-Length": "400",
                },
            )
            await response.prepare(request)
            await response.write(b'{"model":"' + self._model(body).encode() + b'","created_at":"')
            return await cut_connection(request, response)
        response = await start_stream(request, NDJSON)
        model = self._model(body)
        for piece in words(cut.text):
            await response.write(self._partial(model, {"content": piece}))
        return await cut_connection(request, response)

    async def stream_error(
        self, request: web.Request, body: dict[str, Any], error: ErrorMidStream
    ) -> web.StreamResponse:
        """A stream that fails after the 200: some content, then an ``{"error"}`` line."""
        response = await start_stream(request, NDJSON)
        model = self._model(body)
        for piece in words(error.text):
            await response.write(self._partial(model, {"content": piece}))
        await response.write(_line({"error": error.message}))
        await response.write_eof()
        return response
