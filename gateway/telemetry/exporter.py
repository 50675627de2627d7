"""The telemetry exporter process: where decision records are written and spans exported.

With ``GATEWAY_TELEMETRY_PROCESS=true`` (the default) the gateway starts one child process, ``python
-m gateway.telemetry.exporter``, and hands it its telemetry once per batch instead of doing the
writes itself: the decision records' JSON lines (the gateway serialises each record once, for the
ring's readers too) and a compact list of the traced requests' span data. The child appends the
lines to the JSON-lines file, streams them to Redis, encodes the spans to OTLP protobuf and posts
them: the same code (``DecisionSinks.store``, ``Tracing``) the gateway runs in-process when the
setting is off. What moves off the gateway's event loop is the file and socket I/O, the Redis and
HTTP clients and the span encoding, which together cost the serving process more than the records'
serialisation (see bench/overhead_telemetry.py); the child's CPU is reported beside the gateway's
there.

Frames on the child's stdin: a 4-byte big-endian length, a 1-byte kind, the payload.

- ``C`` the configuration (JSON, first frame): sinks, OTLP endpoint, log level. It travels on
  the pipe, not on the command line, which every user of the machine can read (a Redis URL may
  carry a password).
- ``R`` a batch of records: 8-byte sequence number, 4-byte length of the request ids (each
  followed by ``\\n``), the ids, then the JSON lines. The child answers each with one JSON line
  on its stdout: ``{"seq": n, "file": [ok, failed], "redis": [ok, failed]}``; the gateway counts
  them in its metrics and a read of the stream waits for the answer to the last batch sent.
- ``M`` the model table of the policy in force (tracing's span attributes), before the first
  spans and after a reload.
- ``S`` spans to build: a JSON list, one compact entry per traced request (``tracing.wire``).

A batch the pipe cannot take (the child is far behind: over ``max_buffer`` bytes queued) is
dropped and counted, as the in-process queues do. If the child dies, the batches it had not
answered are counted as dropped, it is started again at the next batch (at most once a second),
and the death is logged. At shutdown the gateway closes the pipe: the child writes and exports
what it holds, then exits (killed after ``close_timeout_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway.policy.settings import Settings

log = logging.getLogger("gateway.telemetry.exporter")  # also when run as __main__

_HEADER = struct.Struct(">IB")
_RECORDS = struct.Struct(">QI")
RESPAWN_S = 1.0
QUEUED_FRAMES = 64  # batches the child holds per worker
NICE = 10  # the exporter process's niceness: it yields to serving work


class ExporterLink:
    """The gateway's end: starts the child, sends it batches, reads its answers."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        max_buffer: int = 64 << 20,
        close_timeout_s: float = 10.0,
    ) -> None:
        self.config = config
        self.max_buffer = max_buffer
        self.close_timeout_s = close_timeout_s
        self.sent = 0  # sequence number of the last records batch sent
        self.acked = 0  # ... and of the last one the child answered
        # Called with each answer (the decision sinks count it in their metrics), and with the
        # number of records lost when the child dies or a batch cannot be sent.
        self.on_answer: Callable[[dict[str, Any]], None] | None = None
        self.on_lost: Callable[[int], None] | None = None
        self.on_exit: Callable[[], None] | None = None  # the child exited unexpectedly
        self._models: bytes | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inflight: dict[int, int] = {}  # seq -> records in that batch
        self._answered = asyncio.Condition()
        self.ready = asyncio.Event()  # the running child has read its configuration
        self._started_at = 0.0
        self._closing = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ExporterLink | None:
        """A link when the setting is on and there is something to export; else ``None``."""
        redis_url = settings.redis_url if settings.decision_stream else None
        if not settings.telemetry_process or not (
            redis_url or settings.decision_log or settings.otlp_endpoint
        ):
            return None
        return cls(
            {
                "log_level": settings.log_level,
                "redis_url": redis_url,
                "prefix": settings.redis_prefix,
                "maxlen": settings.decision_stream_maxlen,
                "path": str(settings.decision_log) if settings.decision_log else None,
                "otlp_endpoint": settings.otlp_endpoint,
                "service_name": settings.otlp_service_name,
                "gc_gen0_threshold": settings.gc_gen0_threshold,
            }
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- lifetime -------------------------------------------------------------------------
    async def start(self) -> None:
        await self._spawn()

    async def _spawn(self) -> None:
        self._started_at = time.monotonic()
        self.ready.clear()
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.telemetry.exporter",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(self._proc), name="exporter-answers")
        self._write(b"C", orjson.dumps(self.config))
        if self._models is not None:
            self._write(b"M", self._models)

    async def close(self) -> None:
        """Close the pipe; the child writes what it holds and exits."""
        self._closing = True
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(ConnectionError):
            proc.stdin.close()
            await proc.stdin.wait_closed()
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await proc.wait()
        except TimeoutError:
            log.warning("the telemetry exporter did not finish in time; stopping it")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None:
            await asyncio.wait([self._reader])

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                answer = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("the telemetry exporter wrote something unexpected; ignored")
                continue
            seq = int(answer.get("seq", 0))
            self.ready.set()  # its first answer says it is set up
            self._inflight.pop(seq, None)
            if self.on_answer is not None:
                self.on_answer(answer)
            async with self._answered:
                self.acked = max(self.acked, seq)
                self._answered.notify_all()
        code = await proc.wait()
        lost = sum(self._inflight.values())
        self._inflight.clear()
        if lost and self.on_lost is not None:
            self.on_lost(lost)
        async with self._answered:
            self.acked = self.sent  # nothing more will be answered: readers must not wait
            self._answered.notify_all()
        if not self._closing:
            if self.on_exit is not None:
                self.on_exit()
            log.error(
                "the telemetry exporter exited (code %s); %d decision records lost; "
                "it is started again at the next batch",
                code,
                lost,
            )

    async def _alive(self) -> bool:
        """The child is running, started again if it died (at most once per ``RESPAWN_S``).

        Its reader ends only after counting what the dead child lost: until then there is no
        new child (whose batches that count would take as lost too)."""
        if self._reader is not None and not self._reader.done():
            return True
        if self._closing or time.monotonic() - self._started_at < RESPAWN_S:
            return False
        await self._spawn()
        return True

    def _write(self, kind: bytes, payload: bytes) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing():
            return False
        transport = proc.stdin.transport
        if transport.get_write_buffer_size() > self.max_buffer:
            return False
        proc.stdin.write(_HEADER.pack(len(payload), kind[0]) + payload)
        return True

    # -- what the gateway sends -----------------------------------------------------------
    async def records(self, rids: str, blob: bytes, count: int) -> None:
        """Hand over a batch of ``count`` records (counted as lost when it cannot be sent)."""
        if await self._alive():
            seq = self.sent + 1
            rid_bytes = rids.encode()
            if self._write(b"R", _RECORDS.pack(seq, len(rid_bytes)) + rid_bytes + blob):
                self.sent = seq
                self._inflight[seq] = count
                return
        if self.on_lost is not None:
            self.on_lost(count)

    async def models(self, table: bytes) -> None:
        """The model table spans are built with, from now on."""
        self._models = table
        if await self._alive():
            self._write(b"M", table)

    async def spans(self, wire: bytes) -> bool:
        """Hand over traced requests' span data; ``False`` when it could not be sent."""
        return await self._alive() and self._write(b"S", wire)

    async def wait_written(self, timeout_s: float) -> bool:
        """Wait until every records batch sent so far is answered; ``False`` at the timeout."""
        target = self.sent
        try:
            async with asyncio.timeout(timeout_s), self._answered:
                await self._answered.wait_for(lambda: self.acked >= target)
        except TimeoutError:
            return False
        return True


# -- the child ------------------------------------------------------------------------------
async def _serve() -> None:
    from gateway.core.background import tune_gc

    from .decision_store import DecisionSinks
    from .otlp import OTLPHttpExporter
    from .trace_jobs import jobs_from_wire, models_from_wire
    from .tracing import Tracing

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    async def frame() -> tuple[int, bytes] | None:
        try:
            size, kind = _HEADER.unpack(await reader.readexactly(_HEADER.size))
            return kind, await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            return None  # the gateway closed the pipe: finish and exit

    first = await frame()
    if first is None:
        return
    config = orjson.loads(first[1])
    logging.basicConfig(
        level=str(config.get("log_level") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s [exporter] %(message)s",
    )
    sinks = None
    if config.get("redis_url") or config.get("path"):
        from pathlib import Path

        path = config.get("path")
        sinks = DecisionSinks(
            redis_url=config.get("redis_url"),
            prefix=config.get("prefix") or "gw",
            maxlen=int(config.get("maxlen") or 10_000),
            path=Path(path) if path else None,
        )
        await sinks.open()
    tracing = None
    if config.get("otlp_endpoint"):
        tracing = Tracing(
            OTLPHttpExporter(config["otlp_endpoint"]),
            service_name=config.get("service_name") or "knowledge-gateway",
        )
    tune_gc(config["gc_gen0_threshold"])  # as the gateway does
    # Records and spans are written by their own workers: a collector retrying with back-off
    # must not hold up the records (nor the answers a read of the stream waits for).
    # Bounded: while a sink is slow (Redis down, a collector backing off) the child stops
    # reading, the pipe fills, and the gateway drops and counts batches past its own bound.
    records: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUED_FRAMES)
    spans: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(QUEUED_FRAMES)  # S and M

    async def write_records() -> None:
        while (payload := await records.get()) is not None:
            seq, size = _RECORDS.unpack_from(payload)
            start = _RECORDS.size
            rids = payload[start : start + size].decode().split("\n")[:-1]
            lines = [line + b"\n" for line in payload[start + size :].split(b"\n")[:-1]]
            counts: dict[str, list[int]] = {}
            if sinks is not None:
                counts = await sinks.store(rids, lines)
            out.write(orjson.dumps({"seq": seq, **counts}) + b"\n")
            out.flush()

    async def export_spans() -> None:
        while (got := await spans.get()) is not None:
            kind, payload = got
            if tracing is None:
                continue
            if kind == ord("M"):
                tracing.use_models(models_from_wire(payload))
                continue
            jobs = jobs_from_wire(payload)
            if not await tracing.export_jobs(jobs):
                log.warning("exporting the spans of %d requests failed", len(jobs))

    workers = [asyncio.create_task(write_records()), asyncio.create_task(export_spans())]
    out.write(b'{"seq": 0}\n')  # ready
    out.flush()
    while (got := await frame()) is not None:
        kind, payload = got
        if kind == ord("R"):
            await records.put(payload)
        elif kind in (ord("S"), ord("M")):  # a model table in order with the spans it applies to
            await spans.put((kind, payload))
    await records.put(None)
    await spans.put(None)
    await asyncio.gather(*workers)
    if sinks is not None:
        await sinks.close()
    if tracing is not None:
        await tracing.close()


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group, and a service manager may send
    # SIGTERM to every process of the service: the child ignores both and exits when the gateway
    # closes the pipe (after its own drain, or when it is killed), having written what it holds.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Background work: where it shares a core with serving work (the gateway's, or anything
    # else on the machine), that work goes first.
    with contextlib.suppress(OSError):
        os.nice(NICE)
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
