"""Anthropic Messages (``POST /v1/messages``) as the client speaks it.

Translation to the internal (OpenAI chat) request, where the two formats differ:

- ``system`` (a string or text blocks) becomes the first, system, message; its blocks stay parts.
- A user turn's ``tool_result`` blocks become ``tool`` messages, in order, ahead of the turn's
  other content; ``is_error`` is said in the result's text (``Error: …``), as OpenAI has no flag.
- An assistant turn's ``tool_use`` blocks become ``tool_calls`` (``input`` as JSON text);
  ``thinking`` and ``redacted_thinking`` blocks are left out: only the model that wrote them can
  read them.
- Images (base64 or URL) become ``image_url`` parts; ``document`` and server-tool blocks, server
  tools and ``thinking: enabled`` are refused with a 400 (no counterpart across providers).
- ``stop_sequences`` (at most 4, the internal limit), ``temperature`` (0..1, Anthropic's range),
  ``top_p``, ``metadata.user_id`` (as ``user``), ``tool_choice`` (``any`` is ``required``,
  ``disable_parallel_tool_use`` is ``parallel_tool_calls: false``) carry over; ``top_k`` and
  ``service_tier`` are validated and not forwarded (the internal request has no such field).

Answers: text and tool calls become ``text`` and ``tool_use`` blocks; ``stop_reason`` maps from
the finish reason (``stop`` -> ``end_turn``, ``length`` -> ``max_tokens``, ``tool_calls`` ->
``tool_use``, ``content_filter`` -> ``refusal``); a stop sequence that ended the answer reads as
``end_turn``, since the internal answer does not say which one it was. Errors are
``{"type": "error", "error": {"type", "message"}, "request_id"}`` with Anthropic's statuses
(``overloaded_error`` is 529). The team key comes in ``x-api-key`` or ``Authorization: Bearer``;
``anthropic-version`` and ``anthropic-beta`` are accepted and not needed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.core.errors import AuthenticationFailed, GatewayError, InvalidRequest, UpstreamFailure
from gateway.core.validation import describe
from gateway.policy.catalog import Catalog
from gateway.policy.model import TeamConfig
from providers.base import Completion
from providers.schema import ChatRequest

from .anthropic_schema import (
    AnyChoice,
    Conversation,
    CountTokensRequest,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    NoneChoice,
    TextBlock,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)
from .anthropic_stream import STOP_REASONS, MessagesEncoder, error_type
from .openai_chat import translated_request

# Gateway errors whose Anthropic counterpart is ``overloaded_error``, sent with 529.
_OVERLOADED = frozenset({"upstream_overloaded", "all_providers_failed"})


def new_message_id() -> str:
    return f"msg_{random.getrandbits(96):024x}"


# -- request ---------------------------------------------------------------------------------
def _part(block: TextBlock | ImageBlock) -> dict[str, Any]:
    if isinstance(block, TextBlock):
        return {"type": "text", "text": block.text}
    source = block.source
    url = source.url if source.type == "url" else f"data:{source.media_type};base64,{source.data}"
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: ToolResultBlock) -> dict[str, Any]:
    content: str | list[dict[str, Any]]
    if isinstance(block.content, str):
        content = f"Error: {block.content}" if block.is_error else block.content
    else:
        content = [_part(part) for part in block.content]
        if block.is_error:
            content.insert(0, {"type": "text", "text": "Error:"})
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": content}


def _user_turn(message: MessageParam, out: list[dict[str, Any]]) -> None:
    if isinstance(message.content, str):
        out.append({"role": "user", "content": message.content})
        return
    parts: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            out.append(_tool_result(block))
        elif isinstance(block, TextBlock | ImageBlock):
            parts.append(_part(block))
        elif isinstance(block, ToolUseBlock):
            raise InvalidRequest(
                "tool_use blocks belong in assistant messages", param="messages.content"
            )
    if parts or not any(isinstance(b, ToolResultBlock) for b in message.content):
        out.append({"role": "user", "content": parts})


def _assistant_turn(message: MessageParam, out: list[dict[str, Any]]) -> None:
    if isinstance(message.content, str):
        out.append({"role": "assistant", "content": message.content})
        return
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = orjson.dumps(block.input).decode()
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": arguments},
                }
            )
        elif isinstance(block, ImageBlock | ToolResultBlock):
            raise InvalidRequest(
                f"{block.type} blocks belong in user messages", param="messages.content"
            )
    turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        turn["tool_calls"] = calls
    elif turn["content"] is None:
        turn["content"] = ""
    out.append(turn)


def conversation(request: Conversation) -> dict[str, Any]:
    """The internal request's body for what every Messages body shares (no sampling)."""
    if request.thinking is not None and request.thinking.type != "disabled":
        raise InvalidRequest(
            "Extended thinking is not supported through the gateway: its providers answer "
            'without it. Leave out \'thinking\' or set it to {"type": "disabled"}.',
            param="thinking",
        )
    messages: list[dict[str, Any]] = []
    if isinstance(request.system, str):
        if request.system:
            messages.append({"role": "system", "content": request.system})
    elif request.system:
        messages.append({"role": "system", "content": [_part(b) for b in request.system]})
    for message in request.messages:
        if message.role == "user":
            _user_turn(message, messages)
        else:
            _assistant_turn(message, messages)
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    key: value
                    for key, value in (
                        ("name", tool.name),
                        ("description", tool.description),
                        ("parameters", tool.input_schema),
                        ("strict", tool.strict),
                    )
                    if value is not None
                },
            }
            for tool in request.tools
        ]
    choice = request.tool_choice
    if choice is not None:
        if isinstance(choice, NoneChoice):
            body["tool_choice"] = "none"
        elif isinstance(choice, ToolChoiceTool):
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = "required" if isinstance(choice, AnyChoice) else "auto"
        if not isinstance(choice, NoneChoice) and choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    output = request.output_config
    if output is not None and output.format is not None:
        # Anthropic's structured output is OpenAI's json_schema response format.
        schema = {"name": "output", "schema": output.format.schema_, "strict": True}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    return body


def to_chat(request: MessagesRequest) -> ChatRequest:
    """The internal request for a validated Messages body."""
    body = conversation(request)
    body["max_tokens"] = request.max_tokens
    optional = {
        "stop": request.stop_sequences or None,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.metadata.user_id if request.metadata else None,
        "stream": True if request.stream else None,
    }
    body.update((key, value) for key, value in optional.items() if value is not None)
    return translated_request(body)


def _validated(model: type[Conversation], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]["loc"]
        param = ".".join(str(p) for p in first) if first else None
        raise InvalidRequest(describe(exc), param=param) from exc


# -- answer ----------------------------------------------------------------------------------
def _tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as ``input``; text that is not a JSON object is kept under
    ``_invalid_json`` rather than dropped (a small model's malformed call stays visible)."""
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return {"_invalid_json": arguments}
    return value if isinstance(value, dict) else {"_invalid_json": arguments}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts, from some OpenAI-compatible servers
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def render_message(completion: Completion, message_id: str) -> dict[str, Any]:
    """An internal answer as an Anthropic ``message``."""
    choice = completion.body["choices"][0]
    message = choice.get("message") or {}
    blocks: list[dict[str, Any]] = []
    if text := _text_of(message.get("content")):
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{random.getrandbits(96):024x}",
                "name": function.get("name") or "",
                "input": _tool_input(function.get("arguments") or ""),
            }
        )
    finish = choice.get("finish_reason") or completion.finish_reason
    usage = completion.usage
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": completion.served_model,
        "content": blocks,
        "stop_reason": STOP_REASONS.get(finish or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
    }


class MessagesExchange:
    """One Messages request: its internal request and its message id."""

    __slots__ = ("chat", "headers", "message_id")

    def __init__(self, chat: ChatRequest, request_id: str) -> None:
        self.chat = chat
        self.message_id = new_message_id()
        # Anthropic's request id header, which the official SDKs read (``_request_id``).
        self.headers: Mapping[str, str] = {"request-id": request_id}

    def render(self, completion: Completion) -> bytes:
        return orjson.dumps(render_message(completion, self.message_id))

    def encoder(self) -> MessagesEncoder:
        return MessagesEncoder(self.message_id)


# -- the format ------------------------------------------------------------------------------
def anthropic_error_body(error: GatewayError, request_id: str) -> tuple[int, dict[str, Any]]:
    """The status and Anthropic error body for ``error``."""
    status = error.status
    if status == 503 and error.code in _OVERLOADED:
        status = 529
    body = {
        "type": "error",
        "error": {"type": error_type(error), "message": error.message},
        "request_id": request_id,
    }
    return status, body


class AnthropicMessages:
    """The ``IngressFormat`` of ``POST /v1/messages``."""

    api = "anthropic.messages"

    def authenticate(self, catalog: Catalog, headers: Mapping[str, str]) -> TeamConfig:
        key = headers.get("x-api-key")
        if key is not None:
            return catalog.authenticate(f"Bearer {key.strip()}")
        authorization = headers.get("Authorization")
        if not authorization:
            raise AuthenticationFailed(
                "Missing API key: send 'x-api-key: <team key>' or "
                "'Authorization: Bearer <team key>'.",
                code="missing_api_key",
            )
        return catalog.authenticate(authorization)

    def parse(self, body: dict[str, Any], request_id: str) -> MessagesExchange:
        request: MessagesRequest = _validated(MessagesRequest, body)
        return MessagesExchange(to_chat(request), request_id)

    def parse_count(self, body: dict[str, Any]) -> ChatRequest:
        """A ``count_tokens`` body as the internal request it would make."""
        request: CountTokensRequest = _validated(CountTokensRequest, body)
        return translated_request(conversation(request))

    def error_response(self, error: GatewayError, request_id: str) -> web.Response:
        status, body = anthropic_error_body(error, request_id)
        headers = {"x-request-id": request_id, "request-id": request_id, **error.headers()}
        if isinstance(error, UpstreamFailure) and error.provider:
            headers["x-gateway-provider"] = error.provider
        return web.Response(
            body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
        )


ANTHROPIC_MESSAGES = AnthropicMessages()


def anthropic_models(names: list[str], created: int) -> dict[str, Any]:
    """``GET /v1/models`` in Anthropic's list shape (``ModelInfo`` objects, one page)."""
    when = datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
    data = [
        {"type": "model", "id": name, "display_name": name, "created_at": when} for name in names
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": names[0] if names else None,
        "last_id": names[-1] if names else None,
    }
