"""Anthropic Messages stream events, from the internal chunk stream.

The sequence is Anthropic's: ``message_start``; for each content block ``content_block_start``,
its ``content_block_delta`` events (``text_delta`` or ``input_json_delta``) and
``content_block_stop`` (a ``ping`` after the first block's start); then ``message_delta`` with
the ``stop_reason`` and the cumulative usage, and ``message_stop``. A failure after content was
sent is one ``event: error`` and nothing after it.

Usage: the input count is known only at the end for most providers (OpenAI sends it in the last
chunk), so ``message_start`` says 0 and ``message_delta`` carries both counts, which the official
SDKs take as the totals (its usage fields are cumulative).
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from gateway.core.errors import GatewayError
from providers.base import StreamState

# Anthropic's error type for each HTTP status the gateway answers with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
# The internal finish reason -> Anthropic's stop_reason.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def error_type(error: GatewayError) -> str:
    """Anthropic's ``error.type`` for a gateway error."""
    if error.code == "no_eligible_provider":
        return "api_error"  # a policy outcome, not a load one: retrying will not help
    return _ERROR_TYPES.get(error.status, "api_error")


def event(name: str, payload: dict[str, Any]) -> bytes:
    """One named SSE event, as Anthropic frames them."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


_PING = event("ping", {"type": "ping"})


class MessagesEncoder:
    """Turns one answer's internal chunks into Anthropic Messages events."""

    def __init__(self, message_id: str) -> None:
        self._id = message_id
        self._started = False
        self._pinged = False
        self._blocks = 0  # content blocks started so far
        self._open: int | None = None  # the index of the block not yet stopped
        self._open_kind = ""  # "text" or "tool_use"
        self._tools: dict[int, int] = {}  # internal tool-call index -> block index
        self._finish: str | None = None

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start(str(chunk.get("model") or "")))
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if text := delta.get("content"):
                if self._open_kind != "text":
                    self._start(out, {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}, self._open))
            for call in delta.get("tool_calls") or ():
                self._tool_call(call, out)
            if finish := choice.get("finish_reason"):
                self._finish = finish
        return b"".join(out)

    def failed(self, error: GatewayError) -> bytes:
        error_body = {"type": error_type(error), "message": error.message}
        return event("error", {"type": "error", "error": error_body})

    def end(self, state: StreamState, completed: bool) -> bytes:
        if not completed:
            return b""  # the error event was the last word
        out: list[bytes] = []
        if not self._started:
            out.append(self._message_start(state.served_model or state.model))
        self._stop(out)
        finish = self._finish or state.finish_reason or "stop"
        usage = state.usage
        stop_reason = STOP_REASONS.get(finish, "end_turn")
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {
                "input_tokens": usage.prompt_tokens,
                "output_tokens": usage.completion_tokens,
            },
        }
        out.append(event("message_delta", message_delta))
        out.append(event("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    # -- blocks ----------------------------------------------------------------------------
    def _message_start(self, model: str) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message})

    def _start(self, out: list[bytes], block: dict[str, Any]) -> None:
        self._stop(out)
        index = self._open = self._blocks
        self._blocks += 1
        self._open_kind = block["type"]
        start = {"type": "content_block_start", "index": index, "content_block": block}
        out.append(event("content_block_start", start))
        if not self._pinged:
            self._pinged = True
            out.append(_PING)

    def _stop(self, out: list[bytes]) -> None:
        if self._open is not None:
            stop = {"type": "content_block_stop", "index": self._open}
            out.append(event("content_block_stop", stop))
            self._open, self._open_kind = None, ""

    @staticmethod
    def _delta(delta: dict[str, Any], index: int | None) -> bytes:
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        return event("content_block_delta", payload)

    def _tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self._tools:  # the call's first fragment: a new tool_use block
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{random.getrandbits(96):024x}",
                "name": function.get("name") or "",
                "input": {},
            }
            self._start(out, block)
            self._tools[position] = self._blocks - 1
        if arguments := function.get("arguments"):
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(self._delta(delta, self._tools[position]))
