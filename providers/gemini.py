"""Google Gemini ``generateContent`` (the Gemini Developer API, ``v1beta`` by default).

Requests go to ``models/{model}:generateContent``; streams to
``models/{model}:streamGenerateContent?alt=sse``, where every SSE ``data:`` line is a complete
``GenerateContentResponse``, no ``[DONE]`` sentinel follows, and the chunk carrying a
``finishReason`` is the last one. Errors are Google's ``{"error": {"code", "message", "status",
"details"}}``, whose ``details`` may carry a ``google.rpc.RetryInfo`` (rate limits) or a
``google.rpc.ErrorInfo`` (``API_KEY_INVALID`` arrives as a 400, not a 401).

References: https://ai.google.dev/api/generate-content, https://ai.google.dev/api/caching#Content,
https://ai.google.dev/gemini-api/docs/troubleshooting.
"""

from __future__ import annotations

import mimetypes
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import (
    ContentBlocked,
    InvalidRequest,
    UpstreamAuthError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)

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
from .schema import (
    AssistantMessage,
    ChatRequest,
    Content,
    DeveloperMessage,
    FunctionDefinition,
    ImagePart,
    Message,
    NamedToolChoice,
    SystemMessage,
    ToolChoice,
    ToolMessage,
    content_text,
)

# Gemini ``Candidate.finishReason`` -> OpenAI ``finish_reason``. Reasons not listed (OTHER,
# LANGUAGE, MALFORMED_FUNCTION_CALL, ...) end the answer without a better OpenAI word: "stop".
FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
}

# OpenAI ``tool_choice`` -> Gemini ``functionCallingConfig.mode``.
TOOL_CHOICE_MODES: dict[str, str] = {"none": "NONE", "auto": "AUTO", "required": "ANY"}

# ``google.rpc.ErrorInfo`` reasons that mean the gateway's own key is bad (sent as HTTP 400).
_KEY_REASONS = frozenset({"API_KEY_INVALID"})
_RETRY_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")  # protobuf Duration JSON: "30s", "1.5s"


class GeminiAdapter:
    """Translation between OpenAI chat completions and Gemini ``generateContent``."""

    framing: Framing = "sse"

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        """The ``generateContent`` (or ``streamGenerateContent?alt=sse``) call for ``request``."""
        system, contents = _contents(request.messages)
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        config = _generation_config(request)
        if config:
            body["generationConfig"] = config
        if request.tools:
            declarations = [_declaration(tool.function) for tool in request.tools]
            body["tools"] = [{"functionDeclarations": declarations}]
            if request.tool_choice is not None:
                body["toolConfig"] = {"functionCallingConfig": _calling_config(request.tool_choice)}
        # ``user`` has no counterpart in the Developer API's generateContent: it is not sent.
        version = target.options.get("api_version", "v1beta")
        model = target.model.removeprefix("models/")
        action = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        headers = {"Content-Type": "application/json", **target.headers}
        if target.api_key is not None:
            headers["x-goog-api-key"] = target.api_key
        return UpstreamRequest(
            url=f"{target.base_url}/{version}/models/{model}:{action}",
            headers=headers,
            body=orjson.dumps(body),
            stream=request.stream,
        )

    def parse_response(self, body: bytes, target: Target) -> Completion:
        """Translate a ``GenerateContentResponse``; a prompt or answer blocked for safety raises."""
        provider = target.provider
        payload = load_json(body, provider)
        try:
            candidate = _first_candidate(payload, provider)
            text, calls = _read_parts(candidate)
            reason = _finish_reason(candidate.get("finishReason"), bool(calls))
            usage = _usage(payload.get("usageMetadata"))
            served = str(payload.get("modelVersion") or target.model)
            completion_id = str(payload.get("responseId") or new_completion_id())
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(
                f"{provider} returned an unexpected generateContent body ({exc!r})",
                provider=provider,
            ) from exc
        if reason == "content_filter" and not text and not calls:
            raise ContentBlocked(
                f"{provider} blocked the answer ({candidate.get('finishReason')})",
                provider=provider,
            )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if calls and not text else text,
        }
        if calls:
            message["tool_calls"] = calls
        openai_body = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            ],
            "usage": usage.to_openai(),
        }
        return Completion(body=openai_body, served_model=served, usage=usage, finish_reason=reason)

    def new_stream(self, target: Target) -> StreamState:
        """Fresh state; ``scratch["tools"]`` counts the tool calls emitted so far."""
        return StreamState(
            id=new_completion_id(),
            model=target.model,
            provider=target.provider,
            scratch={"tools": 0},
        )

    def parse_stream_event(self, event: StreamEvent, state: StreamState) -> list[dict[str, Any]]:
        """OpenAI chunks for one streamed ``GenerateContentResponse``."""
        if not event.data.strip():
            return []
        payload = load_json(event.data, state.provider)
        try:
            return _stream_chunks(payload, state)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamProtocolError(
                f"{state.provider} sent an unexpected stream chunk ({exc!r})",
                provider=state.provider,
            ) from exc

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, target: Target
    ) -> UpstreamError:
        """The gateway error for Google's error body (or, if not JSON, for the status alone)."""
        try:
            payload = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            payload = None
        return _classify(status, headers, payload, target.provider)


# -- request ---------------------------------------------------------------------------------


def _contents(messages: list[Message]) -> tuple[list[str], list[dict[str, Any]]]:
    """(system texts, Gemini ``contents``) with consecutive same-role turns merged.

    Gemini has no tool role: tool results are ``functionResponse`` parts of a user turn, so
    consecutive results (and any user text right after them) end up in one turn.
    """
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call id -> function name, for functionResponse
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if isinstance(message, SystemMessage | DeveloperMessage):
            if not isinstance(message.content, str) and any(
                isinstance(part, ImagePart) for part in message.content
            ):
                raise InvalidRequest(
                    f"{where}: Gemini system instructions take text only", param="messages"
                )
            system.append(content_text(message.content))
            continue
        if isinstance(message, AssistantMessage):
            role = "model"
            parts = _parts(message.content, where)
            for call in message.tool_calls or []:
                call_names[call.id] = call.function.name
                args = _call_arguments(call.function.arguments, f"{where}.tool_calls")
                parts.append({"functionCall": {"name": call.function.name, "args": args}})
        elif isinstance(message, ToolMessage):
            role = "user"
            name = call_names.get(message.tool_call_id)
            if name is None:
                raise InvalidRequest(
                    f"{where}: tool_call_id {message.tool_call_id!r} matches no earlier assistant "
                    "tool call (Gemini needs the function name of every tool result)",
                    param="messages",
                )
            response = _tool_response(content_text(message.content))
            parts = [{"functionResponse": {"name": name, "response": response}}]
        else:
            role = "user"
            parts = _parts(message.content, where)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _parts(content: Content | None, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, ImagePart):
            parts.append(_image(part.image_url.url, where))
        elif part.text:
            parts.append({"text": part.text})
    return parts


def _image(url: str, where: str) -> dict[str, Any]:
    """``inlineData`` for a base64 data: URL, ``fileData`` for an http(s) URL."""
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        mime, *params = header.split(";")
        if not comma or "base64" not in params or not mime:
            raise InvalidRequest(
                f"{where}: image data URLs must look like data:<mime type>;base64,<data>",
                param="messages",
            )
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("https://", "http://")):
        # FileData.mimeType is optional in the Developer API: sent only when the URL tells it.
        file_data = {"fileUri": url}
        guessed, _ = mimetypes.guess_type(url.split("?", 1)[0])
        if guessed:
            file_data = {"mimeType": guessed, **file_data}
        return {"fileData": file_data}
    raise InvalidRequest(
        f"{where}: Gemini takes images as data: URLs or http(s) URLs, not {url[:30]!r}",
        param="messages",
    )


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _call_arguments(arguments: str, where: str) -> dict[str, Any]:
    args = _json_object(arguments) if arguments.strip() else {}
    if args is None:
        raise InvalidRequest(
            f"{where}: function arguments must be a JSON object for Gemini", param="messages"
        )
    return args


def _tool_response(text: str) -> dict[str, Any]:
    """``functionResponse.response`` must be an object: JSON objects pass, the rest is wrapped."""
    value = _json_object(text)
    return value if value is not None else {"result": text}


def _generation_config(request: ChatRequest) -> dict[str, Any]:
    fields = {
        "temperature": request.temperature,
        "topP": request.top_p,
        "maxOutputTokens": request.output_limit,
        "stopSequences": request.stop_list or None,
        "seed": request.seed,
        # Some Gemini models reject penalties outright, so a client's explicit 0 is not sent.
        "presencePenalty": request.presence_penalty or None,
        "frequencyPenalty": request.frequency_penalty or None,
    }
    config: dict[str, Any] = {key: value for key, value in fields.items() if value is not None}
    response_format = request.response_format
    if response_format is not None and response_format.type != "text":
        config["responseMimeType"] = "application/json"
        schema = response_format.json_schema.schema_ if response_format.json_schema else None
        if response_format.type == "json_schema" and schema is not None:
            # responseJsonSchema takes JSON Schema as OpenAI clients write it; responseSchema
            # is Google's OpenAPI-subset Schema object and would reject or misread parts of it.
            config["responseJsonSchema"] = schema
    return config


def _declaration(function: FunctionDefinition) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function.name}
    if function.description:
        declaration["description"] = function.description
    if function.parameters is not None:
        # OpenAI parameters are JSON Schema: Gemini's parametersJsonSchema takes them verbatim
        # (additionalProperties, $defs, type arrays), where ``parameters`` wants OpenAPI Schema.
        declaration["parametersJsonSchema"] = function.parameters
    return declaration


def _calling_config(choice: ToolChoice) -> dict[str, Any]:
    if isinstance(choice, NamedToolChoice):
        return {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
    return {"mode": TOOL_CHOICE_MODES[choice]}


# -- response --------------------------------------------------------------------------------


def _first_candidate(payload: Any, provider: str) -> dict[str, Any]:
    candidates = payload.get("candidates")
    if not candidates:
        raise _prompt_block(payload, provider) or UpstreamProtocolError(
            f"{provider} returned no candidates", provider=provider
        )
    candidate = candidates[0]
    if not isinstance(candidate, dict):
        raise TypeError("candidates[0] is not an object")
    return candidate


def _prompt_block(payload: dict[str, Any], provider: str) -> ContentBlocked | None:
    """The error for a prompt refused before generation (no candidates, a blockReason)."""
    reason = (payload.get("promptFeedback") or {}).get("blockReason")
    return (
        ContentBlocked(f"{provider} blocked the prompt ({reason})", provider=provider)
        if reason
        else None
    )


def _read_parts(candidate: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(answer text, OpenAI tool calls) of a candidate; thought summaries are not the answer."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if part.get("thought"):
            continue
        if "functionCall" in part:
            call = part["functionCall"]
            calls.append(
                {
                    # Gemini ids, when present, are kept; otherwise one is made for the client.
                    "id": str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
                    "type": "function",
                    "function": {
                        "name": str(call["name"]),
                        "arguments": orjson.dumps(call.get("args") or {}).decode(),
                    },
                }
            )
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
    return "".join(texts), calls


def _finish_reason(raw: Any, has_calls: bool) -> str:
    reason = FINISH_REASONS.get(str(raw), "stop")
    # Gemini says STOP after function calls; OpenAI clients look for "tool_calls".
    return "tool_calls" if has_calls and reason == "stop" else reason


def _usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    # Prompt: promptTokenCount (cached tokens included) plus tool-use prompt tokens; completion:
    # candidates plus thinking tokens, which are billed as output. Sums to totalTokenCount.
    return Usage(
        prompt_tokens=int(raw.get("promptTokenCount") or 0)
        + int(raw.get("toolUsePromptTokenCount") or 0),
        completion_tokens=int(raw.get("candidatesTokenCount") or 0)
        + int(raw.get("thoughtsTokenCount") or 0),
    )


def _stream_chunks(payload: Any, state: StreamState) -> list[dict[str, Any]]:
    if not isinstance(payload, dict):
        raise TypeError("stream chunk is not a JSON object")
    if "error" in payload:
        error = payload["error"]
        code = error.get("code") if isinstance(error, dict) else None
        raise _classify(code if isinstance(code, int) else 500, {}, payload, state.provider)
    if payload.get("responseId") and not state.role_sent:
        state.id = str(payload["responseId"])  # every chunk repeats it; fix it before chunk one
    if payload.get("modelVersion"):
        state.served_model = str(payload["modelVersion"])
    if payload.get("usageMetadata"):
        state.usage = _usage(payload["usageMetadata"])  # repeated per chunk: the last one wins
    candidates = payload.get("candidates")
    if not candidates:
        block = _prompt_block(payload, state.provider)
        if block is None:
            return []  # e.g. a usage-only chunk
        if not state.role_sent:
            raise block
        return [_finish(state, "content_filter")]
    candidate = candidates[0]
    text, calls = _read_parts(candidate)
    chunks: list[dict[str, Any]] = []
    if text:
        chunks.append(state.chunk({"content": text}))
    for call in calls:
        index = state.scratch["tools"]
        state.scratch["tools"] = index + 1
        function = call["function"]
        opening = {
            "index": index,
            "id": call["id"],
            "type": "function",
            "function": {"name": function["name"], "arguments": ""},
        }
        chunks.append(state.chunk({"tool_calls": [opening]}))
        arguments = {"index": index, "function": {"arguments": function["arguments"]}}
        chunks.append(state.chunk({"tool_calls": [arguments]}))
    raw_reason = candidate.get("finishReason")
    if raw_reason:
        reason = _finish_reason(raw_reason, state.scratch["tools"] > 0)
        if reason == "content_filter" and not state.role_sent:
            raise ContentBlocked(
                f"{state.provider} blocked the answer ({raw_reason})", provider=state.provider
            )
        chunks.append(_finish(state, reason))
    return chunks


def _finish(state: StreamState, reason: str) -> dict[str, Any]:
    state.finish_reason = reason
    state.done = True
    return state.chunk({}, reason)


# -- errors ----------------------------------------------------------------------------------


def _classify(
    status: int, headers: Mapping[str, str], payload: Any, provider: str
) -> UpstreamError:
    if isinstance(payload, list) and len(payload) == 1:
        payload = payload[0]  # errors inside a JSON-array stream (no alt=sse) come wrapped
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        error = {}
    grpc_status = error.get("status") if isinstance(error.get("status"), str) else None
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    details = [d for d in error.get("details") or [] if isinstance(d, dict)]
    reasons = {d.get("reason") for d in details if str(d.get("@type", "")).endswith("ErrorInfo")}
    if reasons & _KEY_REASONS:
        # Never echo Google's text here: it may quote the key it rejected.
        return UpstreamAuthError(
            f"{provider} rejected the gateway's API key (HTTP {status} API_KEY_INVALID)",
            provider=provider,
            upstream_status=status,
        )
    label = grpc_status or f"HTTP {status}"
    text = f"{label}: {message}" if message else label
    retry_after = _retry_delay(details)
    if retry_after is None:
        retry_after = parse_retry_after(headers)
    if status == 504 or grpc_status == "DEADLINE_EXCEEDED":
        return UpstreamTimeout(
            f"{provider} timed out: {text}",
            provider=provider,
            upstream_status=status,
            retry_after=retry_after,
        )
    if grpc_status == "FAILED_PRECONDITION":
        # E.g. "free tier not available in your country": the gateway's account, not the
        # client's request, so another provider may well answer.
        return UpstreamError(
            f"{provider} refused the request: {text}", provider=provider, upstream_status=status
        )
    return classify_status(status, text, provider=provider, retry_after=retry_after)


def _retry_delay(details: list[dict[str, Any]]) -> float | None:
    for detail in details:
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
