"""OpenTelemetry traces of each request, exported over OTLP/HTTP when an endpoint is configured.

``GATEWAY_OTLP_ENDPOINT`` unset: no tracer exists and the request path pays one ``is None``
check. Set: when a request ends, its decision record becomes a trace, built after the fact from
the recorded timings (so nothing in the pipeline opens or carries spans):

- a SERVER span ``POST /v1/chat/completions`` (the client's ``traceparent`` is continued), with
  the request id, team, route, task type, source, cache and knowledge outcomes;
- one CLIENT span per attempt, ``chat {gen_ai.request.model}``, following OpenTelemetry's GenAI
  semantic conventions: ``gen_ai.operation.name``, ``gen_ai.provider.name``,
  ``gen_ai.request.model`` (the pinned version), ``gen_ai.response.model`` (the version served),
  ``gen_ai.usage.input_tokens``/``output_tokens`` on the attempt that answered, ``error.type`` on
  failed ones, ``server.address``/``server.port``, and the request parameters that were set.

The spans are finished ``ReadableSpan`` objects handed straight to the SDK's
``BatchSpanProcessor``; its worker thread encodes them (gateway/otlp.py, a lean encoder of the
same wire format) and posts them with the SDK's OTLP/HTTP client. Building spans through a tracer
(sampler, locks, attribute validation) and the SDK's per-attribute encoder together cost about
as much CPU as the rest of the request. ``GATEWAY_OTLP_SAMPLE_RATIO`` keeps that share of
traces (by trace id, so every replica keeps the same ones; a sampled or unsampled
``traceparent`` is obeyed). No prompt text and no keys are ever put on a span.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

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
            "gen_ai.request.model": model.id,
            "gateway.model_alias": model.name,
            "gateway.region": provider.region,
        }
        if url.hostname:
            attributes["server.address"] = url.hostname
            attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
        found[model.name] = _Model(model.id, attributes)
    return found


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
_ID_MASK = (1 << 64) - 1


class Tracing:
    """Turns finished requests into spans; one per application."""

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        service_name: str = "knowledge-gateway",
        processor: SpanProcessor | None = None,
        sample_ratio: float = 1.0,
    ) -> None:
        self.processor = processor or BatchSpanProcessor(exporter)
        self.resource = Resource.create({"service.name": service_name})
        self.scope = InstrumentationScope("knowledge-gateway")
        self._threshold = int(sample_ratio * (1 << 64))  # keep trace ids below it (low 64 bits)
        self._propagator = TraceContextTextMapPropagator()
        self._policy: Policy | None = None
        self._models: dict[str, _Model] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """A tracer exporting to ``settings.otlp_endpoint``, or ``None`` when it is unset."""
        if not settings.otlp_endpoint:
            return None
        from .otlp import LeanOTLPSpanExporter

        return cls(
            LeanOTLPSpanExporter(endpoint=settings.otlp_endpoint, timeout=5),
            service_name=settings.otlp_service_name,
            sample_ratio=settings.otlp_sample_ratio,
        )

    def flush(self, timeout_ms: int = 30_000) -> bool:
        """Export what is queued now (blocking: call it in a thread)."""
        return self.processor.force_flush(timeout_ms)

    def close(self) -> None:
        """Export what is queued and stop the worker (blocking: call it in a thread)."""
        self.processor.shutdown()

    def _parent(self, headers: Mapping[str, str]) -> SpanContext | None:
        if "traceparent" not in headers:  # the common case: no propagator work
            return None
        found = get_current_span(self._propagator.extract(headers)).get_span_context()
        return found if found.is_valid else None

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
        """The spans of one finished request (none when it is not sampled)."""
        parent = self._parent(headers)
        if parent is not None:
            if not parent.trace_flags.sampled:
                return
            trace_id = parent.trace_id
        else:
            trace_id = random.getrandbits(128)
            if (trace_id & _ID_MASK) >= self._threshold:
                return
        if policy is not self._policy:  # a reload swapped the policy
            self._models, self._policy = _models(policy), policy
        end_ns = int((decision.ended_at or 0.0) * 1e9)
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
        }
        if cache:
            attributes["gateway.cache"] = cache
        if knowledge:
            attributes["gateway.knowledge"] = knowledge
        if decision.cost_usd:
            attributes["gateway.cost_usd"] = decision.cost_usd
        if decision.ttft_ms is not None:
            attributes["gateway.ttft_ms"] = decision.ttft_ms
        status = _OK
        if decision.status >= 500:
            attributes["error.type"] = decision.error or str(decision.status)
            status = Status(StatusCode.ERROR, decision.error)
        context = SpanContext(
            trace_id, random.getrandbits(64), is_remote=False, trace_flags=_SAMPLED
        )
        last = len(decision.attempts) - 1
        request = _request_attributes(chat)
        for i, attempt in enumerate(decision.attempts):
            self._attempt(context, attempt, decision, request, answered=i == last)
        self.processor.on_end(
            ReadableSpan(
                SERVER_SPAN,
                context,
                parent,
                self.resource,
                attributes,
                kind=SpanKind.SERVER,
                status=status,
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=self.scope,
            )
        )

    def _attempt(
        self,
        parent: SpanContext,
        attempt: Attempt,
        decision: Decision,
        request: dict[str, Any],
        *,
        answered: bool,
    ) -> None:
        model = self._models.get(attempt.model)
        request_model = model.request_model if model else attempt.model
        attributes: dict[str, Any] = (
            {**model.attributes, **request} if model else {"gen_ai.operation.name": OPERATION}
        )
        if attempt.served_model:
            attributes["gen_ai.response.model"] = attempt.served_model
        status = _OK
        if attempt.outcome == "ok":
            if answered:
                attributes["gen_ai.usage.input_tokens"] = decision.prompt_tokens
                attributes["gen_ai.usage.output_tokens"] = decision.completion_tokens
        else:
            attributes["error.type"] = attempt.outcome
            if attempt.status is not None:
                attributes["http.response.status_code"] = attempt.status
            status = Status(StatusCode.ERROR, attempt.outcome)
        end_ns = int(attempt.ended_at * 1e9)
        context = SpanContext(
            parent.trace_id, random.getrandbits(64), is_remote=False, trace_flags=_SAMPLED
        )
        self.processor.on_end(
            ReadableSpan(
                f"{OPERATION} {request_model}",
                context,
                parent,
                self.resource,
                attributes,
                kind=SpanKind.CLIENT,
                status=status,
                start_time=end_ns - int(attempt.latency_ms * 1e6),
                end_time=end_ns,
                instrumentation_scope=self.scope,
            )
        )


def _request_attributes(chat: ChatRequest) -> dict[str, Any]:
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
