"""The telemetry exporter process (gateway/telemetry/exporter.py): it writes the records and posts
the
spans the gateway hands it, survives being killed, and loses nothing at shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.core.runtime import RUNTIME
from gateway.telemetry.exporter_link import ExporterLink
from tests.conftest import Fakes, RedisServer
from tests.test_telemetry import ask, priced_policy


class Collector:
    """A loopback OTLP/HTTP collector: the span names it received."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._received = asyncio.Condition()
        app = web.Application()
        app.router.add_post("/v1/traces", self._collect)
        self.server = TestServer(app)

    async def _collect(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                self.names += [span.name for span in scope.spans]
        async with self._received:
            self._received.notify_all()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def spans(self, count: int, timeout_s: float = 10.0) -> None:
        """Wait until ``count`` spans have arrived."""
        async with asyncio.timeout(timeout_s), self._received:
            await self._received.wait_for(lambda: len(self.names) >= count)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/v1/traces"))


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    found = Collector()
    async with found.server:
        yield found


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def metric(client: TestClient[Any, Any], sample: str) -> float:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
async def exporting(
    make_gateway: Any, fakes: Fakes, redis_server: RedisServer, collector: Collector, tmp_path: Path
) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway(
        priced_policy(fakes),
        redis_url=redis_server.url,
        decision_log=tmp_path / "decisions.jsonl",
        otlp_endpoint=collector.url,
    )
    return client


def command_line(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def link_of(client: TestClient[Any, Any]) -> ExporterLink:
    link = client.app[RUNTIME].exporter
    assert link is not None
    assert link.pid is not None
    return link


async def test_the_exporter_process_writes_records_and_posts_spans(
    exporting: TestClient[Any, Any], collector: Collector, tmp_path: Path
) -> None:
    runtime = exporting.app[RUNTIME]
    link = link_of(exporting)
    assert link.pid != os.getpid()
    # The configuration (a Redis URL may hold a password) is not on its command line.
    cmdline = command_line(link.pid)
    assert b"redis" not in b" ".join(cmdline)
    assert cmdline[1:3] == [b"-m", b"gateway.telemetry.exporter"]

    ids = [(await ask(exporting)).headers["x-request-id"] for _ in range(3)]
    sinks, tracing = runtime.decisions.sinks, runtime.tracing
    assert sinks is not None
    assert tracing is not None
    assert await sinks.written(5.0)
    assert [line["request_id"] for line in lines(tmp_path / "decisions.jsonl")] == ids
    assert await sinks.lookup(ids[0]) is not None  # streamed to Redis by the child
    # Counted in the gateway's metrics from the child's answers.
    assert await metric(exporting, 'gateway_decision_records_total{result="ok",sink="file"}') == 3
    assert await metric(exporting, 'gateway_decision_records_total{result="ok",sink="redis"}') == 3

    await tracing.flush()
    await collector.spans(6)  # a server and a client span per request
    assert collector.names.count("POST /v1/chat/completions") == 3


async def test_a_killed_exporter_process_is_started_again_and_its_losses_counted(
    exporting: TestClient[Any, Any], tmp_path: Path
) -> None:
    runtime = exporting.app[RUNTIME]
    sinks = runtime.decisions.sinks
    assert sinks is not None
    link = link_of(exporting)
    first = link.pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)  # it takes the next batch but never answers
    assert (await ask(exporting)).status == 200
    await sinks.flush()
    assert link.sent > link.acked
    os.kill(first, signal.SIGKILL)
    assert await link.wait_written(10.0)  # the reader saw it die: nothing more to wait for
    lost = 'gateway_decision_records_total{result="dropped",sink="queue"}'
    assert await metric(exporting, lost) == 1
    assert await metric(exporting, "gateway_telemetry_exporter_exits_total") == 1

    await asyncio.sleep(1.0)  # started again at most once a second
    answered = await ask(exporting)
    assert answered.status == 200  # serving never depended on it
    assert await sinks.written(10.0)
    assert link.pid not in (None, first)
    assert [r["request_id"] for r in lines(tmp_path / "decisions.jsonl")][-1] == (
        answered.headers["x-request-id"]
    )


async def test_a_stalled_exporter_process_costs_batches_not_memory(
    exporting: TestClient[Any, Any],
) -> None:
    runtime = exporting.app[RUNTIME]
    sinks = runtime.decisions.sinks
    assert sinks is not None
    link = link_of(exporting)
    assert link.pid is not None
    os.kill(link.pid, signal.SIGSTOP)
    try:
        # The pipe is full (a frame of a kind the child skips) and nothing more may wait.
        link.max_buffer = 0
        assert link._write(b"X", bytes(1 << 20))
        for _ in range(3):
            assert (await ask(exporting)).status == 200  # answered all the same
            await sinks.flush()
        lost = 'gateway_decision_records_total{result="dropped",sink="queue"}'
        assert await metric(exporting, lost) == 3
        assert link.sent == link.acked  # no batch is waiting for an answer that cannot come
    finally:
        os.kill(link.pid, signal.SIGCONT)


async def test_shutdown_writes_and_exports_what_was_handed_over(
    make_gateway: Any, fakes: Fakes, collector: Collector, tmp_path: Path
) -> None:
    log = tmp_path / "decisions.jsonl"
    client: TestClient[Any, Any] = await make_gateway(
        priced_policy(fakes), decision_log=log, otlp_endpoint=collector.url
    )
    link = link_of(client)
    assert link.pid is not None
    ids = [(await ask(client)).headers["x-request-id"] for _ in range(5)]
    # A service manager stopping the service signals every process of it: the child waits for
    # the gateway to close the pipe.
    async with asyncio.timeout(10):
        await link.ready.wait()
    os.kill(link.pid, signal.SIGTERM)
    await client.close()  # at once: nothing was flushed yet
    assert [line["request_id"] for line in lines(log)] == ids
    assert collector.names.count("POST /v1/chat/completions") == 5
    assert link._proc is not None
    assert link._proc.returncode == 0
