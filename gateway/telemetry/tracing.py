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
  failed ones, ``server.address``/``server.port``, and the request parameters that were set
  (the attributes: gateway/telemetry/genai_spans.py).

The request path only samples and queues. With the exporter process (gateway/telemetry/exporter.py,
the default) it queues the request's span data already serialised (gateway/telemetry/trace_jobs.py)
and every 0.2 s hands it over; the child builds and posts the spans with this same class. Otherwise
every 2 s a background task encodes the queued requests' spans straight to OTLP protobuf
(gateway/telemetry/otlp.py, tested equal to the SDK's encoding of the same spans as ``ReadableSpan``
objects) and posts them from the event loop with aiohttp. Building spans through a tracer (sampler,
locks, attribute validation), a batch processor's per-span wake-up and the SDK's per-attribute
encoder together cost about as much CPU as the rest of the request (the SDK's exporter, posting from
a worker thread, is replaced too: see gateway/telemetry/otlp.py). Any SDK ``SpanExporter`` can still
be given instead (tests use the in-memory one): it gets ``ReadableSpan`` batches in a worker thread.
``GATEWAY_OTLP_SAMPLE_RATIO`` keeps that share of traces (by trace id, so every replica keeps the
same ones; a sampled or unsampled ``traceparent`` is obeyed). No prompt text and no keys are ever
put on a span.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from gateway.core.background import flush_periodically, stop_then_flush

from .genai_spans import (
    OPERATION,
    SpanModel,
    attempt_attributes,
    request_attributes,
    server_attributes,
    span_models,
)
from .otlp import OTLPHttpExporter, SpanEncoder
from .trace_jobs import ID_MASK, SAMPLED, TraceJob, models_to_wire, send_spans, span_wire

if TYPE_CHECKING:
    from gateway.core.decision import Decision
    from gateway.policy.model import Policy
    from gateway.policy.settings import Settings
    from providers.schema import ChatRequest

    from .exporter_link import ExporterLink

log = logging.getLogger(__name__)

SERVER_SPAN = "POST /v1/chat/completions"

_OK = Status(StatusCode.UNSET)
_YIELD_EVERY = 32  # requests encoded between yields to the event loop (~0.3 ms of work)
EXPORT_INTERVAL_S = 2.0  # how often queued requests' spans are encoded and posted
HAND_OVER_S = 0.2  # ... or handed to the exporter process


class Tracing:
    """Turns finished requests into spans and exports them in batches; one per application.

    ``record`` (request path) only samples and queues; a background task (``start``) builds the
    spans every ``interval_s`` and exports them, like the SDK's ``BatchSpanProcessor`` but
    without a lock and a wake-up per span.
    """

    def __init__(
        self,
        exporter: OTLPHttpExporter | SpanExporter | None,
        *,
        service_name: str = "knowledge-gateway",
        sample_ratio: float = 1.0,
        interval_s: float = EXPORT_INTERVAL_S,
        max_pending: int = 50_000,
        # Spans per post: the SDK's default (BatchSpanProcessor); ~160 KB of OTLP. A post holds
        # the event loop while it is built and written: ~0.7 ms here, ~1.5 ms at 2048 spans.
        batch_size: int = 512,
        link: ExporterLink | None = None,
    ) -> None:
        self.exporter = exporter
        self._link = link  # the exporter process builds and posts the spans instead
        self.resource = Resource.create({"service.name": service_name})
        self.scope = InstrumentationScope("knowledge-gateway")
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.dropped = 0
        self._threshold = int(sample_ratio * (1 << 64))  # keep trace ids below it (low 64 bits)
        self._propagator = TraceContextTextMapPropagator()
        self._pending: deque[TraceJob] = deque(maxlen=max_pending)
        # With the exporter process: each traced request's span data, serialised as it ends
        # (``span_wire``), and a policy wherever the model table changes. Bytes hold no
        # reference to the request's objects: waiting for the hand-over keeps nothing else
        # alive (nor gives the garbage collector more to walk).
        self._wired: deque[bytes | Policy] = deque(maxlen=max_pending)
        self._wired_policy: Policy | None = None
        self._policy: Policy | None = None
        self._models: dict[str, SpanModel] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._encoder = SpanEncoder()

    @classmethod
    def from_settings(cls, settings: Settings, link: ExporterLink | None = None) -> Tracing | None:
        """A tracer exporting to ``settings.otlp_endpoint`` (through the exporter process when
        ``link`` is given), or ``None`` when it is unset."""
        if not settings.otlp_endpoint:
            return None
        return cls(
            None if link is not None else OTLPHttpExporter(settings.otlp_endpoint),
            service_name=settings.otlp_service_name,
            sample_ratio=settings.otlp_sample_ratio,
            # Handing serialised span data over costs little: doing it as often as the records
            # spreads the child's encoding evenly instead of a burst every 2 s.
            interval_s=HAND_OVER_S if link is not None else EXPORT_INTERVAL_S,
            link=link,
        )

    # -- lifetime -------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="trace-exporter")

    async def close(self) -> None:
        """Export what is queued, then shut the exporter down."""
        await stop_then_flush(self._task, self.flush, self._lock, 10)
        self._task = None
        if isinstance(self.exporter, OTLPHttpExporter):
            await self.exporter.close()
        elif self.exporter is not None:
            await asyncio.to_thread(self.exporter.shutdown)

    async def _run(self) -> None:
        await flush_periodically(
            lambda: self.interval_s, self.flush, log, "exporting spans failed; continuing"
        )

    async def flush(self) -> None:
        """Build and export the spans of every request queued when it is called.

        Requests that finish meanwhile wait for the next flush: draining until the queue is
        empty would, under load, turn the 2 s batches into a stream of small posts.
        """
        async with self._lock:
            if self._link is not None:
                await self._hand_over(self._link)
                return
            pending, remaining = self._pending, len(self._pending)
            while (take := min(remaining, len(pending), self.batch_size // 2)) > 0:
                jobs = [pending.popleft() for _ in range(take)]
                remaining -= take
                if not await self._export(jobs):
                    log.warning("exporting the spans of %d requests failed", take)

    async def _export(self, jobs: list[TraceJob]) -> bool:
        exporter = self.exporter
        if exporter is None:
            return False
        if not isinstance(exporter, OTLPHttpExporter):  # any SDK exporter, from a worker thread
            spans = [span for job in jobs for span in self._spans(job)]
            return await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
        return await self.export_jobs(jobs)

    async def export_jobs(self, jobs: list[TraceJob]) -> bool:
        """Encode the jobs' spans and post them (to the OTLP exporter)."""
        assert isinstance(self.exporter, OTLPHttpExporter)
        encoder, encoded = self._encoder, []
        for i, job in enumerate(jobs, 1):
            encoded += self._encoded(job, encoder)
            if i % _YIELD_EVERY == 0:  # a whole batch (256 requests) would hold the loop ~2-3 ms
                await asyncio.sleep(0)
        return await self.exporter.export(encoder.request(self.resource, self.scope, encoded))

    async def _hand_over(self, link: ExporterLink) -> None:
        """Send the span data queued when it is called to the exporter process
        (``jobs_from_wire`` reads it), and the model table whenever a reload changed it."""
        wired, wire = self._wired, list[bytes]()
        for _ in range(len(wired)):
            item = wired.popleft()
            if not isinstance(item, bytes):  # a policy: the spans after it use its models
                self.dropped += await send_spans(link, wire)
                wire = []
                self.use_models(span_models(item), item)
                await link.models(models_to_wire(self._models))
                continue
            wire.append(item)
            if len(wire) == self.batch_size // 2:
                self.dropped += await send_spans(link, wire)
                wire = []
        self.dropped += await send_spans(link, wire)

    def use_models(self, models: dict[str, SpanModel], policy: Policy | None = None) -> None:
        """Build spans with ``models`` from now on (a reload, or the exporter process told)."""
        self._models, self._policy = models, policy
        self._encoder.forget_templates()  # an alias may now pin another model version

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
            if (trace_id & ID_MASK) >= self._threshold:
                return
        request = request_attributes(chat)
        if self._link is not None:
            wired = self._wired
            if policy is not self._wired_policy:  # the first request, or one after a reload
                self._wired_policy = policy
                if len(wired) == wired.maxlen:
                    self._make_room(wired)
                wired.append(policy)
            if len(wired) == wired.maxlen:  # the exporter is far behind
                self._make_room(wired)
            wired.append(
                orjson.dumps(span_wire(trace_id, parent, request, cache, knowledge, decision))
            )
            return
        pending = self._pending
        if len(pending) == pending.maxlen:  # the exporter is far behind: the oldest goes
            self.dropped += 1
        pending.append(TraceJob(policy, decision, request, trace_id, parent, cache, knowledge))

    def _make_room(self, wired: deque[bytes | Policy]) -> None:
        """Drop the oldest span when the hand-over queue is full (the exporter is far behind),
        keeping the policy marker before it: the spans after a marker are built with its model
        table, so evicting the marker would build them with the table of an older policy."""
        marker: Policy | None = None
        while wired:
            item = wired.popleft()
            if isinstance(item, bytes):
                self.dropped += 1
                break
            marker = item
        if marker is not None and (not wired or isinstance(wired[0], bytes)):
            wired.appendleft(marker)  # (a marker at the head now supersedes it)

    # -- building spans -------------------------------------------------------------------
    # Each span is planned once as (static attributes, their cache key, dynamic attributes):
    # the static ones repeat across requests (team, route, model, status...) and are encoded
    # once per combination by the lean encoder; both export paths put them in the same order.
    def _plan(self, job: TraceJob) -> list[_SpanPlan]:
        """The request's spans: one per attempt, then the server span (ids drawn in order)."""
        if job.policy is not self._policy and job.policy is not None:  # a reload swapped it
            self.use_models(span_models(job.policy), job.policy)
        decision = job.decision
        server_id = random.getrandbits(64)
        request = job.request
        request_key = tuple(request.items())
        plans = []
        last = len(decision.attempts) - 1
        for i, attempt in enumerate(decision.attempts):
            model = self._models.get(attempt.model)
            ok = attempt.outcome == "ok"
            key = (
                attempt.model,
                request_key,
                attempt.served_model,
                attempt.outcome,
                None if ok else attempt.status,
            )
            dynamic: dict[str, Any] = {}
            if ok and i == last:
                dynamic["gen_ai.usage.input_tokens"] = decision.prompt_tokens
                dynamic["gen_ai.usage.output_tokens"] = decision.completion_tokens
            end_ns = int(attempt.ended_at * 1e9)
            plans.append(
                _SpanPlan(
                    random.getrandbits(64),
                    server_id,
                    False,
                    model.span_name if model else f"{OPERATION} {attempt.model}",
                    SpanKind.CLIENT,
                    end_ns - int(attempt.latency_ms * 1e6),
                    end_ns,
                    key,
                    partial(attempt_attributes, model, request, attempt),
                    dynamic,
                    None if ok else attempt.outcome,
                )
            )
        error = None
        if decision.status >= 500:
            error = decision.error or str(decision.status)
        dynamic = {"gateway.request_id": decision.request_id}
        if decision.cost_usd:
            dynamic["gateway.cost_usd"] = decision.cost_usd
        if decision.ttft_ms is not None:
            dynamic["gateway.ttft_ms"] = decision.ttft_ms
        end_ns = int((decision.ended_at or 0.0) * 1e9)
        parent = job.parent
        plans.append(
            _SpanPlan(
                server_id,
                parent.span_id if parent is not None else None,
                parent is not None and parent.is_remote,
                SERVER_SPAN,
                SpanKind.SERVER,
                end_ns - int((decision.total_ms or 0.0) * 1e6),
                end_ns,
                (
                    decision.status,
                    decision.team,
                    decision.route,
                    decision.task_type,
                    decision.source,
                    job.cache,
                    job.knowledge,
                    error,
                    parent is not None and parent.is_remote,
                ),
                partial(server_attributes, decision, job.cache, job.knowledge, error),
                dynamic,
                error,
            )
        )
        return plans

    def _spans(self, job: TraceJob) -> list[ReadableSpan]:
        """The request's spans as SDK objects (for any exporter)."""
        spans = []
        for plan in self._plan(job):
            context = SpanContext(job.trace_id, plan.span_id, is_remote=False, trace_flags=SAMPLED)
            parent_context: SpanContext | None
            if plan.kind is SpanKind.CLIENT:
                parent_context = SpanContext(
                    job.trace_id, plan.parent_id or 0, is_remote=False, trace_flags=SAMPLED
                )
            else:
                parent_context = job.parent
            spans.append(
                ReadableSpan(
                    plan.name,
                    context,
                    parent_context,
                    self.resource,
                    {**plan.static(), **plan.dynamic},
                    kind=plan.kind,
                    status=_OK if plan.error is None else Status(StatusCode.ERROR, plan.error),
                    start_time=plan.start,
                    end_time=plan.end,
                    instrumentation_scope=self.scope,
                )
            )
        return spans

    def _encoded(self, job: TraceJob, encoder: SpanEncoder) -> list[bytes]:
        """The request's spans encoded directly (the lean exporter's path: no SDK objects; the
        parts that repeat for a plan's key are encoded once). Positional calls throughout: this
        runs per span (with the other changes of its commit: 9.1 -> 8.1 us per request)."""
        trace_id = job.trace_id.to_bytes(16, "big")
        template, from_template, attributes = (
            encoder.template,
            encoder.from_template,
            encoder.attributes,
        )
        return [
            from_template(
                template(
                    plan.key, plan.name, plan.kind.value, plan.static, plan.error, plan.remote
                ),
                trace_id,
                plan.span_id,
                plan.parent_id,
                plan.start,
                plan.end,
                attributes(plan.dynamic),
            )
            for plan in self._plan(job)
        ]


class _SpanPlan:
    """One span to build: what the SDK path and the encoding path both need (made per span:
    built with positional arguments, which cost less than keyword ones)."""

    __slots__ = (
        "dynamic",
        "end",
        "error",
        "key",
        "kind",
        "name",
        "parent_id",
        "remote",
        "span_id",
        "start",
        "static",
    )

    def __init__(
        self,
        span_id: int,
        parent_id: int | None,
        remote: bool,  # the parent is remote (a client's traceparent)
        name: str,
        kind: SpanKind,
        start: int,
        end: int,
        key: Any,
        static: Callable[[], dict[str, Any]],
        dynamic: dict[str, Any],
        error: str | None,
    ) -> None:
        self.span_id, self.parent_id, self.remote = span_id, parent_id, remote
        self.name, self.kind, self.start, self.end = name, kind, start, end
        self.key, self.static, self.dynamic, self.error = key, static, dynamic, error
