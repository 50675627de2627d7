"""A traced request waiting for its spans, and the form it crosses to the exporter process in.

``Tracing`` queues a ``TraceJob`` per sampled request and builds its spans at the export. With
the exporter process (gateway/telemetry/exporter.py) the gateway instead serialises each job as the
request ends (``span_wire``: a compact JSON list, no reference to the request's objects kept)
and sends them in batches (``send_spans``); the child reads them back (``jobs_from_wire``) and
builds the same spans, with the model table the gateway sends after each reload
(``models_to_wire``/``models_from_wire``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.trace import SpanContext, TraceFlags

from .genai_spans import SpanModel

if TYPE_CHECKING:
    from gateway.core.decision import Decision
    from gateway.policy.model import Policy

    from .exporter_link import ExporterLink

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
ID_MASK = (1 << 64) - 1


class TraceJob:
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


def models_to_wire(models: dict[str, SpanModel]) -> bytes:
    return orjson.dumps({alias: [m.request_model, m.attributes] for alias, m in models.items()})


def models_from_wire(payload: bytes) -> dict[str, SpanModel]:
    return {
        alias: SpanModel(model, attrs) for alias, (model, attrs) in orjson.loads(payload).items()
    }


async def send_spans(link: ExporterLink, wire: list[bytes]) -> int:
    """Send serialised span data (``span_wire`` lists) as one JSON list; how many requests'
    data could not be sent."""
    if not wire or await link.spans(b"[" + b",".join(wire) + b"]"):
        return 0
    return len(wire)


def span_wire(
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
        trace_id & ID_MASK,
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


def jobs_from_wire(payload: bytes) -> list[TraceJob]:
    from gateway.core.decision import Attempt, Decision

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
            context = SpanContext(trace_id, parent[0], is_remote=parent[1], trace_flags=SAMPLED)
        jobs.append(TraceJob(None, decision, request, trace_id, context, cache, knowledge))
    return jobs
