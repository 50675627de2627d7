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
import sys
from pathlib import Path

import orjson

from gateway.core.background import tune_gc

from .decision_store import DecisionSinks
from .exporter_link import FRAME_HEADER, NICE, QUEUED_FRAMES, RECORDS_HEADER
from .otlp import OTLPHttpExporter
from .trace_jobs import jobs_from_wire, models_from_wire
from .tracing import Tracing

log = logging.getLogger("gateway.exporter")  # a stable name ops filter on, also as __main__


# -- the child ------------------------------------------------------------------------------
async def _serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer

    async def frame() -> tuple[int, bytes] | None:
        try:
            size, kind = FRAME_HEADER.unpack(await reader.readexactly(FRAME_HEADER.size))
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
            seq, size = RECORDS_HEADER.unpack_from(payload)
            start = RECORDS_HEADER.size
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
