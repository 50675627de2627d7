"""Anthropic's Messages API (``POST /v1/messages``).

Translation notes, where OpenAI's format has no exact Anthropic counterpart:

- System and developer messages, wherever they appear, are joined (blank line between) into the
  top-level ``system`` string: Anthropic has no system role inside ``messages``.
- Anthropic wants user and assistant turns to alternate, so consecutive same-role messages are
  merged into one, and OpenAI's ``tool`` messages become ``tool_result`` blocks of a user turn.
  Tool results go first in a merged user turn, as Anthropic requires.
- ``max_tokens`` is mandatory upstream: the client's limit, else ``default_max_tokens`` (4096).
- ``response_format`` ``json_object`` has no Anthropic switch; the adapter appends a system
  instruction asking for one JSON object. That is a request, not a guarantee. ``json_schema``
  maps to structured outputs (``output_config.format``), which the model must support.
- Temperature is 0..1 upstream (OpenAI allows 0..2), so a larger value is rejected, not clamped.
  API version 2026-10-21 and later reject sampling parameters at any value, so a target pinned
  to such a version rejects ``temperature``/``top_p`` here rather than upstream.
- ``seed`` (best effort even at OpenAI) is dropped; non-zero penalties are rejected.

Target options: ``anthropic_version`` (default ``2023-06-01``), ``default_max_tokens``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import orjson

from .base import (
    Completion,
    Framing,
    StreamEvent,
    StreamState,
    Target,
    UpstreamRequest,
    Usage,
    classify_status,
    load_json,
    new_completion_id,
    parse_retry_after,
)
from .errors import (
    ContentBlocked,
    UnsupportedRequest,
    UpstreamAuthError,
    UpstreamError,
    UpstreamProtocolError,
)
from .schema import (
    AssistantMessage,
    ChatRequest,
    Content,
    FunctionDefinition,
    ImagePart,
    TextPart,
    ToolMessage,
)

DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
# From this API version on, temperature/top_p/top_k are a 400 at any value.
SAMPLING_FREE_VERSION = "2026-10-21"

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    # The turn is unfinished (a long server-tool run); "length" is OpenAI's only "cut short".
    "pause_turn": "length",
}

# Anthropic's documented error types and the HTTP status each is sent with; used to classify
# in-stream ``error`` events, which arrive on a 200 response.
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: "
    "no prose before or after it and no Markdown code fences."
)
_DATA_URL = re.compile(r"data:(?P<media>[^;,]+);base64,(?P<data>.*)", re.DOTALL)


# -- request ---------------------------------------------------------------------------------
def _image_block(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise UnsupportedRequest(
                "image_url data: URLs must be base64-encoded", param="messages"
            )
        media = match["media"].lower()
        if media not in IMAGE_MEDIA_TYPES:
            raise UnsupportedRequest(
                f"Anthropic accepts JPEG, PNG, GIF and WebP images, not {media}", param="messages"
            )
        source = {"type": "base64", "media_type": media, "data": match["data"]}
        return {"type": "image", "source": source}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise UnsupportedRequest("image_url must be a data: URL or an http(s) URL", param="messages")


def _blocks(content: Content | None, *, images: bool = True) -> list[dict[str, Any]]:
    """Anthropic content blocks; empty text is left out because Anthropic rejects it."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            if not images:
                raise UnsupportedRequest("Anthropic accepts images only in user and tool messages")
            blocks.append(_image_block(part.image_url.url))
    return blocks


def _tool_use(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise UnsupportedRequest(
            f"tool call {call_id!r} has arguments that are not valid JSON", param="messages"
        ) from exc
    if not isinstance(parsed, dict):
        raise UnsupportedRequest(
            f"tool call {call_id!r} arguments must be a JSON object for Anthropic",
            param="messages",
        )
    return {"type": "tool_use", "id": call_id, "name": name, "input": parsed}


def _tool_result(message: ToolMessage) -> dict[str, Any]:
    content: str | list[dict[str, Any]] = (
        message.content if isinstance(message.content, str) else _blocks(message.content)
    )
    return {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": content}


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        merged = turns[-1]["content"] + blocks
        # Anthropic wants a user turn's tool_result blocks ahead of any other content.
        merged.sort(key=lambda block: block["type"] != "tool_result")
        turns[-1]["content"] = merged
    else:
        turns.append({"role": role, "content": blocks})


def _conversation(request: ChatRequest) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role in ("system", "developer"):
            if any(isinstance(part, ImagePart) for part in message.content):
                raise UnsupportedRequest(
                    f"Anthropic does not accept images in {message.role} messages"
                )
            if text := "".join(block["text"] for block in _blocks(message.content)):
                system.append(text)
        elif isinstance(message, AssistantMessage):
            blocks = _blocks(message.content, images=False)
            for call in message.tool_calls or []:
                blocks.append(_tool_use(call.id, call.function.name, call.function.arguments))
            _append(turns, "assistant", blocks)
        elif isinstance(message, ToolMessage):
            _append(turns, "user", [_tool_result(message)])
        else:
            _append(turns, "user", _blocks(message.content))
    return system, turns


def _tool_choice(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if not request.tools:
        if choice is None or choice in ("none", "auto"):
            return None
        raise UnsupportedRequest("tool_choice requires tools", param="tool_choice")
    if choice == "none":
        return {"type": "none"}  # takes no disable_parallel_tool_use
    if choice is None and request.parallel_tool_calls is not False:
        return None  # Anthropic's default is auto
    if choice is None or choice == "auto":
        result: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    else:
        result = {"type": "tool", "name": choice.function.name}
    if request.parallel_tool_calls is False:
        result["disable_parallel_tool_use"] = True
    return result


def _tool(fn: FunctionDefinition) -> dict[str, Any]:
    spec = {
        "name": fn.name,
        "description": fn.description or None,
        "input_schema": fn.parameters or {"type": "object", "properties": {}},
        "strict": True if fn.strict else None,
    }
    return {key: value for key, value in spec.items() if value is not None}


def _check_sampling(request: ChatRequest, version: str) -> None:
    if request.temperature is not None and request.temperature > 1:
        raise UnsupportedRequest(
            f"temperature {request.temperature} is out of range: Anthropic accepts 0 to 1",
            param="temperature",
        )
    if version >= SAMPLING_FREE_VERSION:
        for name in ("temperature", "top_p"):
            if getattr(request, name) is not None:
                raise UnsupportedRequest(
                    f"{name} is not accepted by Anthropic API version {version}", param=name
                )
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise UnsupportedRequest(f"Anthropic does not support {name}", param=name)


# -- responses -------------------------------------------------------------------------------
def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _usage(raw: Mapping[str, Any]) -> Usage:
    # Cached input is still input: Anthropic's total input is the sum of all three counts.
    prompt = sum(
        _int(raw.get(key))
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    return Usage(prompt_tokens=prompt, completion_tokens=_int(raw.get("output_tokens")))


def _openai_call(block: Mapping[str, Any], arguments: str) -> dict[str, Any]:
    """An OpenAI tool call for an Anthropic ``tool_use`` block."""
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


def _finish(stop_reason: Any) -> str:
    return FINISH_REASONS.get(str(stop_reason), "stop")


def _error_fields(payload: Any) -> tuple[str, str]:
    """(type, message) out of ``{"type": "error", "error": {"type", "message"}}``."""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return str(error.get("type") or ""), str(error.get("message") or "")
    return "", ""


def _classify(
    status: int, kind: str, message: str, *, provider: str, retry_after: float | None
) -> UpstreamError:
    if kind == "billing_error" or (
        kind in ("authentication_error", "permission_error") and status not in (401, 403)
    ):
        # The gateway's account, not the client, is at fault; never echo the text (it may
        # quote the key).
        return UpstreamAuthError(
            f"{provider} rejected the gateway's account ({kind})",
            provider=provider,
            upstream_status=status,
        )
    return classify_status(status, message or kind, provider=provider, retry_after=retry_after)


class AnthropicAdapter:
    """Translation between OpenAI chat completions and Anthropic's Messages API."""

    framing: Framing = "sse"

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        """``POST {base_url}/v1/messages``; raises ``UnsupportedRequest`` if Anthropic lacks it."""
        version = str(target.options.get("anthropic_version", DEFAULT_VERSION))
        _check_sampling(request, version)
        system, turns = _conversation(request)
        body: dict[str, Any] = {
            "model": target.model,
            "max_tokens": request.output_limit
            or int(target.options.get("default_max_tokens", DEFAULT_MAX_TOKENS)),
            "messages": turns,
        }
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_object":
            system.append(JSON_OBJECT_INSTRUCTION)
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise UnsupportedRequest(
                    "response_format json_schema needs json_schema.schema", param="response_format"
                )
            schema_format = {"type": "json_schema", "schema": fmt.json_schema.schema_}
            body["output_config"] = {"format": schema_format}
        optional: dict[str, Any] = {
            "system": "\n\n".join(system) or None,
            "stop_sequences": request.stop_list or None,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "metadata": {"user_id": request.user} if request.user else None,
            "tools": [_tool(tool.function) for tool in request.tools or []] or None,
            "tool_choice": _tool_choice(request),
            "stream": True if request.stream else None,
        }
        body.update((key, value) for key, value in optional.items() if value is not None)
        headers = {
            "content-type": "application/json",
            "anthropic-version": version,
            **target.headers,
        }
        if target.api_key is not None:
            headers["x-api-key"] = target.api_key
        if request.stream:
            headers["accept"] = "text/event-stream"
        return UpstreamRequest(
            url=f"{target.base_url}/v1/messages",
            headers=headers,
            body=orjson.dumps(body),
            stream=request.stream,
        )

    def parse_response(self, body: bytes, target: Target) -> Completion:
        """An Anthropic ``message`` as an OpenAI ``chat.completion``; a bare refusal raises."""
        provider = target.provider
        payload = load_json(body, provider)
        try:
            blocks = payload["content"]
            stop_reason = payload["stop_reason"]
            served = str(payload.get("model") or target.model)
            usage = _usage(payload.get("usage") or {})
            texts: list[str] = []
            tool_calls: list[dict[str, Any]] = []
            for block in blocks:
                if block["type"] == "text":
                    texts.append(block["text"])
                elif block["type"] == "tool_use":
                    arguments = orjson.dumps(block.get("input") or {}).decode()
                    tool_calls.append(_openai_call(block, arguments))
                # thinking and server-tool blocks have no OpenAI counterpart
            text = "".join(texts)
        except (KeyError, TypeError) as exc:
            raise UpstreamProtocolError(
                f"{provider} returned a message without the documented fields",
                provider=provider,
            ) from exc
        if stop_reason == "refusal" and not text and not tool_calls:
            raise ContentBlocked(f"{provider} refused to answer", provider=provider)
        finish = _finish(stop_reason)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        elif not text:
            message["content"] = ""
        completion = {
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": usage.to_openai(),
        }
        return Completion(body=completion, served_model=served, usage=usage, finish_reason=finish)

    def new_stream(self, target: Target) -> StreamState:
        """Fresh state: block-index -> tool-call-index map and the running usage counts."""
        state = StreamState(id=new_completion_id(), model=target.model, provider=target.provider)
        state.scratch.update(tools={}, usage={}, emitted=False, finished=False)
        return state

    def parse_stream_event(self, event: StreamEvent, state: StreamState) -> list[dict[str, Any]]:
        """OpenAI chunks for one Anthropic SSE event; ``message_stop`` ends the stream."""
        payload = load_json(event.data, state.provider)
        if not isinstance(payload, dict):
            raise UpstreamProtocolError(
                "stream event is not a JSON object", provider=state.provider
            )
        kind = payload.get("type") or event.event
        try:
            return self._stream_event(str(kind), payload, state)
        except (KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(
                f"{state.provider} sent a malformed {kind} event", provider=state.provider
            ) from exc

    def _stream_event(
        self, kind: str, payload: dict[str, Any], state: StreamState
    ) -> list[dict[str, Any]]:
        scratch = state.scratch
        if kind == "message_start":
            message = payload["message"]
            state.served_model = str(message.get("model") or state.model)
            self._add_usage(state, message.get("usage") or {})
            return []
        if kind == "content_block_start":
            block = payload["content_block"]
            if block["type"] == "tool_use":
                index = len(scratch["tools"])
                scratch["tools"][payload["index"]] = index
                scratch["emitted"] = True
                call = {"index": index, **_openai_call(block, "")}
                return [state.chunk({"tool_calls": [call]})]
            if block["type"] == "text" and block.get("text"):
                scratch["emitted"] = True
                return [state.chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = payload["delta"]
            if delta["type"] == "text_delta" and delta["text"]:
                scratch["emitted"] = True
                return [state.chunk({"content": delta["text"]})]
            if delta["type"] == "input_json_delta" and delta["partial_json"]:
                index = scratch["tools"][payload["index"]]
                fragment = {"index": index, "function": {"arguments": delta["partial_json"]}}
                return [state.chunk({"tool_calls": [fragment]})]
            return []  # thinking, signature and citation deltas have no OpenAI counterpart
        if kind == "message_delta":
            self._add_usage(state, payload.get("usage") or {})
            stop_reason = payload["delta"].get("stop_reason")
            if stop_reason is None:
                return []
            if stop_reason == "refusal" and not scratch["emitted"]:
                raise ContentBlocked(f"{state.provider} refused to answer", provider=state.provider)
            return self._finish_chunk(state, _finish(stop_reason))
        if kind == "message_stop":
            state.done = True
            return [] if scratch["finished"] else self._finish_chunk(state, "stop")
        if kind == "error":
            error_type, message = _error_fields(payload)
            status = ERROR_TYPE_STATUS.get(error_type, 500)
            raise _classify(status, error_type, message, provider=state.provider, retry_after=None)
        return []  # ping, content_block_stop and event types added later

    @staticmethod
    def _add_usage(state: StreamState, raw: Mapping[str, Any]) -> None:
        # message_delta counts are cumulative and may omit the input fields: overwrite, keep rest.
        counts: dict[str, Any] = state.scratch["usage"]
        counts.update({key: value for key, value in raw.items() if value is not None})
        state.usage = _usage(counts)

    @staticmethod
    def _finish_chunk(state: StreamState, finish: str) -> list[dict[str, Any]]:
        state.finish_reason = finish
        state.scratch["finished"] = True
        return [state.chunk({}, finish)]

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, target: Target
    ) -> UpstreamError:
        """Classify by status, with Anthropic's ``error.type`` and message for detail."""
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None  # e.g. an HTML page from a proxy: the status still tells enough
        kind, message = _error_fields(payload)
        return _classify(
            status, kind, message, provider=target.provider, retry_after=parse_retry_after(headers)
        )
