"""What the gateway's spans say: OpenTelemetry's GenAI semantic conventions for a chat call.

``gateway/telemetry/tracing.py`` builds the spans; this module decides their attributes: the server
span's (request, team, route, outcomes), an attempt span's (``gen_ai.*``: operation, provider,
request and response model, error type; ``server.*``) and the request parameters the client set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gateway.core.decision import Attempt, Decision
    from gateway.policy.model import Policy
    from providers.schema import ChatRequest

OPERATION = "chat"

# Provider family -> the well-known gen_ai.provider.name value (others pass through as is).
_WELL_KNOWN = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "google": "gcp.gemini",
    "xai": "x_ai",
    "grok": "x_ai",
    "mistral": "mistral_ai",
    "deepseek": "deepseek",
    "groq": "groq",
}


class SpanModel:
    """What an attempt span needs of a model alias, resolved once per policy."""

    __slots__ = ("attributes", "request_model", "span_name")

    def __init__(self, request_model: str, attributes: dict[str, Any]) -> None:
        self.request_model = request_model
        self.span_name = f"{OPERATION} {request_model}"
        self.attributes = attributes


def span_models(policy: Policy) -> dict[str, SpanModel]:
    providers = {p.name: p for p in policy.providers}
    found = {}
    for model in policy.models:
        provider = providers[model.provider]
        family = provider.family_name
        url = urlsplit(provider.base_url)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": _WELL_KNOWN.get(family, family),
            "gen_ai.request.model": model.id,
            "gateway.model_alias": model.name,
            "gateway.region": provider.region,
        }
        if url.hostname:
            attributes["server.address"] = url.hostname
            attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        found[model.name] = SpanModel(model.id, attributes)
    return found


def server_attributes(
    decision: Decision, cache: str | None, knowledge: str | None, error: str | None
) -> dict[str, Any]:
    """The server span's attributes that repeat across requests (its plan's key decides them)."""
    found: dict[str, Any] = {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "http.response.status_code": decision.status,
        "gateway.team": decision.team,
        "gateway.route": decision.route,
        "gateway.task_type": decision.task_type,
        "gateway.source": decision.source,
    }
    if cache:
        found["gateway.cache"] = cache
    if knowledge:
        found["gateway.knowledge"] = knowledge
    if error:
        found["error.type"] = error
    return found


def attempt_attributes(
    model: SpanModel | None, request: dict[str, Any], attempt: Attempt
) -> dict[str, Any]:
    """An attempt span's attributes that repeat across requests (its plan's key decides them)."""
    found: dict[str, Any] = (
        {**model.attributes, **request} if model else {"gen_ai.operation.name": OPERATION}
    )
    if attempt.served_model:
        found["gen_ai.response.model"] = attempt.served_model
    if attempt.outcome != "ok":
        found["error.type"] = attempt.outcome
        if attempt.status is not None:
            found["http.response.status_code"] = attempt.status
    return found


def request_attributes(chat: ChatRequest) -> dict[str, Any]:
    """The GenAI request parameters the client set."""
    found: dict[str, Any] = {}
    max_tokens = chat.max_completion_tokens or chat.max_tokens
    if max_tokens is not None:
        found["gen_ai.request.max_tokens"] = max_tokens
    if chat.temperature is not None:
        found["gen_ai.request.temperature"] = float(chat.temperature)
    if chat.top_p is not None:
        found["gen_ai.request.top_p"] = float(chat.top_p)
    return found
