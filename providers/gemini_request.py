"""Building a Gemini ``generateContent`` request from the OpenAI chat format (pure)."""

from __future__ import annotations

import mimetypes
from typing import Any

import orjson

from .errors import UnsupportedRequest
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

# OpenAI ``tool_choice`` -> Gemini ``functionCallingConfig.mode``.
TOOL_CHOICE_MODES: dict[str, str] = {"none": "NONE", "auto": "AUTO", "required": "ANY"}


def contents_of(messages: list[Message]) -> tuple[list[str], list[dict[str, Any]]]:
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
                raise UnsupportedRequest(
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
                raise UnsupportedRequest(
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
            raise UnsupportedRequest(
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
    raise UnsupportedRequest(
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
        raise UnsupportedRequest(
            f"{where}: function arguments must be a JSON object for Gemini", param="messages"
        )
    return args


def _tool_response(text: str) -> dict[str, Any]:
    """``functionResponse.response`` must be an object: JSON objects pass, the rest is wrapped."""
    value = _json_object(text)
    return value if value is not None else {"result": text}


def generation_config(request: ChatRequest, limit: int | None) -> dict[str, Any]:
    """``generationConfig``; ``limit`` is the output limit (the client's or the model's)."""
    fields = {
        "temperature": request.temperature,
        "topP": request.top_p,
        "maxOutputTokens": limit,
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


def declaration(function: FunctionDefinition) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function.name}
    if function.description:
        declaration["description"] = function.description
    if function.parameters is not None:
        # OpenAI parameters are JSON Schema: Gemini's parametersJsonSchema takes them verbatim
        # (additionalProperties, $defs, type arrays), where ``parameters`` wants OpenAPI Schema.
        declaration["parametersJsonSchema"] = function.parameters
    return declaration


def calling_config(choice: ToolChoice) -> dict[str, Any]:
    if isinstance(choice, NamedToolChoice):
        return {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
    return {"mode": TOOL_CHOICE_MODES[choice]}


# -- response --------------------------------------------------------------------------------
