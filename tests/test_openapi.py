"""``GET /openapi.json``: published without a key, valid, and true to the app's routes."""

from __future__ import annotations

from typing import Any

import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api.openapi import openapi_document
from providers.schema import ChatRequest

# Routes that exist but are not the public API: operators' endpoints.
_NOT_PUBLIC_PREFIXES = ("/admin/",)
_PUBLIC_PREFIXES = ("/v1/", "/healthz", "/readyz", "/metrics", "/openapi.json")


def _app_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "HEAD":
            continue
        routes.add((route.method.lower(), path))
    return routes


def _documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item}


async def test_published_without_a_key(gateway: TestClient[Any, Any]) -> None:
    response = await gateway.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    document = await response.json()
    assert document == openapi_document()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    # schemathesis parses it (resolving every $ref) into operations.
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "POST /v1/chat/completions",
        "GET /v1/models",
        "GET /v1/models/{model}",
        "POST /v1/feedback",
        "GET /healthz",
        "GET /readyz",
    }


async def test_every_documented_path_is_a_route_and_every_public_route_is_documented(
    gateway: TestClient[Any, Any],
) -> None:
    routes = _app_routes(gateway.app)
    documented = _documented(openapi_document())
    assert documented <= routes, f"documented but not served: {documented - routes}"
    public = {
        (method, path)
        for method, path in routes
        if path.startswith(_PUBLIC_PREFIXES) and not path.startswith(_NOT_PUBLIC_PREFIXES)
    }
    assert public <= documented, f"served but not documented: {public - documented}"


def test_only_health_metrics_and_the_document_are_public() -> None:
    document = openapi_document()
    assert document["security"] == [{"bearerAuth": []}]
    public = {
        path
        for path, item in document["paths"].items()
        for operation in item.values()
        if operation.get("security") == []
    }
    assert public == {"/healthz", "/readyz", "/metrics", "/openapi.json"}


async def test_documented_statuses_are_what_the_gateway_answers(
    gateway: TestClient[Any, Any],
) -> None:
    chat = openapi_document()["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat) == {"200", "400", "401", "403", "404", "413", "429", "502", "503", "504"}
    # Observed: no key is a 401 in the documented error shape.
    response = await gateway.post("/v1/chat/completions", json={})
    assert response.status == 401
    body = await response.json()
    assert set(body["error"]) >= {"message", "type", "param", "code"}


def test_the_request_schema_is_the_validating_model() -> None:
    schemas = openapi_document()["components"]["schemas"]
    generated = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = generated.pop("$defs")
    assert schemas["ChatRequest"] == generated
    for name, schema in defs.items():
        assert schemas[name] == schema
