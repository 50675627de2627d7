"""Building HTTP responses: gateway headers, JSON answers, OpenAI-style errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from gateway.core.context import RequestContext
from gateway.core.errors import GatewayError, UpstreamFailure
from gateway.policy.catalog import Candidate
from providers.base import Completion

if TYPE_CHECKING:
    from .ingress.base import Exchange


def gateway_headers(
    ctx: RequestContext, completion: Completion, candidate: Candidate | None
) -> dict[str, str]:
    headers = {
        "x-request-id": ctx.request_id,
        "x-gateway-route": ctx.route.name,
        "x-gateway-model": completion.served_model,
        "x-gateway-overhead-ms": f"{ctx.overhead_ms():.3f}",
    }
    if ctx.headers:
        headers.update(ctx.headers)
    if candidate is not None:
        decision = ctx.decision
        headers["x-gateway-provider"] = candidate.provider.name
        headers["x-gateway-region"] = candidate.region
        headers["x-gateway-regions"] = ",".join(decision.regions_sent)
        headers["x-gateway-fallbacks"] = str(decision.fallbacks)
        headers["x-gateway-task"] = ctx.task_type
    return headers


def completion_response(
    ctx: RequestContext, completion: Completion, candidate: Candidate | None, exchange: Exchange
) -> web.Response:
    """A complete answer, rendered in the client's format."""
    headers = gateway_headers(ctx, completion, candidate)
    if exchange.headers:
        headers.update(exchange.headers)
    return web.Response(
        body=exchange.render(completion), content_type="application/json", headers=headers
    )


def error_response(error: GatewayError, request_id: str) -> web.Response:
    headers = {"x-request-id": request_id, **error.headers()}
    if isinstance(error, UpstreamFailure) and error.provider:
        headers["x-gateway-provider"] = error.provider
    return web.Response(
        body=orjson.dumps(error.to_body()),
        status=error.status,
        content_type="application/json",
        headers=headers,
    )
