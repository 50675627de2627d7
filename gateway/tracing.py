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

The request path only samples and queues; a background task builds the spans as finished SDK
``ReadableSpan`` objects in batches and hands them to the exporter in a worker thread: the SDK's
OTLP/HTTP exporter with a lean encoder of the same wire format (gateway/otlp.py). Building
spans through a tracer (sampler, locks, attribute validation), a batch processor's per-span
wake-up and the SDK's per-attribute encoder together cost about as much CPU as the rest of the
request. ``GATEWAY_OTLP_SAMPLE_RATIO`` keeps that share of
traces (by trace id, so every replica keeps the same ones; a sampled or unsampled
``traceparent`` is obeyed). No prompt text and no keys are ever put on a span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

if TYPE_CHECKING:
    from providers.schema import ChatRequest

    from .decisions import Attempt, Decision
    from .policy import Policy
    from .settings import Settings

log = logging.getLogger(__name__)

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


class _Job:
    """A sampled request waiting for its spans to be built (off the request path)."""

    __slots__ = ("cache", "chat", "decision", "knowledge", "parent", "policy", "trace_id")

    def __init__(
        self,
        policy: Policy,
        decision: Decision,
        chat: ChatRequest,
        trace_id: int,
        parent: SpanContext | None,
        cache: str | None,
        knowledge: str | None,
    ) -> None:
        self.policy, self.decision, self.chat = policy, decision, chat
        self.trace_id, self.parent = trace_id, parent
        self.cache, self.knowledge = cache, knowledge


class Tracing:
    """Turns finished requests into spans and exports them in batches; one per application.

    ``record`` (request path) only samples and queues; a background task (``start``) builds the
    spans every ``interval_s`` and hands them to the exporter in a worker thread, like the SDK's
    ``BatchSpanProcessor`` but without a lock and a wake-up per span.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        service_name: str = "knowledge-gateway",
        sample_ratio: float = 1.0,
        interval_s: float = 2.0,
        max_pending: int = 50_000,
        batch_size: int = 4096,
    ) -> None:
        self.exporter = exporter
        self.resource = Resource.create({"service.name": service_name})
        self.scope = InstrumentationScope("knowledge-gateway")
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.dropped = 0
        self._threshold = int(sample_ratio * (1 << 64))  # keep trace ids below it (low 64 bits)
        self._propagator = TraceContextTextMapPropagator()
        self._pending: deque[_Job] = deque(maxlen=max_pending)
        self._policy: Policy | None = None
        self._models: dict[str, _Model] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

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

    # -- lifetime -------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trace-exporter")

    async def close(self) -> None:
        """Export what is queued, then shut the exporter down."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.flush()
        await asyncio.to_thread(self.exporter.shutdown)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush()
            except Exception:  # the exporter must outlive any one bad batch
                log.exception("exporting spans failed; continuing")

    async def flush(self) -> None:
        """Build and export every queued request's spans now."""
        async with self._lock:
            while self._pending:
                spans: list[ReadableSpan] = []
                while self._pending and len(spans) < self.batch_size:
                    spans += self._spans(self._pending.popleft())
                    if len(spans) % 64 == 0:  # building is CPU: let requests run in between
                        await asyncio.sleep(0)
                result = await asyncio.to_thread(self.exporter.export, spans)
                if result is not SpanExportResult.SUCCESS:
                    log.warning("exporting %d spans failed", len(spans))

    # -- the request path -----------------------------------------------------------------
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
        """Queue one finished request's spans (nothing when it is not sampled)."""
        parent = self._parent(headers)
        if parent is not None:
            if not parent.trace_flags.sampled:
                return
            trace_id = parent.trace_id
        else:
            trace_id = random.getrandbits(128)
            if (trace_id & _ID_MASK) >= self._threshold:
                return
        pending = self._pending
        if len(pending) == pending.maxlen:  # the exporter is far behind: the oldest goes
            self.dropped += 1
        pending.append(_Job(policy, decision, chat, trace_id, parent, cache, knowledge))

    # -- building spans -------------------------------------------------------------------
    def _spans(self, job: _Job) -> list[ReadableSpan]:
        """The server span and one span per attempt of a queued request."""
        if job.policy is not self._policy:  # a reload swapped the policy
            self._models, self._policy = _models(job.policy), job.policy
        decision = job.decision
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
        if job.cache:
            attributes["gateway.cache"] = job.cache
        if job.knowledge:
            attributes["gateway.knowledge"] = job.knowledge
        if decision.cost_usd:
            attributes["gateway.cost_usd"] = decision.cost_usd
        if decision.ttft_ms is not None:
            attributes["gateway.ttft_ms"] = decision.ttft_ms
        status = _OK
        if decision.status >= 500:
            attributes["error.type"] = decision.error or str(decision.status)
            status = Status(StatusCode.ERROR, decision.error)
        context = SpanContext(
            job.trace_id, random.getrandbits(64), is_remote=False, trace_flags=_SAMPLED
        )
        last = len(decision.attempts) - 1
        request = _request_attributes(job.chat)
        spans = [
            self._attempt(context, attempt, decision, request, answered=i == last)
            for i, attempt in enumerate(decision.attempts)
        ]
        spans.append(
            ReadableSpan(
                SERVER_SPAN,
                context,
                job.parent,
                self.resource,
                attributes,
                kind=SpanKind.SERVER,
                status=status,
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=self.scope,
            )
        )
        return spans

    def _attempt(
        self,
        parent: SpanContext,
        attempt: Attempt,
        decision: Decision,
        request: dict[str, Any],
        *,
        answered: bool,
    ) -> ReadableSpan:
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
        return ReadableSpan(
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
