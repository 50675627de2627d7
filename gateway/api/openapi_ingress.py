"""The OpenAPI description of the other ingress formats: Anthropic Messages (and its token
count), OpenAI Responses and embeddings.

As for chat completions, each request schema is generated from the model that validates it, its
definitions prefixed (``Anthropic…``, ``Responses…``) so that names the formats share (a text
block, a JSON-schema format) do not collide; ``gateway.api.openapi`` merges these in.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from providers.embeddings import EmbeddingRequest

from .ingress.anthropic_schema import CountTokensRequest, MessagesRequest
from .ingress.responses_schema import ResponsesRequest

_ANTHROPIC_ERRORS = {
    "400": "Invalid JSON or request (`invalid_request_error`; the message names the field), "
    "or the provider rejected it",
    "401": "No or unknown team key in `x-api-key` or `Authorization` (`authentication_error`)",
    "403": "The team may not use this route or alias (`permission_error`)",
    "404": "No such route or alias (`not_found_error`)",
    "413": "Body over the size limit (`request_too_large`)",
    "429": "The team is over a limit, or the provider is rate limiting (`rate_limit_error`); "
    "`Retry-After`",
    "502": "Bad or cut upstream answer, unreachable provider, upstream auth or model error "
    "(`api_error`)",
    "503": "No eligible provider left after filtering, e.g. by residency (`api_error`)",
    "504": "A provider's timeout, or the request's deadline ran out (`timeout_error`)",
    "529": "Providers overloaded, or every attempt failed (`overloaded_error`)",
}
_OPENAI_ERRORS = {
    "400": "Invalid JSON or request (`invalid_json`, `invalid_request`, `wrong_model_kind`), or "
    "the provider rejected it",
    "401": "No or unknown team key (`missing_api_key`, `invalid_api_key`)",
    "403": "The team may not use this route or alias (`model_not_allowed`)",
    "404": "No such route or alias (`model_not_found`)",
    "413": "Body over the size limit (`payload_too_large`)",
    "429": "The team is over a limit (`rate_limit_exceeded`), or the provider is rate limiting "
    "(`upstream_rate_limited`); `Retry-After`",
    "502": "Bad or cut upstream answer, unreachable provider, upstream auth or model error",
    "503": "Provider overloaded, no eligible provider (residency), all providers failed",
    "504": "A provider's timeout, or the request's deadline ran out",
}
_HEADERS: list[dict[str, Any]] = [
    {"$ref": "#/components/parameters/Task"},
    {"$ref": "#/components/parameters/Regions"},
    {"$ref": "#/components/parameters/Deadline"},
]
_ANTHROPIC_HEADERS: list[dict[str, Any]] = [
    *_HEADERS,
    {
        "name": "anthropic-version",
        "in": "header",
        "description": "Accepted, not needed: the gateway speaks one version of the format",
        "schema": {"type": "string"},
    },
]
# A team key in Anthropic's header or in OpenAI's.
_ANTHROPIC_SECURITY: list[dict[str, list[str]]] = [{"apiKeyAuth": []}, {"bearerAuth": []}]


def _request_schema(model: type[BaseModel], prefix: str, name: str) -> dict[str, Any]:
    """``model``'s JSON schema as ``name``, its definitions prefixed with ``prefix``."""
    schema = model.model_json_schema(ref_template=f"#/components/schemas/{prefix}{{model}}")
    defs = schema.pop("$defs", {})
    return {name: schema, **{f"{prefix}{key}": value for key, value in defs.items()}}


def _errors(errors: dict[str, str], schema: str) -> dict[str, Any]:
    return {
        status: {
            "description": text,
            "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
        for status, text in errors.items()
    }


def _operation(
    operation_id: str,
    summary: str,
    request: str,
    answer: str,
    description: str,
    errors: dict[str, Any],
    *,
    stream: bool = True,
    parameters: list[dict[str, Any]] = _HEADERS,
) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": answer}}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}
                },
            },
            "responses": {
                "200": {
                    "description": description,
                    "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
                    "content": content,
                },
                **errors,
            },
        }
    }


def ingress_paths() -> dict[str, Any]:
    """The paths of ``/v1/messages``, its token count, ``/v1/responses`` and ``/v1/embeddings``."""
    anthropic_errors = _errors(_ANTHROPIC_ERRORS, "AnthropicError")
    openai_errors = _errors(_OPENAI_ERRORS, "Error")
    messages = _operation(
        "createMessage",
        "Anthropic Messages, routed by the team's policy to any provider",
        "MessagesRequest",
        "#/components/schemas/AnthropicMessage",
        "An Anthropic `message`; `text/event-stream` of Anthropic's events when `stream` is true",
        anthropic_errors,
        parameters=_ANTHROPIC_HEADERS,
    )
    messages["post"]["security"] = _ANTHROPIC_SECURITY
    count = _operation(
        "countMessageTokens",
        "The gateway's estimate of a Messages request's input tokens (~4 characters a token; "
        "the `x-gateway-token-count` header says so)",
        "CountTokensRequest",
        "#/components/schemas/AnthropicTokenCount",
        '`{"input_tokens"}`, an estimate',
        {key: value for key, value in anthropic_errors.items() if key < "429"},
        stream=False,
        parameters=_ANTHROPIC_HEADERS[-1:],
    )
    count["post"]["security"] = _ANTHROPIC_SECURITY
    return {
        "/v1/messages": messages,
        "/v1/messages/count_tokens": count,
        "/v1/responses": _operation(
            "createResponse",
            "OpenAI Responses (stateless), routed by the team's policy to any provider",
            "ResponsesRequest",
            "#/components/schemas/Response",
            "A `response`; `text/event-stream` of Responses events when `stream` is true",
            openai_errors,
        ),
        "/v1/embeddings": _operation(
            "createEmbeddings",
            "Embeddings from the route's embedding models (or the gateway's own model)",
            "EmbeddingRequest",
            "#/components/schemas/EmbeddingList",
            "A `list` of `embedding` objects, floats or base64",
            openai_errors,
            stream=False,
        ),
    }


def ingress_schemas() -> dict[str, Any]:
    """Request schemas (generated) and answer schemas (written) of the ingress formats."""
    usage = {
        "type": "object",
        "required": ["input_tokens", "output_tokens"],
        "properties": {
            "input_tokens": {"type": "integer"},
            "output_tokens": {"type": "integer"},
        },
    }
    return {
        **_request_schema(MessagesRequest, "Anthropic", "MessagesRequest"),
        **_request_schema(CountTokensRequest, "Anthropic", "CountTokensRequest"),
        **_request_schema(ResponsesRequest, "Responses", "ResponsesRequest"),
        **_request_schema(EmbeddingRequest, "Embedding", "EmbeddingRequest"),
        "AnthropicMessage": {
            "type": "object",
            "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
            "properties": {
                "id": {"type": "string"},
                "type": {"const": "message"},
                "role": {"const": "assistant"},
                "model": {"type": "string"},
                "content": {"type": "array", "items": {"type": "object", "required": ["type"]}},
                "stop_reason": {"type": ["string", "null"]},
                "stop_sequence": {"type": ["string", "null"]},
                "usage": usage,
            },
        },
        "AnthropicTokenCount": {
            "type": "object",
            "required": ["input_tokens"],
            "properties": {"input_tokens": {"type": "integer"}},
        },
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
                "request_id": {"type": "string"},
            },
        },
        "Response": {
            "type": "object",
            "required": ["id", "object", "created_at", "status", "model", "output"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "response"},
                "created_at": {"type": "integer"},
                "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
                "model": {"type": "string"},
                "output": {"type": "array", "items": {"type": "object", "required": ["type"]}},
                "usage": {"type": ["object", "null"]},
            },
        },
        "EmbeddingList": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"const": "list"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["object", "index", "embedding"],
                        "properties": {
                            "object": {"const": "embedding"},
                            "index": {"type": "integer"},
                            "embedding": {
                                "oneOf": [
                                    {"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "contentEncoding": "base64"},
                                ]
                            },
                        },
                    },
                },
                "model": {"type": "string"},
                "usage": {"type": "object"},
            },
        },
    }
