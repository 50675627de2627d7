"""OpenTelemetry traces of each request, exported over OTLP/HTTP when an endpoint is configured.

``GATEWAY_OTLP_ENDPOINT`` unset: no tracer exists and the request path pays one ``is None``
check. Set: when a request ends, its decision record becomes a trace, built after the fact with
the recorded timings (so nothing in the pipeline opens or carries spans):

- a SERVER span ``POST /v1/chat/completions`` (the client's ``traceparent`` is honoured), with
  the request id, team, route, task type, source, cache and knowledge outcomes;
- one CLIENT span per attempt, ``chat {gen_ai.request.model}``, following OpenTelemetry's GenAI
  semantic conventions: ``gen_ai.operation.name``, ``gen_ai.provider.name`` (and the older
  ``gen_ai.system``), ``gen_ai.request.model`` (the pinned version), ``gen_ai.response.model``
  (the version served), ``gen_ai.usage.input_tokens``/``output_tokens`` on the attempt that
  answered, ``error.type`` on failed ones, ``server.address``/``server.port``.

Spans go through a ``BatchSpanProcessor``: the OTLP export runs in the SDK's worker thread. The
tracer provider is the application's own, never the process-global one. No prompt text and no
keys are ever put on a span.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from providers.schema import ChatRequest

    from .decisions import Attempt, Decision
    from .policy import Policy
    from .settings import Settings

SERVER_SPAN = "POST /v1/chat/completions"
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


class _Model:
    """What an attempt span needs of a model alias, resolved once per policy."""

    __slots__ = ("attributes", "request_model")

    def __init__(self, request_model: str, attributes: dict[str, Any]) -> None:
        self.request_model = request_model
        self.attributes = attributes


def _models(policy: Policy) -> dict[str, _Model]:
    providers = {p.name: p for p in policy.providers}
    found = {}
    for model in policy.models:
        provider = providers[model.provider]
        family = provider.family_name
        url = urlsplit(provider.base_url)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": OPERATION,
            "gen_ai.provider.name": _WELL_KNOWN.get(family, family),
            "gen_ai.system": _WELL_KNOWN.get(family, family),
            "gen_ai.request.model": model.id,
            "gateway.model_alias": model.name,
            "gateway.provider": provider.name,
            "gateway.region": provider.region,
        }
        if url.hostname:
            attributes["server.address"] = url.hostname
            attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        found[model.name] = _Model(model.id, attributes)
    return found


class Tracing:
    """Turns finished requests into spans; one per application."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        service_name: str = "knowledge-gateway",
        processor: SpanProcessor | None = None,
    ) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(processor or BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("knowledge-gateway")
        self._propagator = TraceContextTextMapPropagator()
        self._policy: Policy | None = None
        self._models: dict[str, _Model] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """A tracer exporting to ``settings.otlp_endpoint``, or ``None`` when it is unset."""
        if not settings.otlp_endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls(
            OTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=5),
            service_name=settings.otlp_service_name,
        )

    def close(self) -> None:
        """Export what is queued and stop the worker (blocking: call it in a thread)."""
        self.provider.shutdown()

    def record(
        self,
        policy: Policy,
        decision: Decision,
        chat: ChatRequest,
        headers: Mapping[str, str],
        *,
        cache: str | None = None,
        knowledge: str | None = None,
    ) -> None:
        """The spans of one finished request."""
        if policy is not self._policy:  # a reload swapped the policy
            self._models, self._policy = _models(policy), policy
        end_ns = time.time_ns() if decision.ended_at is None else int(decision.ended_at * 1e9)
        start_ns = end_ns - int((decision.total_ms or 0.0) * 1e6)
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "http.route": "/v1/chat/completions",
            "http.response.status_code": decision.status,
            "gateway.request_id": decision.request_id,
            "gateway.team": decision.team,
            "gateway.route": decision.route,
            "gateway.task_type": decision.task_type,
            "gateway.source": decision.source,
            "gateway.stream": decision.stream,
            "gateway.fallbacks": decision.fallbacks,
            "gateway.overhead_ms": decision.overhead_ms or 0.0,
            "gateway.cost_usd": decision.cost_usd,
        }
        if cache:
            attributes["gateway.cache"] = cache
        if knowledge:
            attributes["gateway.knowledge"] = knowledge
        if decision.served_model:
            attributes["gen_ai.response.model"] = decision.served_model
        if decision.ttft_ms is not None:
            attributes["gateway.ttft_ms"] = decision.ttft_ms
        span = self.tracer.start_span(
            SERVER_SPAN,
            context=self._propagator.extract(headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=start_ns,
        )
        if decision.status >= 500:
            span.set_attribute("error.type", decision.error or str(decision.status))
            span.set_status(Status(StatusCode.ERROR, decision.error))
        parent = trace.set_span_in_context(span)
        last = len(decision.attempts) - 1
        for i, attempt in enumerate(decision.attempts):
            self._attempt(parent, attempt, decision, chat, answered=i == last)
        span.end(end_time=end_ns)

    def _attempt(
        self,
        parent: Any,
        attempt: Attempt,
        decision: Decision,
        chat: ChatRequest,
        *,
        answered: bool,
    ) -> None:
        model = self._models.get(attempt.model)
        request_model = model.request_model if model else attempt.model
        attributes: dict[str, Any] = (
            dict(model.attributes) if model else {"gen_ai.operation.name": OPERATION}
        )
        if chat.max_tokens is not None or chat.max_completion_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = chat.max_completion_tokens or chat.max_tokens
        if chat.temperature is not None:
            attributes["gen_ai.request.temperature"] = float(chat.temperature)
        if chat.top_p is not None:
            attributes["gen_ai.request.top_p"] = float(chat.top_p)
        if attempt.served_model:
            attributes["gen_ai.response.model"] = attempt.served_model
        if attempt.status is not None:
            attributes["http.response.status_code"] = attempt.status
        ok = attempt.outcome == "ok"
        if ok and answered:
            attributes["gen_ai.usage.input_tokens"] = decision.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = decision.completion_tokens
        if not ok:
            attributes["error.type"] = attempt.outcome
        end_ns = int(attempt.ended_at * 1e9)
        span = self.tracer.start_span(
            f"{OPERATION} {request_model}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=end_ns - int(attempt.latency_ms * 1e6),
        )
        if not ok:
            span.set_status(Status(StatusCode.ERROR, attempt.outcome))
        span.end(end_time=end_ns)
