"""OpenAI Responses (``POST /v1/responses``), the stateless subset, as the client speaks it.

Translation to the internal (chat) request:

- ``instructions`` becomes the first, system, message; ``input`` as a string is one user message.
- Message items keep their role; ``input_text``/``output_text`` become text parts, ``input_image``
  an ``image_url`` part (a URL or a data URL; ``file_id`` needs OpenAI's file store: refused),
  ``refusal`` its text.
- ``function_call`` items become the ``tool_calls`` of an assistant message (consecutive calls and
  the assistant text before them share one); ``function_call_output`` items become ``tool``
  messages. ``reasoning`` items are left out: only the model that wrote them can read them.
- ``max_output_tokens`` is ``max_tokens``; ``text.format`` is ``response_format``; function tools,
  ``tool_choice``, ``parallel_tool_calls``, ``temperature``, ``top_p`` and ``user`` carry over.
  ``metadata`` is echoed back; ``text.verbosity``, ``service_tier`` and ``prompt_cache_key`` are
  accepted and not forwarded.
- Stateful features are refused with a 400 naming the field (``responses_schema.REFUSED``).

Answers: a ``response`` whose ``output`` is a ``message`` item (``output_text``) and one
``function_call`` item per tool call; a ``length`` finish is ``status: "incomplete"`` with
``incomplete_details.reason: "max_output_tokens"``, a filtered one ``"content_filter"``. Errors
are OpenAI's ``{"error": {...}}``, as on chat completions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from gateway.core.errors import GatewayError, InvalidRequest
from gateway.core.validation import describe
from gateway.policy.catalog import Catalog
from gateway.policy.model import TeamConfig
from providers.base import Completion, Usage
from providers.schema import ChatRequest

from ..responses import error_response
from .openai_chat import translated_request
from .responses_schema import (
    REFUSED,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputText,
    JSONObjectFormat,
    JSONSchemaFormat,
    MessageItem,
    OutputText,
    Refusal,
    ResponsesRequest,
    refused_field,
)
from .responses_stream import ResponsesEncoder, call_item, new_id, text_item, usage_of

_NO_HEADERS: Mapping[str, str] = {}
# Finish reasons that leave a response incomplete, and the reason OpenAI gives.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


# -- request ---------------------------------------------------------------------------------
def _part(part: InputText | InputImage | OutputText | Refusal) -> dict[str, Any]:
    if isinstance(part, InputImage):
        image: dict[str, Any] = {"url": part.image_url}
        if part.detail in ("low", "high", "auto"):
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    text = part.refusal if isinstance(part, Refusal) else part.text
    return {"type": "text", "text": text}


def _message(item: MessageItem) -> dict[str, Any]:
    if isinstance(item.content, str):
        return {"role": item.role, "content": item.content}
    parts = [_part(part) for part in item.content]
    if item.role == "assistant":  # assistant turns are text (and tool calls) internally
        if any(part["type"] != "text" for part in parts):
            raise InvalidRequest("assistant messages take text only", param="input")
        return {"role": "assistant", "content": "".join(p["text"] for p in parts)}
    return {"role": item.role, "content": parts}


def _conversation(request: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    if isinstance(request.input, str):
        messages.append({"role": "user", "content": request.input})
        return messages
    for item in request.input:
        if isinstance(item, MessageItem):
            messages.append(_message(item))
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last.get("content"):
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output
            content = output if isinstance(output, str) else [_part(p) for p in output]
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": content})
    return messages


def to_chat(request: ResponsesRequest) -> ChatRequest:
    """The internal request for a validated Responses body."""
    body: dict[str, Any] = {"model": request.model, "messages": _conversation(request)}
    if request.tools:
        body["tools"] = [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in request.tools
        ]
    choice = request.tool_choice
    if choice is not None:
        body["tool_choice"] = (
            choice
            if isinstance(choice, str)
            else {"type": "function", "function": {"name": choice.name}}
        )
    fmt = request.text.format if request.text else None
    if isinstance(fmt, JSONObjectFormat):
        body["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, JSONSchemaFormat):
        schema = fmt.model_dump(exclude={"type"}, exclude_none=True, by_alias=True)
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    optional = {
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
        "user": request.user or request.safety_identifier,
        "stream": True if request.stream else None,
    }
    body.update((key, value) for key, value in optional.items() if value is not None)
    return translated_request(body)


# -- answer ----------------------------------------------------------------------------------
class ResponsesExchange:
    """One Responses request: its internal request and what its response echoes back."""

    __slots__ = ("chat", "created_at", "request", "response_id")
    headers = _NO_HEADERS

    def __init__(self, chat: ChatRequest, request: ResponsesRequest) -> None:
        self.chat = chat
        self.request = request
        self.response_id = new_id("resp")
        self.created_at = int(time.time())

    def response(
        self,
        *,
        model: str,
        status: str,
        output: list[dict[str, Any]],
        usage: Usage | None,
        finish: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The ``response`` object, at any point of its life."""
        request = self.request
        fmt = request.text.format if request.text and request.text.format else None
        incomplete = INCOMPLETE.get(finish or "") if status == "incomplete" else None
        choice = request.tool_choice
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "model": model,
            "output": output,
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": request.temperature,
            "text": {
                "format": fmt.model_dump(exclude_none=True, by_alias=True)
                if fmt
                else {"type": "text"}
            },
            "tool_choice": (
                choice.model_dump()
                if choice is not None and not isinstance(choice, str)
                else choice or "auto"
            ),
            "tools": [tool.model_dump() for tool in request.tools or ()],
            "top_p": request.top_p,
            "truncation": "disabled",
            "usage": usage_of(usage) if usage is not None else None,
            "user": request.user,
            "metadata": request.metadata or {},
        }

    def render(self, completion: Completion) -> bytes:
        choice = completion.body["choices"][0]
        message = choice.get("message") or {}
        finish = choice.get("finish_reason") or completion.finish_reason
        status = "incomplete" if finish in INCOMPLETE else "completed"
        output: list[dict[str, Any]] = []
        text = message.get("content")
        if isinstance(text, list):
            text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
        if text:
            output.append(text_item(new_id("msg"), text, status))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            output.append(
                call_item(
                    new_id("fc"),
                    str(call.get("id") or new_id("call")),
                    function.get("name") or "",
                    function.get("arguments") or "",
                    "completed",
                )
            )
        body = self.response(
            model=completion.served_model,
            status=status,
            output=output,
            usage=completion.usage,
            finish=finish,
        )
        return orjson.dumps(body)

    def encoder(self) -> ResponsesEncoder:
        return ResponsesEncoder(self)


class OpenAIResponses:
    """The ``IngressFormat`` of ``POST /v1/responses``."""

    api = "openai.responses"

    def authenticate(self, catalog: Catalog, headers: Mapping[str, str]) -> TeamConfig:
        return catalog.authenticate(headers.get("Authorization"))

    def parse(self, body: dict[str, Any], request_id: str) -> ResponsesExchange:
        if (field := refused_field(body)) is not None:
            raise InvalidRequest(f"{field} is not supported: {REFUSED[field]}.", param=field)
        try:
            request = ResponsesRequest.model_validate(body)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]["loc"]
            param = ".".join(str(p) for p in first) if first else None
            raise InvalidRequest(describe(exc), param=param) from exc
        return ResponsesExchange(to_chat(request), request)

    def error_response(self, error: GatewayError, request_id: str) -> web.Response:
        return error_response(error, request_id)


OPENAI_RESPONSES = OpenAIResponses()
