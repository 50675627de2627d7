"""What the pipeline does with a finished request: complete its decision record, count it in the
Prometheus metrics, and (when configured) turn it into a trace.

Both functions run on the request path, once per request, after the answer is built: they read
what the stages left on the context and do dictionary work only (cached metric children; the
prompt's hash and the record's JSON are computed later, off the request path).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from gateway.core.context import RequestContext
from gateway.core.runtime import Runtime
from providers.schema import ChatRequest


def complete_decision(ctx: RequestContext, chat: ChatRequest) -> None:
    """Fill the record's timings, interceptor verdicts and prompt fields.

    ``chat`` is the request as the client sent it (stages may replace ``ctx.chat``, e.g. the
    knowledge base adds context): its messages are what ``prompt_sha256`` is computed from, and
    what the record keeps for a team with ``log_prompts: true``.
    """
    decision = ctx.decision
    total_ms = (time.perf_counter() - ctx.started) * 1000
    upstream_ms = ctx.upstream_s * 1000
    decision.total_ms = total_ms
    decision.ended_at = time.time()
    decision.upstream_ms = upstream_ms
    decision.overhead_ms = total_ms - upstream_ms
    if decision.status >= 400:
        decision.source = "error"
    decision.cache = cache_verdict(ctx)
    decision.knowledge = knowledge_verdict(ctx)
    messages = chat.raw.get("messages")
    decision.messages = messages
    if ctx.team.log_prompts:
        decision.prompt = messages


def cache_verdict(ctx: RequestContext) -> dict[str, Any] | None:
    """The semantic cache's verdict: hit/miss/bypass/refresh, with its similarity score, and
    ``semantic_skipped`` (why) when only the exact path was looked up."""
    result = ctx.headers.get("x-gateway-cache")
    if result is None:
        return None
    verdict: dict[str, Any] = {"result": result}
    for event in ctx.decision.events:
        kind = event.get("type")
        if kind == "cache_hit":
            verdict["kind"] = event.get("kind")
            verdict["similarity"] = event.get("similarity")
        elif kind == "cache_guard":
            verdict["guard"] = event.get("reason")
        elif kind == "cache_semantic_skipped":  # exact lookup only (a turn past the window)
            verdict["semantic_skipped"] = event.get("reason")
    comparison = ctx.notes.get("cache_compare")
    neighbours = getattr(comparison, "neighbours", None)
    if neighbours:
        # A miss that was compared with its nearest entry: how near it was.
        verdict["nearest_similarity"] = round(float(neighbours[0][1]), 4)
        verdict["verify"] = bool(getattr(comparison, "verified", False))
    return verdict


def knowledge_verdict(ctx: RequestContext) -> dict[str, Any] | None:
    """The knowledge base's verdict: answer/context/none/off/error/..., with chunk scores, and
    ``answer_skipped`` (why) when a curated answer could not be chosen by similarity."""
    result = ctx.notes.get("knowledge")
    if result is None:
        return None
    verdict: dict[str, Any] = {"result": result}
    citations = ctx.notes.get("knowledge_citations")
    if citations:
        verdict["chunks"] = [{"id": c.get("id"), "score": c.get("score")} for c in citations]
    for event in ctx.decision.events:
        kind = event.get("type")
        if kind == "knowledge_answer":
            verdict["chunks"] = [{"id": event.get("chunk"), "score": event.get("score")}]
            verdict["kb"] = event.get("kb")
        elif kind == "knowledge_decision":  # the calibrated answer decision (and verification)
            verdict["answer_decision"] = {k: v for k, v in event.items() if k != "type"}
        elif kind == "knowledge_answer_skipped":  # no curated answer by similarity, and why
            verdict["answer_skipped"] = event.get("reason")
    return verdict


def observe_request(runtime: Runtime, ctx: RequestContext, chat: ChatRequest) -> None:
    """Count a finished request in the metrics and hand it to the tracer."""
    decision = ctx.decision
    metrics = runtime.metrics
    child = metrics.child
    model = decision.served_by or "none"
    attempts = decision.attempts
    provider = attempts[-1].provider if attempts else "none"
    route, source = decision.route, decision.source
    child(metrics.requests, route, model, provider, str(decision.status), source).inc()
    child(metrics.duration, route, source).observe((decision.total_ms or 0.0) / 1000)
    metrics.overhead.observe((decision.overhead_ms or 0.0) / 1000)
    for attempt in attempts:
        child(metrics.upstream, attempt.provider, attempt.model, attempt.outcome).observe(
            attempt.latency_ms / 1000
        )
    if decision.ttft_ms is not None:
        child(metrics.ttft, route, model, source).observe(decision.ttft_ms / 1000)
    if decision.prompt_tokens or decision.completion_tokens:
        team, task = decision.team, runtime.catalog.task_label(decision.task_type)
        child(metrics.tokens, team, task, model, "prompt").inc(decision.prompt_tokens)
        child(metrics.tokens, team, task, model, "completion").inc(decision.completion_tokens)
        child(metrics.cost, team, task, model).inc(decision.cost_usd)
    tracing = runtime.tracing
    if tracing is not None:
        tracing.record(
            runtime.catalog.policy,
            decision,
            chat,
            ctx.request_headers,
            cache=ctx.headers.get("x-gateway-cache"),
            knowledge=ctx.notes.get("knowledge"),
        )


@contextlib.asynccontextmanager
async def running_telemetry(runtime: Runtime) -> AsyncIterator[None]:
    """The decision writer's and the tracer's lifetime (and the exporter process's, which does
    their writes when configured): started with the app; at shutdown the pending records are
    written and the queued spans exported."""
    sinks = runtime.decisions.sinks
    tracing = runtime.tracing
    exporter = runtime.exporter
    if exporter is not None:
        await exporter.start()
    if sinks is not None:
        await sinks.start()
    if tracing is not None:
        await tracing.start()
    try:
        yield
    finally:
        if sinks is not None:
            await sinks.close()
        if tracing is not None:
            await tracing.close()
        if exporter is not None:
            await exporter.close()
