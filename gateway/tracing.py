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

The request path only samples and queues; every 2 s a background task encodes the queued
requests' spans straight to OTLP protobuf (gateway/otlp.py, tested equal to the SDK's encoding
of the same spans as ``ReadableSpan`` objects) and posts them from the event loop with aiohttp.
Building spans through a tracer (sampler, locks, attribute validation), a batch processor's
per-span wake-up and the SDK's per-attribute encoder together cost about as much CPU as the rest
of the request (the SDK's exporter, posting from a worker thread, is replaced too: see
gateway/otlp.py). Any SDK ``SpanExporter`` can still be given instead
(tests use the in-memory one): it gets ``ReadableSpan`` batches in a worker thread.
``GATEWAY_OTLP_SAMPLE_RATIO`` keeps that share of traces (by trace id, so every replica keeps
the same ones; a sampled or unsampled ``traceparent`` is obeyed). No prompt text and no keys
are ever put on a span.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from .background import flush_periodically, stop_then_flush
from .otlp import OTLPHttpExporter, SpanEncoder

if TYPE_CHECKING:
    from providers.schema import ChatRequest

    from .decisions import Attempt, Decision
    from .exporter import ExporterLink
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

    __slots__ = ("attributes", "request_model", "span_name")

    def __init__(self, request_model: str, attributes: dict[str, Any]) -> None:
        self.request_model = request_model
        self.span_name = f"{OPERATION} {request_model}"
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
_YIELD_EVERY = 32  # requests encoded between yields to the event loop (~0.3 ms of work)
EXPORT_INTERVAL_S = 2.0  # how often queued requests' spans are encoded and posted


class _Job:
    """A sampled request waiting for its spans to be built (off the request path)."""

    __slots__ = ("cache", "decision", "knowledge", "parent", "policy", "request", "trace_id")

    def __init__(
        self,
        policy: Policy | None,  # None in the exporter process (it is told the model table)
        decision: Decision,
        request: dict[str, Any],
        trace_id: int,
        parent: SpanContext | None,
        cache: str | None,
        knowledge: str | None,
    ) -> None:
        # The request's GenAI parameters, not the request: its messages would stay alive until
        # the export (and the garbage collector would walk them) for nothing.
        self.policy, self.decision, self.request = policy, decision, request
        self.trace_id, self.parent = trace_id, parent
        self.cache, self.knowledge = cache, knowledge


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
        self._pending: deque[_Job] = deque(maxlen=max_pending)
        # With the exporter process: each traced request's span data, serialised as it ends
        # (``_wire``), and a policy wherever the model table changes. Bytes hold no reference
        # to the request's objects: the 2 s between exports keeps nothing else alive (nor
        # gives the garbage collector more to walk).
        self._wired: deque[bytes | Policy] = deque(maxlen=max_pending)
        self._wired_policy: Policy | None = None
        self._policy: Policy | None = None
        self._models: dict[str, _Model] = {}
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

    async def _export(self, jobs: list[_Job]) -> bool:
        exporter = self.exporter
        if exporter is None:
            return False
        if not isinstance(exporter, OTLPHttpExporter):  # any SDK exporter, from a worker thread
            spans = [span for job in jobs for span in self._spans(job)]
            return await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
        return await self.export_jobs(jobs)

    async def export_jobs(self, jobs: list[_Job]) -> bool:
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
                wire = await _send(link, wire)
                self.use_models(_models(item), item)
                await link.models(_models_to_wire(self._models))
                continue
            wire.append(item)
            if len(wire) == self.batch_size // 2:
                wire = await _send(link, wire)
        await _send(link, wire)

    def use_models(self, models: dict[str, _Model], policy: Policy | None = None) -> None:
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
            if (trace_id & _ID_MASK) >= self._threshold:
                return
        request = _request_attributes(chat)
        if self._link is not None:
            wired = self._wired
            if len(wired) == wired.maxlen:  # the exporter is far behind: the oldest goes
                self.dropped += 1
            if policy is not self._wired_policy:  # the first request, or one after a reload
                self._wired_policy = policy
                wired.append(policy)
            wired.append(orjson.dumps(_wire(trace_id, parent, request, cache, knowledge, decision)))
            return
        pending = self._pending
        if len(pending) == pending.maxlen:  # the exporter is far behind: the oldest goes
            self.dropped += 1
        pending.append(_Job(policy, decision, request, trace_id, parent, cache, knowledge))

    # -- building spans -------------------------------------------------------------------
    # Each span is planned once as (static attributes, their cache key, dynamic attributes):
    # the static ones repeat across requests (team, route, model, status...) and are encoded
    # once per combination by the lean encoder; both export paths put them in the same order.
    def _plan(self, job: _Job) -> list[_SpanPlan]:
        """The request's spans: one per attempt, then the server span (ids drawn in order)."""
        if job.policy is not self._policy and job.policy is not None:  # a reload swapped it
            self.use_models(_models(job.policy), job.policy)
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
                    partial(_attempt_attributes, model, request, attempt),
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
                partial(_server_attributes, decision, job.cache, job.knowledge, error),
                dynamic,
                error,
            )
        )
        return plans

    def _spans(self, job: _Job) -> list[ReadableSpan]:
        """The request's spans as SDK objects (for any exporter)."""
        spans = []
        for plan in self._plan(job):
            context = SpanContext(job.trace_id, plan.span_id, is_remote=False, trace_flags=_SAMPLED)
            parent_context: SpanContext | None
            if plan.kind is SpanKind.CLIENT:
                parent_context = SpanContext(
                    job.trace_id, plan.parent_id or 0, is_remote=False, trace_flags=_SAMPLED
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

    def _encoded(self, job: _Job, encoder: SpanEncoder) -> list[bytes]:
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


def _server_attributes(
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


def _attempt_attributes(
    model: _Model | None, request: dict[str, Any], attempt: Attempt
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


# -- the exporter process's wire format (gateway/exporter.py) ----------------------------------
def _models_to_wire(models: dict[str, _Model]) -> bytes:
    return orjson.dumps({alias: [m.request_model, m.attributes] for alias, m in models.items()})


def models_from_wire(payload: bytes) -> dict[str, _Model]:
    return {alias: _Model(model, attrs) for alias, (model, attrs) in orjson.loads(payload).items()}


async def _send(link: ExporterLink, wire: list[bytes]) -> list[bytes]:
    """Send serialised span data (a JSON list of ``_wire`` lists); what to fill next."""
    if wire:
        await link.spans(b"[" + b",".join(wire) + b"]", len(wire))
    return []


def _wire(
    trace_id: int,
    parent: SpanContext | None,
    request: dict[str, Any],
    cache: str | None,
    knowledge: str | None,
    d: Decision,
) -> list[Any]:
    """What the spans of a traced request are built from, as a compact JSON-able list."""
    return [
        trace_id >> 64,
        trace_id & _ID_MASK,
        None if parent is None else [parent.span_id, parent.is_remote],
        request,
        cache,
        knowledge,
        [d.request_id, d.team, d.route, d.task_type, d.source, d.status, d.error],
        [d.cost_usd, d.ttft_ms, d.ended_at, d.total_ms, d.prompt_tokens, d.completion_tokens],
        [
            [
                a.model,
                a.provider,
                a.region,
                a.outcome,
                a.latency_ms,
                a.served_model,
                a.status,
                a.ended_at,
            ]
            for a in d.attempts
        ],
    ]


def jobs_from_wire(payload: bytes) -> list[_Job]:
    from .decisions import Attempt, Decision

    jobs = []
    for high, low, parent, request, cache, knowledge, names, figures, attempts in orjson.loads(
        payload
    ):
        trace_id = (high << 64) | low
        rid, team, route, task, source, status, error = names
        decision = Decision(rid, team, route, task, source=source, status=status, error=error)
        (
            decision.cost_usd,
            decision.ttft_ms,
            decision.ended_at,
            decision.total_ms,
            decision.prompt_tokens,
            decision.completion_tokens,
        ) = figures
        decision.attempts = [
            Attempt(a[0], a[1], a[2], a[3], a[4], a[5], a[6], ended_at=a[7]) for a in attempts
        ]
        context = None
        if parent is not None:
            context = SpanContext(trace_id, parent[0], is_remote=parent[1], trace_flags=_SAMPLED)
        jobs.append(_Job(None, decision, request, trace_id, context, cache, knowledge))
    return jobs
