"""Ollama's native chat API (``POST /api/chat``).

Ollama also serves an OpenAI-compatible ``/v1``, but the native API is the one every Ollama
version has and the one that reports ``done_reason`` and token counts reliably. Its differences
from OpenAI, all handled here:

- one flat ``messages`` list: system and developer turns stay in place as ``role: "system"``;
  images travel as bare base64 strings in ``images`` (no URL form, so http(s) images are refused);
- tool-call arguments are JSON *objects* both ways (OpenAI sends a JSON string); tool results are
  ``role: "tool"`` with ``tool_name`` (Ollama has no tool-call ids in its request schema);
- sampling parameters live in ``options`` (``num_predict`` for the output limit);
- ``stream`` defaults to *true*, so it is always sent explicitly;
- streams are NDJSON: one object a line, the last with ``done: true``, counts and ``done_reason``;
  an error after the 200 arrives as a line ``{"error": "..."}``;
- errors are ``{"error": "message"}``; a model the server has not pulled is a 404.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
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
from .embeddings import EmbeddingRequest, Embeddings, check_rows, estimate_tokens
from .errors import (
    UnsupportedRequest,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamOverloaded,
    UpstreamProtocolError,
)
from .schema import (
    AssistantMessage,
    ChatRequest,
    Content,
    ImagePart,
    TextPart,
    ToolMessage,
)
from .shaping import folds_system, output_limit, without_system_role

# Ollama's done_reason -> OpenAI finish_reason. "load"/"unload" only answer empty warm-up calls;
# anything unknown is treated as a normal stop. Tool calls override this (see _finish_reason).
FINISH_REASONS: dict[str, str] = {
    "stop": "stop",
    "length": "length",
}

# An error line after the 200 carries only text. Most are the runner failing ("an error was
# encountered while running the model", "unexpected EOF"), which another provider may not
# share; these phrases mark the few that are the request's own fault.
_CLIENT_ERROR_MARKERS = (
    "does not support",
    "not supported",
    "invalid format",
    "invalid request",
)


def _error_message(payload: Any) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, str):
            return error
        if isinstance(error, dict):  # a proxy in front of Ollama may answer OpenAI-style
            return str(error.get("message") or "")
    return ""


def _stream_error(message: str, provider: str) -> UpstreamError:
    """The error for an ``{"error": ...}`` line: the status (200) was sent long ago."""
    lowered = message.lower()
    if any(marker in lowered for marker in _CLIENT_ERROR_MARKERS):
        return UpstreamInvalidRequest(message, provider=provider)
    return UpstreamOverloaded(f"{provider} failed mid-answer: {message}", provider=provider)


def _images(content: Content | None) -> list[str]:
    """Base64 payloads of the content's image parts; Ollama takes no image URLs."""
    if content is None or isinstance(content, str):
        return []
    images: list[str] = []
    for part in content:
        if not isinstance(part, ImagePart):
            continue
        url = part.image_url.url
        if url.startswith("data:"):
            header, sep, data = url.partition(",")
            if not sep or not header.endswith(";base64") or not data:
                raise UnsupportedRequest(
                    "ollama needs images as base64 data: URLs (data:image/png;base64,...)",
                    param="messages",
                )
            images.append(data)
        else:
            raise UnsupportedRequest(
                "ollama cannot fetch image URLs; send the image inline as a base64 data: URL",
                param="messages",
            )
    return images


def _text(content: Content | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if isinstance(part, TextPart))


def _arguments(raw: str, name: str) -> dict[str, Any]:
    """OpenAI's JSON-string arguments as the object Ollama expects."""
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UnsupportedRequest(
            f"tool call {name!r} has arguments that are not JSON", param="messages"
        ) from exc
    if not isinstance(value, dict):
        raise UnsupportedRequest(
            f"tool call {name!r} must have a JSON object as arguments", param="messages"
        )
    return value


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    # Ollama's tool results name the tool, not the call: remember which call was which tool.
    tool_names: dict[str, str] = {}
    for message in request.messages:
        if isinstance(message, AssistantMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": _text(message.content)}
            if message.tool_calls:
                calls = []
                for call in message.tool_calls:
                    tool_names[call.id] = call.function.name
                    arguments = _arguments(call.function.arguments, call.function.name)
                    calls.append({"function": {"name": call.function.name, "arguments": arguments}})
                entry["tool_calls"] = calls
        elif isinstance(message, ToolMessage):
            entry = {"role": "tool", "content": _text(message.content)}
            if name := tool_names.get(message.tool_call_id):
                entry["tool_name"] = name
        else:
            # system and developer both become "system", kept where the client put them: Ollama
            # takes any number of system turns, so nothing needs joining.
            role = "user" if message.role == "user" else "system"
            entry = {"role": role, "content": _text(message.content)}
        if images := _images(message.content):
            entry["images"] = images
        out.append(entry)
    return out


def _options(request: ChatRequest, limit: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p is not None:
        options["top_p"] = request.top_p
    if limit is not None:
        options["num_predict"] = limit
    if stops := request.stop_list:
        options["stop"] = stops
    if request.seed is not None:
        options["seed"] = request.seed
    if request.presence_penalty is not None:
        options["presence_penalty"] = request.presence_penalty
    if request.frequency_penalty is not None:
        options["frequency_penalty"] = request.frequency_penalty
    return options


def _tools(request: ChatRequest) -> list[dict[str, Any]] | None:
    if not request.tools:
        return None
    choice = request.tool_choice
    if choice == "none":
        return None  # Ollama has no tool_choice: a model that is shown no tools calls none
    if choice is not None and choice != "auto":
        # /api/chat has no way to force a call (neither "required" nor a named function).
        wanted = "required" if choice == "required" else f"function {choice.function.name!r}"
        raise UnsupportedRequest(
            f"ollama cannot force a tool call (tool_choice {wanted}); use 'auto' or 'none'",
            param="tool_choice",
        )
    tools = []
    for tool in request.tools:
        function: dict[str, Any] = {"name": tool.function.name}
        if tool.function.description is not None:
            function["description"] = tool.function.description
        function["parameters"] = tool.function.parameters or {"type": "object", "properties": {}}
        tools.append({"type": "function", "function": function})
    return tools


def _format(request: ChatRequest) -> str | dict[str, Any] | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.json_schema is not None and fmt.json_schema.schema_:
        return fmt.json_schema.schema_
    return "json"


def _openai_tool_calls(raw: Any, provider: str) -> list[dict[str, Any]]:
    """Ollama's tool calls (object arguments, no ids) in OpenAI's shape."""
    if not raw:
        return []
    if not isinstance(raw, list):
        raise UpstreamProtocolError("message.tool_calls is not a list", provider=provider)
    calls = []
    for item in raw:
        try:
            function = item["function"]
            name = str(function["name"])
            arguments = function.get("arguments") or {}
        except (KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(
                "tool call without function.name", provider=provider
            ) from exc
        call_id = item.get("id") or f"call_{uuid.uuid4().hex[:24]}"
        text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
        calls.append(
            {"id": str(call_id), "type": "function", "function": {"name": name, "arguments": text}}
        )
    return calls


def _usage(payload: dict[str, Any]) -> Usage:
    # Both counts are omitted when zero (Go omitempty), e.g. a fully cached prompt.
    return Usage(
        prompt_tokens=int(payload.get("prompt_eval_count") or 0),
        completion_tokens=int(payload.get("eval_count") or 0),
    )


def _finish_reason(done_reason: Any, tool_calls: bool) -> str:
    # Ollama reports "stop" after a tool call; OpenAI clients look for "tool_calls".
    if tool_calls:
        return "tool_calls"
    return FINISH_REASONS.get(str(done_reason or "stop"), "stop")


class OllamaAdapter:
    """Translation between OpenAI chat completions and Ollama's native ``/api/chat``."""

    framing: Framing = "ndjson"

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        """The ``/api/chat`` request; raises ``UnsupportedRequest`` for what Ollama cannot express.

        ``user`` has no Ollama counterpart and is dropped; ``target.options["keep_alive"]``
        (e.g. ``"10m"``, or ``-1`` to keep the model loaded) is passed through.
        """
        if folds_system(target.options):
            request = without_system_role(request)
        body: dict[str, Any] = {
            "model": target.model,
            "messages": _messages(request),
            "stream": request.stream,  # Ollama streams unless told otherwise
        }
        if tools := _tools(request):
            body["tools"] = tools
        if (fmt := _format(request)) is not None:
            body["format"] = fmt
        if options := _options(request, output_limit(request, target.options)):
            body["options"] = options
        if (keep_alive := target.options.get("keep_alive")) is not None:
            body["keep_alive"] = keep_alive
        headers = {"Content-Type": "application/json", **target.headers}
        if target.api_key:  # ollama.com or an authenticating proxy; a local server needs none
            headers["Authorization"] = f"Bearer {target.api_key}"
        if request.stream:
            headers["Accept"] = "application/x-ndjson"
        return UpstreamRequest(
            url=f"{target.base_url}/api/chat",
            headers=headers,
            body=orjson.dumps(body),
            stream=request.stream,
        )

    def parse_response(self, body: bytes, target: Target) -> Completion:
        """A non-streamed ``/api/chat`` answer as an OpenAI ``chat.completion``."""
        provider = target.provider
        payload = load_json(body, provider)
        if isinstance(payload, dict) and "error" in payload:
            raise _stream_error(_error_message(payload), provider)
        try:
            message = payload["message"]
            content = message.get("content")
            raw_calls = message.get("tool_calls")
        except (KeyError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(
                f"{provider} returned a chat response without a message", provider=provider
            ) from exc
        if content is not None and not isinstance(content, str):
            raise UpstreamProtocolError("message.content is not a string", provider=provider)
        tool_calls = _openai_tool_calls(raw_calls, provider)
        finish = _finish_reason(payload.get("done_reason"), bool(tool_calls))
        usage = _usage(payload)
        served = str(payload.get("model") or target.model)
        answer: dict[str, Any] = {
            "role": "assistant",
            # OpenAI's convention: no text beside a tool call is null, not "".
            "content": None if tool_calls and not content else (content or ""),
        }
        if tool_calls:
            answer["tool_calls"] = tool_calls
        completion = {
            "id": new_completion_id(),
            "object": "chat.completion",
            # created_at has nanosecond precision that datetime cannot parse; arrival is close.
            "created": int(time.time()),
            "model": served,
            "choices": [{"index": 0, "message": answer, "logprobs": None, "finish_reason": finish}],
            "usage": usage.to_openai(),
        }
        return Completion(body=completion, served_model=served, usage=usage, finish_reason=finish)

    def new_stream(self, target: Target) -> StreamState:
        """Fresh state; ``scratch["tool_calls"]`` counts the tool calls emitted so far."""
        return StreamState(id=new_completion_id(), model=target.model, provider=target.provider)

    def parse_stream_event(self, event: StreamEvent, state: StreamState) -> list[dict[str, Any]]:
        """OpenAI chunks for one NDJSON line; the ``done: true`` line finishes the stream."""
        provider = state.provider
        payload = load_json(event.data, provider)
        if not isinstance(payload, dict):
            raise UpstreamProtocolError("stream line is not a JSON object", provider=provider)
        if "error" in payload:
            raise _stream_error(_error_message(payload), provider)
        if model := payload.get("model"):
            state.served_model = str(model)
        message = payload.get("message") or {}
        if not isinstance(message, dict):
            raise UpstreamProtocolError("stream line has a malformed message", provider=provider)
        chunks: list[dict[str, Any]] = []
        content = message.get("content")
        if content:
            chunks.append(state.chunk({"content": str(content)}))
        # Ollama sends each tool call whole, in one line: an OpenAI opening delta, then the
        # complete arguments as a single fragment.
        for call in _openai_tool_calls(message.get("tool_calls"), provider):
            index = int(state.scratch.get("tool_calls", 0))
            state.scratch["tool_calls"] = index + 1
            function = call["function"]
            opening = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": ""},
            }
            chunks.append(state.chunk({"tool_calls": [opening]}))
            fragment = {"index": index, "function": {"arguments": function["arguments"]}}
            chunks.append(state.chunk({"tool_calls": [fragment]}))
        if payload.get("done") is True:
            state.usage = _usage(payload)
            state.finish_reason = _finish_reason(
                payload.get("done_reason"), bool(state.scratch.get("tool_calls"))
            )
            state.done = True
            chunks.append(state.chunk({}, state.finish_reason))
        return chunks

    # -- embeddings (providers.embeddings.EmbeddingAdapter) ----------------------------------
    max_batch = 512  # Ollama sets no limit; this keeps one call's work bounded

    def build_embedding_request(
        self, texts: Sequence[str], request: EmbeddingRequest, target: Target
    ) -> UpstreamRequest:
        """``POST {base_url}/api/embed`` (Ollama truncates an input past the model's window, its
        default; ``user`` has no counterpart and is dropped)."""
        body: dict[str, Any] = {"model": target.model, "input": list(texts)}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if (keep_alive := target.options.get("keep_alive")) is not None:
            body["keep_alive"] = keep_alive
        headers = {"Content-Type": "application/json", **target.headers}
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        return UpstreamRequest(
            url=f"{target.base_url}/api/embed",
            headers=headers,
            body=orjson.dumps(body),
            stream=False,
        )

    def parse_embeddings(self, body: bytes, target: Target, texts: Sequence[str]) -> Embeddings:
        """``{"model", "embeddings": [[...]], "prompt_eval_count"}``."""
        provider = target.provider
        payload = load_json(body, provider)
        if not isinstance(payload, dict) or "embeddings" not in payload:
            raise UpstreamProtocolError(
                f"{provider} returned an embed answer without embeddings", provider=provider
            )
        vectors = check_rows(payload["embeddings"], len(texts), provider)
        served = str(payload.get("model") or target.model)
        tokens = payload.get("prompt_eval_count")
        if isinstance(tokens, int):
            return Embeddings(vectors, served, tokens)
        return Embeddings(vectors, served, estimate_tokens(texts), estimated=True)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, target: Target
    ) -> UpstreamError:
        """The gateway error for a non-2xx ``{"error": "message"}`` (or non-JSON) answer."""
        provider = target.provider
        try:
            message = _error_message(orjson.loads(body))
        except orjson.JSONDecodeError:
            message = body[:200].decode("utf-8", "replace").strip()
        # A 404 ("model 'x' not found": not pulled here) is the operator's mistake, never the
        # client's: classify_status makes it UpstreamModelNotFound, which falls back and alerts.
        return classify_status(
            status, message, provider=provider, retry_after=parse_retry_after(headers)
        )
