"""OpenAI chat completions (``POST /v1/chat/completions``): the internal format itself.

The body validates as the internal ``ChatRequest``; answers and stream chunks go out as they are,
with ``data: [DONE]`` at the end and the usage chunk when ``stream_options.include_usage`` asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.core.errors import GatewayError, InvalidRequest
from gateway.core.validation import describe
from gateway.policy.catalog import Catalog
from gateway.policy.model import TeamConfig
from providers.base import Completion, StreamState
from providers.schema import ChatRequest

from ..responses import error_response

DONE = b"data: [DONE]\n\n"
_NO_HEADERS: Mapping[str, str] = {}


def sse(payload: dict[str, Any]) -> bytes:
    """One SSE ``data:`` event (OpenAI names no events)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    """``body`` validated as a chat request; ``InvalidRequest`` names the first field at fault."""
    try:
        return ChatRequest.from_body(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        param = ".".join(str(p) for p in first) if first else None
        raise InvalidRequest(describe(exc), param=param) from exc


def translated_request(body: dict[str, Any]) -> ChatRequest:
    """A body another format was translated into, as the internal request. It was built from a
    validated request, so a failure here is what the internal format cannot say (a tool name
    OpenAI refuses, say): a 400 that says so."""
    try:
        return ChatRequest.from_body(body)
    except ValidationError as exc:
        raise InvalidRequest(f"The request cannot be translated: {describe(exc)}") from exc


class ChatEncoder:
    """Chunks as they are; the usage chunk when asked for; ``[DONE]``."""

    __slots__ = ("_usage",)

    def __init__(self, wants_usage: bool) -> None:
        self._usage = wants_usage

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return sse(chunk)

    def failed(self, error: GatewayError) -> bytes:
        return sse(error.to_body())

    def end(self, state: StreamState, completed: bool) -> bytes:
        if completed and self._usage:
            return sse(state.usage_chunk()) + DONE
        return DONE


class ChatExchange:
    """A chat completions request: the body is the internal request."""

    __slots__ = ("chat",)
    headers = _NO_HEADERS

    def __init__(self, chat: ChatRequest) -> None:
        self.chat = chat

    def render(self, completion: Completion) -> bytes:
        return orjson.dumps(completion.body)

    def encoder(self) -> ChatEncoder:
        return ChatEncoder(self.chat.wants_stream_usage)


class OpenAIChat:
    """The ``IngressFormat`` of ``POST /v1/chat/completions``."""

    api = "openai.chat"

    def authenticate(self, catalog: Catalog, headers: Mapping[str, str]) -> TeamConfig:
        return catalog.authenticate(headers.get("Authorization"))

    def parse(self, body: dict[str, Any], request_id: str) -> ChatExchange:
        return ChatExchange(parse_chat_request(body))

    def error_response(self, error: GatewayError, request_id: str) -> web.Response:
        return error_response(error, request_id)


OPENAI_CHAT = OpenAIChat()
