"""The gateway's end of the telemetry exporter process (``gateway.telemetry.exporter``).

``ExporterLink`` starts the child, sends it batches of decision records and span data in the
frames the child's module docstring describes, reads its answers and restarts it if it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway.policy.settings import Settings

log = logging.getLogger(__name__)

FRAME_HEADER = struct.Struct(">IB")
RECORDS_HEADER = struct.Struct(">QI")
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
        proc.stdin.write(FRAME_HEADER.pack(len(payload), kind[0]) + payload)
        return True

    # -- what the gateway sends -----------------------------------------------------------
    async def records(self, rids: str, blob: bytes, count: int) -> None:
        """Hand over a batch of ``count`` records (counted as lost when it cannot be sent)."""
        if await self._alive():
            seq = self.sent + 1
            rid_bytes = rids.encode()
            if self._write(b"R", RECORDS_HEADER.pack(seq, len(rid_bytes)) + rid_bytes + blob):
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
