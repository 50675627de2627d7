"""Where decision records go after the request: a bounded Redis stream and a JSON-lines file.

``DecisionSinks.submit`` appends to a bounded deque (the request path's only cost); a background
task drains it every ``interval_s`` in batches: each record is serialised once, then the batch is
written with one Lua call per 64 records doing ``XADD … MAXLEN ~ N`` per record (three arguments a
call) and one append to the file (in a worker thread). A Redis outage costs the records of the
outage on the stream (the ring and the file still have them) and one log line; writes resume when
Redis is back. With the exporter process (gateway/telemetry/exporter.py, the default) the serialised
batch is handed to it instead and the child runs ``store``; this end keeps the queue, the metrics
(from the child's answers) and the reads.

The stream is ``<prefix>:decisions``; each entry holds ``rid`` (the request id) and ``d`` (the
record's JSON). Reads (``lookup``, ``query``) scan it newest first: it is bounded, and the
decisions people ask about (feedback, the admin API) are recent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.core.background import flush_periodically, stop_then_flush
from gateway.core.errors import InvalidRequest

if TYPE_CHECKING:
    from gateway.core.decision import Decision
    from gateway.policy.settings import Settings

    from .exporter_link import ExporterLink
    from .metrics import Metrics

log = logging.getLogger(__name__)

READ_FLUSH_S = 1.0  # the most a read waits for pending records to be written
PAGE = 500  # stream entries per XREVRANGE
# XADD each record to KEYS[1], trimmed to about ARGV[1] entries. ARGV[2]: the request ids and
# ARGV[3]: the records' JSON, each followed by "\n" (JSON lines hold no raw newline, request ids
# neither). Two arguments instead of two per record: the client packs each argument in Python,
# which cost more than the rest of a record's write.
_APPEND_LUA = """
local rids, n = {}, 0
for rid in string.gmatch(ARGV[2], "([^\\n]*)\\n") do
  n = n + 1
  rids[n] = rid
end
local i = 0
for line in string.gmatch(ARGV[3], "([^\\n]*)\\n") do
  i = i + 1
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'rid', rids[i], 'd', line)
end
return i
"""
YIELD_EVERY = 32  # records serialised between two yields to the event loop
STREAM_CHUNK = 64  # records per script call: Redis is held ~0.6 ms (256: ~1.8 ms)


@dataclass(frozen=True, slots=True)
class DecisionQuery:
    """Filters of ``GET /admin/decisions``; ``None`` matches anything.

    ``status``: an exact code (``"429"``), a class (``"5xx"``) or ``"error"`` (any status >= 400).
    ``since``: epoch seconds (a record's ``started_at``).
    """

    team: str | None = None
    route: str | None = None
    status: str | None = None
    source: str | None = None
    since: float | None = None
    limit: int = 100

    @classmethod
    def from_params(cls, params: Mapping[str, str], *, max_limit: int = 1000) -> DecisionQuery:
        """From ``GET /admin/decisions``'s query string; raises ``InvalidRequest``."""
        try:
            limit = max(1, min(max_limit, int(params.get("limit", "100"))))
        except ValueError as exc:
            raise InvalidRequest("limit must be a number.", param="limit") from exc
        since: float | None = None
        if (raw := params.get("since")) is not None:
            since = _since(raw)
        status = params.get("status")
        if status is not None and not (
            status == "error" or re.fullmatch(r"[1-5](xx|\d\d)", status)
        ):
            raise InvalidRequest(
                "status must be a code (429), a class (5xx) or 'error'.", param="status"
            )
        return cls(
            team=params.get("team"),
            route=params.get("route"),
            status=status,
            source=params.get("source"),
            since=since,
            limit=limit,
        )

    def matches(self, record: dict[str, Any]) -> bool:
        if self.team is not None and record.get("team") != self.team:
            return False
        if self.route is not None and record.get("route") != self.route:
            return False
        if self.source is not None and record.get("source") != self.source:
            return False
        if self.since is not None and float(record.get("started_at") or 0) < self.since:
            return False
        return self.status is None or _status_matches(self.status, int(record.get("status") or 0))


def _since(raw: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise InvalidRequest(
            "since must be epoch seconds or an ISO 8601 time.", param="since"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _status_matches(wanted: str, status: int) -> bool:
    if wanted == "error":
        return status >= 400
    if len(wanted) == 3 and wanted.endswith("xx") and wanted[0].isdigit():
        return status // 100 == int(wanted[0])
    return str(status) == wanted


def decision_sinks(
    settings: Settings, metrics: Metrics | None = None, link: ExporterLink | None = None
) -> DecisionSinks | None:
    """The sinks ``settings`` configure: the Redis stream with ``GATEWAY_REDIS_URL`` (unless
    ``GATEWAY_DECISION_STREAM=false``), the file with ``GATEWAY_DECISION_LOG``; ``None`` with
    neither (the ring alone). With ``link`` the exporter process writes them; this end reads."""
    redis_url = settings.redis_url if settings.decision_stream else None
    if not redis_url and settings.decision_log is None:
        return None
    return DecisionSinks(
        redis_url=redis_url,
        prefix=settings.redis_prefix,
        maxlen=settings.decision_stream_maxlen,
        path=settings.decision_log,
        metrics=metrics,
        link=link,
    )


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("writing decision records failed: %s", exc)


class DecisionSinks:
    """The durable copies of decision records: Redis stream and/or JSON-lines file."""

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        prefix: str = "gw",
        maxlen: int = 10_000,
        path: Path | None = None,
        metrics: Metrics | None = None,
        batch_size: int = 256,
        interval_s: float = 0.2,
        pending_max: int = 20_000,
        link: ExporterLink | None = None,
    ) -> None:
        self.key = f"{prefix}:decisions"
        self.maxlen = maxlen
        self.path = path
        self.metrics = metrics
        self.batch_size = batch_size
        self.interval_s = interval_s
        # With the exporter process this client only reads (the process writes): a read on a
        # connection Redis closed (a restart) is tried again at once on a new one.
        retry: dict[str, Any] = {}
        if link is not None:
            retry = {"retry": Retry(NoBackoff(), 1), "retry_on_error": [RedisConnectionError]}
        self._redis = (
            aioredis.Redis.from_url(
                redis_url, socket_timeout=1.0, socket_connect_timeout=1.0, **retry
            )
            if redis_url
            else None
        )
        self._append_script = (
            self._redis.register_script(_APPEND_LUA) if self._redis is not None else None
        )
        self._pending: deque[Decision] = deque(maxlen=pending_max)
        self._file: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None  # the open file's (device, inode)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._healthy = True
        self.dropped = 0
        # With the exporter process, the batches go to it: this end serialises and reads.
        self._link = link
        if link is not None:
            link.on_answer = self._answered
            link.on_lost = lambda n: self._count("queue", "dropped", n)

    @property
    def shared(self) -> bool:
        """Whether reads see every replica's records (a Redis stream is configured)."""
        return self._redis is not None

    # -- the request path -----------------------------------------------------------------
    def submit(self, decision: Decision) -> None:
        pending = self._pending
        if len(pending) == pending.maxlen:  # the writer is far behind: the oldest goes
            self.dropped += 1
            self._count("queue", "dropped")
        pending.append(decision)

    # -- lifetime -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._link is None:
            await self.open()
        self._task = asyncio.create_task(self._run(), name="decision-writer")

    async def open(self) -> None:
        """Open the file (``start`` does; the exporter process, which only ``store``s, too)."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(self._open_file)

    def _open_file(self) -> None:
        assert self.path is not None
        self._file = self.path.open("ab")
        stat = os.fstat(self._file.fileno())
        self._identity = (stat.st_dev, stat.st_ino)

    async def close(self) -> None:
        await stop_then_flush(self._task, self.flush, self._lock, 5)
        self._task = None
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None
        if self._redis is not None:
            await self._redis.aclose()

    async def _run(self) -> None:
        await flush_periodically(
            lambda: self.interval_s,
            self.flush,
            log,
            "writing decision records failed; continuing",
        )

    async def flush(self) -> None:
        """Write everything pending now (the background task calls this; so do reads)."""
        async with self._lock:
            while self._pending:
                batch = [
                    self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))
                ]
                await self._write(batch)

    async def written(self, timeout_s: float = READ_FLUSH_S) -> bool:
        """Write everything pending, and with the exporter process wait until it has; ``False``
        when that took longer than ``timeout_s`` (the writing goes on)."""
        began = asyncio.get_running_loop().time()
        # Not cancelled at the time limit (a batch taken off the queue would be lost): it
        # carries on in the background.
        writing = asyncio.ensure_future(self.flush())
        await asyncio.wait({writing}, timeout=timeout_s)
        if not writing.done():
            writing.add_done_callback(_retrieve)
            return False
        if self._link is None:
            return True
        left = timeout_s - (asyncio.get_running_loop().time() - began)
        return await self._link.wait_written(max(left, 0.0))

    async def _write(self, batch: list[Decision]) -> None:
        lines: list[bytes] = []
        for i, decision in enumerate(batch, 1):
            lines.append(decision.to_json() + b"\n")  # a JSON line
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # serialising is CPU: let requests run in between
        rids = [d.request_id for d in batch]
        if self._link is not None:  # counted when the exporter process answers
            ids = "".join([f"{rid}\n" for rid in rids])
            await self._link.records(ids, b"".join(lines), len(rids))
        else:
            self._answered(await self.store(rids, lines))

    async def store(self, rids: list[str], lines: list[bytes]) -> dict[str, list[int]]:
        """Append JSON ``lines`` (each ending in a newline) to the file and stream them with
        their request ids; how many each sink took and failed: ``{"file": [ok, failed], ...}``."""
        counts: dict[str, list[int]] = {}
        if self._file is not None:
            try:
                await asyncio.to_thread(self._append, b"".join(lines))
            except OSError as exc:
                log.warning("cannot append decision records to %s: %s", self.path, exc)
                counts["file"] = [0, len(lines)]
            else:
                counts["file"] = [len(lines), 0]
        if self._redis is not None:
            # A script holds Redis while it runs (~7 us per record): one call per chunk keeps
            # every replica's cache, breaker and limit calls from waiting behind a whole batch.
            done = 0
            for start in range(0, len(lines), STREAM_CHUNK):
                chunk = slice(start, start + STREAM_CHUNK)
                ids = "".join([f"{rid}\n" for rid in rids[chunk]])  # hex: no newline
                if not await self._xadd(ids, b"".join(lines[chunk])):
                    break
                done += len(lines[chunk])
            counts["redis"] = [done, len(lines) - done]
        return counts

    def _answered(self, counts: dict[str, Any]) -> None:
        """Count what the sinks took (here, or the exporter process's answer)."""
        for sink in ("file", "redis"):
            if sink in counts:
                ok, failed = counts[sink]
                if ok:
                    self._count(sink, "ok", ok)
                if failed:
                    self._count(sink, "error", failed)
        if self._link is not None and "redis" in counts:
            self._healthy = not counts["redis"][1]

    def _append(self, blob: bytes) -> None:
        assert self._file is not None
        self._reopen_if_moved()
        self._file.write(blob)
        self._file.flush()

    def _reopen_if_moved(self) -> None:
        """Write to a new file at the path once the open one was moved or removed (logrotate's
        default ``create`` mode, or an operator's ``mv``), as ``logging.WatchedFileHandler``
        does: one ``stat`` per batch of records."""
        assert self._file is not None
        assert self.path is not None
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            pass
        else:
            if (stat.st_dev, stat.st_ino) == self._identity:
                return
        self._file.close()
        self._open_file()

    async def _xadd(self, rids: str, blob: bytes) -> bool:
        """Stream records: their request ids and JSON lines, each ending in a newline.
        ``False`` when Redis failed."""
        assert self._append_script is not None
        try:
            await self._append_script(keys=[self.key], args=[self.maxlen, rids, blob])
        except (RedisError, OSError) as exc:
            if self._healthy:
                log.warning(
                    "redis unavailable for decision records (%s); they stay in the ring "
                    "and the file until it is back",
                    exc,
                )
            self._healthy = False
            return False
        if not self._healthy:
            log.info("redis is back; decision records are streamed again")
        self._healthy = True
        return True

    def _count(self, sink: str, result: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.decision_writes, sink, result).inc(n)

    # -- reads ----------------------------------------------------------------------------
    async def lookup(self, request_id: str) -> dict[str, Any] | None:
        """The record of ``request_id`` from the stream; ``None`` if absent or unreadable."""
        if not await self._readable():
            return None
        try:
            async for rid, raw in self._scan("-"):
                if rid == request_id.encode():
                    record: dict[str, Any] = orjson.loads(raw)
                    return record
        except (RedisError, OSError) as exc:
            log.warning("cannot read decision records from redis: %s", exc)
        return None

    async def query(self, query: DecisionQuery) -> list[dict[str, Any]] | None:
        """Matching records, newest first; ``None`` without Redis or when it fails."""
        if not await self._readable():
            return None
        start = "-" if query.since is None else f"{int(query.since * 1000)}-0"
        found: list[dict[str, Any]] = []
        try:
            async for _, raw in self._scan(start):
                record = orjson.loads(raw)
                if query.matches(record):
                    found.append(record)
                    if len(found) >= query.limit:
                        break
        except (RedisError, OSError) as exc:
            log.warning("cannot read decision records from redis: %s", exc)
            return None
        return found

    async def _readable(self) -> bool:
        """Whether reads should go to Redis: it is configured and was up at the last write.

        Pending records are written first so a read sees them, within a second: while Redis is
        down (or slow) a read answers from this replica's ring instead of waiting on it."""
        if self._redis is None or not self._healthy:
            return False
        if not await self.written():
            log.info("decision records still being written; reading what Redis has")
        return self._healthy

    async def _scan(self, start: str) -> Any:
        """``(rid, json)`` of stream entries from newest back to ``start``."""
        assert self._redis is not None
        end = "+"
        while True:
            entries: list[Any] = (
                await self._redis.xrevrange(self.key, max=end, min=start, count=PAGE) or []
            )
            for _entry_id, values in entries:
                yield values.get(b"rid", b""), values.get(b"d", b"{}")
            if len(entries) < PAGE:
                return
            last = entries[-1][0]
            end = "(" + (last.decode() if isinstance(last, bytes) else str(last))
