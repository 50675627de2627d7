"""The OTLP/HTTP span exporter (gateway/telemetry/otlp.py) and the exporter process's spans:
retries where the spec says so, refused batches dropped, a collector that is down, the standard
OTEL_* variables, flushes, and the spans the exporter process builds from what it is handed
(tests/test_telemetry_tracing.py: the spans of requests)."""

from __future__ import annotations

import random
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.core.decision import Attempt, Decision
from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy
from gateway.telemetry.otlp import OTLPHttpExporter, SpanEncoder
from gateway.telemetry.trace_jobs import jobs_from_wire, models_from_wire
from gateway.telemetry.tracing import Tracing
from providers.schema import ChatRequest
from tests.conftest import TEAM_KEY
from tests.test_telemetry_tracing import PARENT_ID, TRACE_ID, one_model_policy
from tests.test_telemetry_tracing import exporter as exporter  # the same fixtures: a flush test
from tests.test_telemetry_tracing import traced as traced


class Collector:
    """A loopback OTLP/HTTP collector answering each post with the next scripted status."""

    def __init__(self, *statuses: int, retry_after: str | None = None) -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self.collect)

    async def collect(self, request: web.Request) -> web.Response:
        self.posts.append((dict(request.headers), await request.read()))
        status = self.statuses.pop(0) if self.statuses else 200
        headers = {"Retry-After": self.retry_after} if self.retry_after and status != 200 else {}
        return web.Response(status=status, headers=headers, content_type="application/x-protobuf")


def a_request() -> bytes:
    encoder = SpanEncoder()
    template = encoder.template(
        "x", name="x", kind=1, static=lambda: {"k": "v"}, status_message=None, parent_remote=False
    )
    span = encoder.from_template(
        template, trace_id=bytes(15) + b"\x01", span_id=2, parent_id=None, start=1, end=2,
        attributes=b"",
    )  # fmt: skip
    return encoder.request(Tracing(InMemorySpanExporter()).resource, None, [span])


async def test_the_exporter_retries_what_the_spec_calls_retryable() -> None:
    collector = Collector(503, 429, retry_after="0")
    async with TestServer(collector.app) as server:
        exporter = OTLPHttpExporter(str(server.make_url("/v1/traces")), backoff_s=0.01)
        assert await exporter.export(a_request())
        await exporter.close()
    assert len(collector.posts) == 3
    message = ExportTraceServiceRequest()
    message.ParseFromString(collector.posts[-1][1])
    assert message.resource_spans[0].scope_spans[0].spans[0].name == "x"


async def test_the_exporter_drops_a_refused_batch_without_retrying(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = Collector(400)
    async with TestServer(collector.app) as server:
        exporter = OTLPHttpExporter(
            str(server.make_url("/v1/traces")), headers={"x-api-key": "collector-secret"}
        )
        assert not await exporter.export(a_request())
        await exporter.close()
    assert len(collector.posts) == 1
    assert "HTTP 400" in caplog.text
    assert "collector-secret" not in caplog.text


async def test_the_exporter_gives_up_on_a_collector_that_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = OTLPHttpExporter("http://127.0.0.1:9/v1/traces", max_attempts=2, backoff_s=0.01)
    assert not await exporter.export(a_request())
    await exporter.close()
    assert "after 2 attempts" in caplog.text


async def test_the_exporter_reads_the_standard_otel_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=general,x-tenant=a")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=for%20traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    collector = Collector()
    async with TestServer(collector.app) as server:
        exporter = OTLPHttpExporter(str(server.make_url("/v1/traces")))
        data = a_request()
        assert await exporter.export(data)
        await exporter.close()
    ((headers, body),) = collector.posts
    assert headers["x-api-key"] == "for traces"  # the traces-specific variable wins
    assert "x-tenant" not in headers
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert body == data  # aiohttp's server undid the gzip the header announces


async def test_a_flush_exports_what_was_queued_when_it_began(
    traced: TestClient[Any, Any], exporter: InMemorySpanExporter
) -> None:
    """Requests finishing during an export wait for the next tick: under load the exporter
    sends one batch every interval, not a stream of small posts."""
    tracing = traced.app[RUNTIME].tracing
    assert tracing is not None
    body = {"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]}
    auth = {"Authorization": f"Bearer {TEAM_KEY}"}
    for _ in range(2):
        assert (await traced.post("/v1/chat/completions", json=body, headers=auth)).status == 200
    queued = list(tracing._pending)
    late = queued[-1]
    original = tracing._export

    async def export_then_another_request_finishes(jobs: list[Any]) -> bool:
        tracing._pending.append(late)  # arrives while the batch is being posted
        return await original(jobs)

    tracing._export = export_then_another_request_finishes  # type: ignore[method-assign]
    await tracing.flush()
    assert len(exporter.get_finished_spans()) == 4
    assert list(tracing._pending) == [late]


class Pipe:
    """The gateway's end of the exporter link: what would cross the pipe, in order."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []

    async def spans(self, wire: bytes) -> bool:
        self.frames.append(("S", wire))
        return True

    async def models(self, table: bytes) -> None:
        self.frames.append(("M", table))


async def test_the_exporter_process_builds_the_spans_the_gateway_would() -> None:
    """The span data handed to the exporter process (``_wire`` -> ``jobs_from_wire``) gives the
    spans the in-process path encodes: same ids, names, times, attributes and statuses, a
    client's trace context and a reload that pins another version included."""
    posted: list[bytes] = []

    class Keep(OTLPHttpExporter):
        async def export(self, data: bytes) -> bool:
            posted.append(data)
            return True

    def policy(version: str) -> Policy:
        return Policy.model_validate(
            {
                "providers": [
                    {"name": "p", "kind": "openai", "base_url": "https://api.example.com/v1"},
                    {"name": "q", "kind": "anthropic", "base_url": "http://127.0.0.1:9"},
                ],
                "models": [
                    {"name": "gpt", "provider": "p", "id": version},
                    {"name": "claude", "provider": "q", "id": "claude-sonnet-4-5-20250929"},
                ],
                "teams": [{"name": "t", "key_sha256": "0" * 64, "routes": ["*"]}],
            }
        )

    def answered(i: int) -> Decision:
        decision = Decision(request_id=f"r{i}", team="t", route="gpt", task_type="general")
        decision.attempts = [Attempt("gpt", "p", "us", "ok", 12.5, served_model="gpt-x")]
        if i % 3 == 1:  # a fallback
            decision.attempts.insert(0, Attempt("claude", "q", "eu", "overloaded", 3.0, status=529))
        if i % 3 == 2:  # all failed
            decision.attempts = [Attempt("gpt", "p", "us", "timeout", 30.0)]
            decision.status, decision.error, decision.source = 504, "all_providers_failed", "error"
        for attempt in decision.attempts:
            attempt.ended_at = 1e9 + i - 0.001
        decision.ended_at, decision.total_ms, decision.ttft_ms = 1e9 + i, 20.0 + i, 5.0
        decision.prompt_tokens, decision.completion_tokens, decision.cost_usd = 10, i, 0.001 * i
        return decision

    chat = ChatRequest.from_body(
        {"model": "gpt", "messages": [{"role": "user", "content": "x"}], "temperature": 0.3}
    )
    policies = [policy("gpt-4o-2024-08-06"), policy("gpt-4o-2024-11-20")]
    traced = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}

    def queue(tracing: Tracing) -> None:
        for i in range(12):
            random.seed(i)
            tracing.record(
                policies[i // 6], answered(i), chat, traced if i % 4 == 0 else {},
                cache="miss" if i % 2 else None, knowledge="none" if i % 5 == 0 else None,
            )  # fmt: skip

    def spans(posts: list[bytes]) -> list[Any]:
        found = []
        for data in posts:
            message = ExportTraceServiceRequest()
            message.ParseFromString(data)
            found += [s for r in message.resource_spans for sc in r.scope_spans for s in sc.spans]
        return found

    here = Tracing(Keep("http://127.0.0.1:9/v1/traces"))
    queue(here)
    random.seed(99)
    await here.flush()
    expected = spans(posted)

    pipe = Pipe()
    gateway_end = Tracing(None, link=cast(Any, pipe))
    queue(gateway_end)
    await gateway_end.flush()
    assert [kind for kind, _ in pipe.frames] == ["M", "S", "M", "S"]  # the reload in between

    posted.clear()
    child = Tracing(Keep("http://127.0.0.1:9/v1/traces"))
    random.seed(99)
    for kind, payload in pipe.frames:
        if kind == "M":
            child.use_models(models_from_wire(payload))
        else:
            assert await child.export_jobs(jobs_from_wire(payload))
    assert len(expected) == 12 + 12 + 4
    assert spans(posted) == expected


async def test_a_full_hand_over_queue_keeps_the_reloads_model_table() -> None:
    """With the exporter process far behind, the oldest spans go, never the reload marker before
    the spans that remain: they must still be built with the new policy's model table."""

    def answered(i: int) -> Decision:
        decision = Decision(request_id=f"r{i}", team="t", route="gpt", task_type="general")
        decision.attempts = [Attempt("gpt", "p", "us", "ok", 1.0)]
        decision.ended_at, decision.total_ms = 1e9 + i, 2.0
        return decision

    chat = ChatRequest.from_body({"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    old, new = one_model_policy("gpt-4o-2024-08-06"), one_model_policy("gpt-4o-2024-11-20")
    pipe = Pipe()
    tracing = Tracing(None, link=cast(Any, pipe), max_pending=4)
    tracing.record(old, answered(0), chat, {})
    await tracing.flush()
    assert [kind for kind, _ in pipe.frames] == ["M", "S"]
    pipe.frames.clear()

    for i in range(1, 7):  # the reload's marker and three spans fill the queue; three more come
        tracing.record(new, answered(i), chat, {})
    assert tracing.dropped == 3
    await tracing.flush()
    assert [kind for kind, _ in pipe.frames] == ["M", "S"]
    assert b"gpt-4o-2024-11-20" in pipe.frames[0][1]
    assert b"gpt-4o-2024-08-06" not in pipe.frames[0][1]
    sent = jobs_from_wire(pipe.frames[1][1])
    assert [job.decision.request_id for job in sent] == ["r4", "r5", "r6"]
