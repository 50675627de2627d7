"""OpenTelemetry traces: a server span per request, a GenAI client span per attempt.

The OTLP exporter and the exporter process's spans: tests/test_telemetry_otlp.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.core.decision import Attempt, Decision
from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy
from gateway.telemetry.otlp import OTLPHttpExporter, SpanEncoder
from gateway.telemetry.tracing import Tracing
from providers.schema import ChatRequest
from tests.conftest import MODELS, PROVIDER_KEYS, TEAM_KEY, Fakes
from tests.fakes.base import Fail, Ok
from tests.test_telemetry import PROMPT, ask, cost, priced_policy

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def traced(
    make_gateway: Any, fakes: Fakes, exporter: InMemorySpanExporter
) -> AsyncIterator[TestClient[Any, Any]]:
    client: TestClient[Any, Any] = await make_gateway(priced_policy(fakes))
    runtime = client.app[RUNTIME]
    assert runtime.tracing is None  # no endpoint configured: no tracer at all
    runtime.tracing = Tracing(exporter)
    yield client
    await runtime.tracing.close()


async def finished(
    client: TestClient[Any, Any], exporter: InMemorySpanExporter
) -> tuple[ReadableSpan, ...]:
    """The spans exported so far, after the tracer's queue is flushed."""
    tracing = client.app[RUNTIME].tracing
    assert tracing is not None
    await tracing.flush()
    return exporter.get_finished_spans()


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in spans if s.kind == kind]


async def test_one_server_span_and_one_genai_span_per_attempt(
    traced: TestClient[Any, Any], fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    fakes.openai.push(Fail(503))
    fakes.anthropic.push(Ok(prompt_tokens=200, completion_tokens=20))
    response = await ask(traced, max_tokens=64, temperature=0.5)
    assert response.status == 200
    spans = await finished(traced, exporter)
    (server,) = by_kind(spans, SpanKind.SERVER)
    failed, answered = sorted(by_kind(spans, SpanKind.CLIENT), key=lambda s: s.start_time or 0)

    assert server.name == "POST /v1/chat/completions"
    attrs = dict(server.attributes or {})
    assert attrs["gateway.request_id"] == response.headers["x-request-id"]
    assert attrs["gateway.team"] == "alpha"
    assert attrs["gateway.task_type"] == "summarize"
    assert attrs["http.response.status_code"] == 200
    assert attrs["gateway.cost_usd"] == pytest.approx(cost("claude", 200, 20))
    for child in (failed, answered):
        assert child.parent is not None
        assert child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
        assert (server.start_time or 0) <= (child.start_time or 0)
        assert (child.end_time or 0) <= (server.end_time or 0)

    assert failed.name == f"chat {MODELS['gpt'][1]}"
    failed_attrs = dict(failed.attributes or {})
    assert failed_attrs["gen_ai.operation.name"] == "chat"
    assert failed_attrs["gen_ai.provider.name"] == "openai"
    assert failed_attrs["gen_ai.request.model"] == MODELS["gpt"][1]
    assert failed_attrs["error.type"] == "upstream_overloaded"
    assert failed_attrs["server.address"] == "127.0.0.1"
    assert failed.status.status_code == StatusCode.ERROR
    assert "gen_ai.usage.input_tokens" not in failed_attrs

    ok = dict(answered.attributes or {})
    assert answered.name == f"chat {MODELS['claude'][1]}"
    assert ok["gen_ai.provider.name"] == "anthropic"
    assert ok["gen_ai.response.model"] == MODELS["claude"][1]
    assert (ok["gen_ai.usage.input_tokens"], ok["gen_ai.usage.output_tokens"]) == (200, 20)
    assert ok["gen_ai.request.max_tokens"] == 64
    assert ok["gen_ai.request.temperature"] == 0.5
    assert "error.type" not in ok

    # Nothing secret or private on any span.
    dumped = repr([dict(s.attributes or {}) for s in spans])
    for secret in (PROMPT, TEAM_KEY, *PROVIDER_KEYS.values()):
        assert secret not in dumped


async def test_the_clients_trace_context_is_continued(
    traced: TestClient[Any, Any], exporter: InMemorySpanExporter
) -> None:
    response = await traced.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]},
        headers={
            "Authorization": f"Bearer {TEAM_KEY}",
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
        },
    )
    assert response.status == 200
    (server,) = by_kind(await finished(traced, exporter), SpanKind.SERVER)
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == PARENT_ID


async def test_sampling(traced: TestClient[Any, Any], exporter: InMemorySpanExporter) -> None:
    runtime = traced.app[RUNTIME]
    runtime.tracing = Tracing(exporter, sample_ratio=0)
    body = {"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]}
    auth = {"Authorization": f"Bearer {TEAM_KEY}"}
    for _ in range(5):
        assert (await traced.post("/v1/chat/completions", json=body, headers=auth)).status == 200
    assert await finished(traced, exporter) == ()
    # A caller's sampling decision wins: sampled is traced, unsampled is not.
    for flags, spans in (("00", 0), ("01", 2)):
        headers = {**auth, "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-{flags}"}
        assert (await traced.post("/v1/chat/completions", json=body, headers=headers)).status == 200
        assert len(await finished(traced, exporter)) == spans


async def test_a_failed_request_is_an_error_span(
    traced: TestClient[Any, Any], fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    fakes.openai.push(Fail(503))
    fakes.anthropic.push(Fail(503))
    assert (await ask(traced)).status == 503
    spans = await finished(traced, exporter)
    (server,) = by_kind(spans, SpanKind.SERVER)
    assert server.status.status_code == StatusCode.ERROR
    assert dict(server.attributes or {})["error.type"] == "all_providers_failed"
    assert len(by_kind(spans, SpanKind.CLIENT)) == 2


@pytest.mark.parametrize("in_child", [True, False], ids=["exporter-process", "in-process"])
async def test_spans_are_exported_over_otlp_http(
    make_gateway: Any, fakes: Fakes, in_child: bool
) -> None:
    """A loopback OTLP/HTTP collector receives the protobuf ExportTraceServiceRequest, from the
    exporter process (the default) or the gateway itself."""
    received: list[ExportTraceServiceRequest] = []
    arrived = asyncio.Event()

    async def collect(request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector_app = web.Application()
    collector_app.router.add_post("/v1/traces", collect)
    async with TestServer(collector_app) as collector:
        client: TestClient[Any, Any] = await make_gateway(
            priced_policy(fakes),
            otlp_endpoint=str(collector.make_url("/v1/traces")),
            otlp_service_name="gateway-under-test",
            telemetry_process=in_child,
        )
        tracing = client.app[RUNTIME].tracing
        assert tracing is not None
        assert (client.app[RUNTIME].exporter is not None) is in_child
        fakes.openai.push(Ok(prompt_tokens=5, completion_tokens=3))
        assert (await ask(client)).status == 200
        await tracing.flush()  # exports (or hands over) now rather than at the next 2 s tick
        async with asyncio.timeout(10):
            await arrived.wait()  # the exporter process posts them a moment later

    spans = [
        (resource.resource, span)
        for message in received
        for resource in message.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    assert len(spans) == 2
    resource = spans[0][0]
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "gateway-under-test"
    names = sorted(span.name for _, span in spans)
    assert names == ["POST /v1/chat/completions", f"chat {MODELS['gpt'][1]}"]
    client_span = next(span for _, span in spans if span.name.startswith("chat "))
    attrs = {a.key: a.value for a in client_span.attributes}
    assert attrs["gen_ai.usage.input_tokens"].int_value == 5
    assert attrs["gen_ai.usage.output_tokens"].int_value == 3
    assert attrs["gen_ai.provider.name"].string_value == "openai"


async def test_the_lean_encoder_writes_what_the_sdk_encoder_writes(
    traced: TestClient[Any, Any], fakes: Fakes, exporter: InMemorySpanExporter
) -> None:
    fakes.openai.push(Fail(503))
    fakes.anthropic.push(Ok(prompt_tokens=7, completion_tokens=3))
    assert (await ask(traced, temperature=0.25, top_p=0.5, max_tokens=9)).status == 200
    fakes.openai.push(Fail(503))
    fakes.anthropic.push(Fail(503))
    assert (await ask(traced)).status == 503
    await traced.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]},
        headers={
            "Authorization": f"Bearer {TEAM_KEY}",
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
        },
    )
    spans = await finished(traced, exporter)
    assert len(spans) == 3 + 3 + 2
    lean, sdk = ExportTraceServiceRequest(), ExportTraceServiceRequest()
    lean.ParseFromString(SpanEncoder().encode(spans))
    sdk.ParseFromString(encode_spans(spans).SerializeToString())
    assert lean == sdk
    # Twice: the second batch reuses cached attribute bytes.
    encoder = SpanEncoder()
    encoder.encode(spans)
    again = ExportTraceServiceRequest()
    again.ParseFromString(encoder.encode(spans))
    assert again == sdk


async def test_direct_encoding_matches_the_sdk_spans(
    traced: TestClient[Any, Any], fakes: Fakes
) -> None:
    """The OTLP exporter's path (spans encoded straight from the decision, static attributes
    cached) writes what the SDK encoder writes for the same spans as SDK objects."""
    tracing = traced.app[RUNTIME].tracing
    assert tracing is not None
    fakes.openai.push(Fail(503))
    fakes.anthropic.push(Ok(prompt_tokens=7, completion_tokens=3))
    assert (await ask(traced, temperature=0.25, max_tokens=9)).status == 200
    for _ in range(2):  # the second request reuses the cached attribute blocks
        fakes.openai.push(Fail(503))
        fakes.anthropic.push(Fail(503))
        assert (await ask(traced)).status == 503
    headers = {
        "Authorization": f"Bearer {TEAM_KEY}",
        "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
    }
    body = {"model": "gpt", "messages": [{"role": "user", "content": "Hi"}]}
    assert (await traced.post("/v1/chat/completions", json=body, headers=headers)).status == 200
    jobs = list(tracing._pending)
    assert len(jobs) == 4
    encoder = SpanEncoder()
    random.seed(11)
    direct = encoder.request(
        tracing.resource, tracing.scope, [b for job in jobs for b in tracing._encoded(job, encoder)]
    )
    random.seed(11)
    spans = [span for job in jobs for span in tracing._spans(job)]
    assert len(spans) == 3 + 3 + 3 + 2
    mine, sdk = ExportTraceServiceRequest(), ExportTraceServiceRequest()
    mine.ParseFromString(direct)
    sdk.ParseFromString(encode_spans(spans).SerializeToString())
    assert mine == sdk


def one_model_policy(version: str) -> Policy:
    return Policy.model_validate(
        {
            "providers": [{"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}],
            "models": [{"name": "gpt", "provider": "p", "id": version}],
            "teams": [{"name": "t", "key_sha256": "0" * 64, "routes": ["*"]}],
        }
    )


async def test_a_reload_that_pins_another_version_changes_the_spans() -> None:
    """Encoded span parts are cached per alias and outcome; a new policy must not reuse them."""
    posted: list[bytes] = []

    class Keep(OTLPHttpExporter):
        async def export(self, data: bytes) -> bool:
            posted.append(data)
            return True

    def answered() -> Decision:
        decision = Decision(request_id="r", team="t", route="gpt", task_type="general")
        decision.attempts = [Attempt("gpt", "p", "us", "ok", 1.0)]
        decision.ended_at, decision.total_ms = 1e9, 2.0
        return decision

    tracing = Tracing(Keep("http://127.0.0.1:9/v1/traces"))
    chat = ChatRequest.from_body({"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    names = []
    for version in ("gpt-4o-2024-08-06", "gpt-4o-2024-11-20"):
        tracing.record(one_model_policy(version), answered(), chat, {})
        await tracing.flush()
        message = ExportTraceServiceRequest()
        message.ParseFromString(posted[-1])
        names += [s.name for s in message.resource_spans[0].scope_spans[0].spans]
    assert "chat gpt-4o-2024-08-06" in names
    assert "chat gpt-4o-2024-11-20" in names
