"""``GET /openapi.json``: the public API as an OpenAPI 3.1 document.

The chat request's schema is generated from the model that validates it
(``providers.schema.ChatRequest``), so the document cannot drift from what the gateway accepts;
so are the other ingress formats' (``openapi_ingress``: Anthropic Messages, Responses,
embeddings). The rest is written here and kept true by ``tests/test_openapi.py`` (every documented
path is a route, every public route is documented) and by the schemathesis run in
``tests/test_fuzz.py``. The admin API (``/admin/...``) is operator-only and left out.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

from gateway import __version__
from providers.schema import ChatRequest

from .openapi_ingress import ingress_paths, ingress_schemas

# Every status the error middleware can produce for each operation, with when.
_CHAT_ERRORS = {
    "400": "Invalid JSON or request (`invalid_json`, `invalid_request`), or the provider "
    "rejected it (`upstream_invalid_request`, `content_blocked`)",
    "401": "No or unknown team key (`missing_api_key`, `invalid_api_key`)",
    "403": "The team may not use this route or alias (`model_not_allowed`)",
    "404": "No such route or alias (`model_not_found`)",
    "413": "Body over the size limit (`payload_too_large`)",
    "429": "The provider is rate limiting (`upstream_rate_limited`); `Retry-After` passed on",
    "502": "Bad or cut upstream answer, unreachable provider, upstream auth or model error",
    "503": "Provider overloaded, no eligible provider (residency), all providers failed",
    "504": "A provider's timeout, or the request's deadline ran out",
}
_AUTH_ERRORS = {"401": "No or unknown team key (`missing_api_key`, `invalid_api_key`)"}


def _error_responses(errors: dict[str, str]) -> dict[str, Any]:
    return {
        status: {
            "description": text,
            "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status, text in errors.items()
    }


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _schemas() -> dict[str, Any]:
    request = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = request.pop("$defs")
    schemas["ChatRequest"] = request
    nullable_string = {"type": ["string", "null"]}
    schemas["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": nullable_string,
                    "code": nullable_string,
                    "attempts": {
                        "type": "array",
                        "description": "each attempt the router made, in order",
                        "items": {"type": "object"},
                    },
                },
            }
        },
    }
    schemas["ChatCompletion"] = {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "chat.completion"},
            "created": {"type": "integer"},
            "model": {"type": "string"},
            "choices": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "message", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer"},
                        "message": {"type": "object", "required": ["role"]},
                        "finish_reason": nullable_string,
                    },
                },
            },
            "usage": {"type": ["object", "null"]},
        },
    }
    schemas["Model"] = {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    }
    schemas["ModelList"] = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
        },
    }
    schemas["Feedback"] = {
        "type": "object",
        "required": ["request_id", "score"],
        "properties": {
            "request_id": {"type": "string", "minLength": 1},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "comment": {"type": "string"},
        },
    }
    schemas["FeedbackResult"] = {
        "type": "object",
        "required": ["ok", "cache_corrected"],
        "properties": {
            "ok": {"type": "boolean"},
            "cache_corrected": {"type": "boolean"},
            # A curated answer given directly was withdrawn for that kind of question.
            "knowledge_withdrawn": {"type": "boolean"},
        },
    }
    schemas["Health"] = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "checks": {"type": "object"}},
    }
    return schemas


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (built once per process)."""
    public: list[dict[str, list[str]]] = []  # no security requirement
    paths: dict[str, Any] = {
        "/v1/chat/completions": {
            "post": {
                "operationId": "createChatCompletion",
                "summary": "OpenAI chat completions, routed by the team's policy",
                "parameters": [
                    {"$ref": "#/components/parameters/Task"},
                    {"$ref": "#/components/parameters/Regions"},
                    {"$ref": "#/components/parameters/Deadline"},
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}
                    },
                },
                "responses": {
                    "200": {
                        "description": "The answer; `text/event-stream` of "
                        "`chat.completion.chunk` events when `stream` is true",
                        "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ChatCompletion"}
                            },
                            "text/event-stream": {"schema": {"type": "string"}},
                        },
                    },
                    **_error_responses(_CHAT_ERRORS),
                },
            }
        },
        **ingress_paths(),
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The routes and aliases (chat and embedding) the caller's team may use; "
                "an Anthropic client (it sends `anthropic-version`) gets Anthropic's list shape",
                "responses": {
                    "200": _ok("ModelList", "The team's models"),
                    **_error_responses(_AUTH_ERRORS),
                },
            }
        },
        "/v1/models/{model}": {
            "get": {
                "operationId": "retrieveModel",
                "parameters": [
                    {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _ok("Model", "One route or alias"),
                    **_error_responses(
                        {**_AUTH_ERRORS, "404": "Not a model the team may use (`model_not_found`)"}
                    ),
                },
            }
        },
        "/v1/feedback": {
            "post": {
                "operationId": "createFeedback",
                "summary": "Grade a recent answer of the team (a low score corrects the cache)",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Feedback"}}
                    },
                },
                "responses": {
                    "200": _ok("FeedbackResult", "Recorded"),
                    **_error_responses(
                        {
                            "400": "Invalid JSON, `request_id` or `score` (`invalid_request`)",
                            **_AUTH_ERRORS,
                            "404": "No recent request with that id from this team "
                            "(`request_not_found`)",
                            "413": "Body over the size limit (`payload_too_large`)",
                        }
                    ),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "liveness",
                "security": public,
                "responses": {"200": _ok("Health", "The process serves HTTP")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "security": public,
                "responses": {"200": _ok("Health", "Ready; `checks` says what is degraded")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "security": public,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "security": public,
                "responses": {
                    "200": {
                        "description": "This document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "knowledge-gateway",
            "version": __version__,
            "description": "LLM gateway speaking OpenAI chat completions, OpenAI Responses, "
            "embeddings and Anthropic Messages. Errors are "
            '`{"error": {"message", "type", "param", "code"}}`, on `/v1/messages` Anthropic\'s '
            '`{"type": "error", "error": {"type", "message"}}`.',
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "A team key"},
                "apiKeyAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "A team key, as Anthropic clients send it (/v1/messages)",
                },
            },
            "headers": {
                "RequestId": {
                    "description": "The gateway's id for the request",
                    "schema": {"type": "string"},
                }
            },
            "parameters": {
                "Task": {
                    "name": "x-gateway-task",
                    "in": "header",
                    "description": "The task type (letters, digits, '-', '_'; up to 64)",
                    "schema": {"type": "string"},
                },
                "Regions": {
                    "name": "x-gateway-regions",
                    "in": "header",
                    "description": "Comma-separated regions narrowing the team's allowed ones",
                    "schema": {"type": "string"},
                },
                "Deadline": {
                    "name": "x-gateway-deadline-ms",
                    "in": "header",
                    "description": "The overall deadline in ms, up to routing.max_deadline_s",
                    "schema": {"type": "string"},
                },
            },
            "schemas": {**_schemas(), **ingress_schemas()},
        },
    }


async def get_openapi(request: web.Request) -> web.Response:
    """``GET /openapi.json`` (no authentication)."""
    return web.Response(
        body=orjson.dumps(openapi_document()),
        content_type="application/json",
    )
