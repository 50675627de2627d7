"""Tier outcomes shared by the gateway's replicas and kept across restarts (Redis streams).

Each graded outcome a replica's tier router learns (``TierRouter.on_outcome``: the request's
embedding, text features, the tier that answered, its quality and the signal's weight) is
appended to its route's stream ``<prefix>:tier:<route>``, capped at about the route's
``memory``. Every replica follows the streams and learns the others' outcomes
(``TierRouter.apply``); a replica that starts, or a route that gains ``tiering``, first replays
the stream's newest ``memory`` entries (at start-up before the first request is served, for up
to ``STARTUP_S``), so a restart or a new replica does not start cold. A later grade of the same
request (``POST /v1/feedback`` after the heuristics) is a new entry with the same key: it
regrades the outcome wherever it is still remembered. A grade sent to another replica than the
one that answered (``relay_grade``) goes through the stream to the one that answered, which
learns it as its own late grade and shares it as such.

Nothing on the request path waits on Redis: entries queue in memory (``publish``) and one
background task writes them in batches and reads the others'. During an outage each replica
learns from its own outcomes alone and keeps up to ``pending_max`` of them queued, written when
Redis returns (beyond that the oldest are dropped, counted in
``gateway_tier_outcomes{result="dropped"}``); it then catches up with the others' (entries
trimmed from a stream meanwhile are missed). Entries that are malformed, not finite, not
unit-length or embedded by another model are never learnt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.core.background import finish_tasks
from gateway.telemetry.metrics import Metrics

from .router import Outcome, TierRouter

log = logging.getLogger(__name__)

# Outcomes per write, entries read per call and entries applied between two yields to the event
# loop: each holds the loop for a few milliseconds at most (redis-py parses replies in Python).
BATCH = 64
PAGE = 256
STARTUP_S = 5.0  # the most the start-up replay may delay serving (Redis slow or away)
UNIT = 1e-3  # how far from unit length a shared embedding may be


def encode(outcome: Outcome, replica: str, model: str) -> dict[str, bytes | str]:
    return {
        "k": f"{replica}/{outcome.key}",
        "r": replica,
        "m": model,
        "t": outcome.tier,
        "q": repr(float(outcome.quality)),
        "w": repr(float(outcome.weight)),
        "v": np.asarray(outcome.embedding, dtype=np.float32).tobytes(),
        "f": b"" if outcome.features is None else outcome.features.astype(np.float64).tobytes(),
    }


def encode_grade(key: str, replica: str, quality: float, weight: float) -> dict[str, str]:
    """A late grade of the outcome ``key`` (``<replica that answered>/<request id>``)."""
    return {"k": key, "r": replica, "g": "1", "q": repr(float(quality)), "w": repr(float(weight))}


def _grade(fields: dict[bytes, bytes]) -> tuple[float, float] | None:
    """(quality 0..1, weight in (0, 1]) of an entry; ``None`` unless both are."""
    try:
        quality, weight = float(fields[b"q"]), float(fields[b"w"])
    except (KeyError, ValueError):
        return None
    return (quality, weight) if 0 <= quality <= 1 and 0 < weight <= 1 else None  # NaN fails


def decode(route: str, fields: dict[bytes, bytes]) -> tuple[str, str, Outcome] | None:
    """(the writer's replica, its embedding model, the outcome) of a stream entry; ``None`` if
    it is malformed, not finite or its embedding not of unit length (one bad entry must not
    skew every replica's estimates)."""
    grade = _grade(fields)
    try:
        vector = np.frombuffer(fields[b"v"], dtype=np.float32)
        raw = fields.get(b"f", b"")
        features = np.frombuffer(raw, dtype=np.float64) if raw else None
        key, tier = fields[b"k"].decode(), fields[b"t"].decode()
        replica, model = fields[b"r"].decode(), fields.get(b"m", b"").decode()
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    if grade is None or not vector.size or not np.isfinite(vector).all():
        return None
    if abs(float(np.linalg.norm(vector)) - 1.0) > UNIT:
        return None
    if features is not None and not np.isfinite(features).all():
        return None
    return replica, model, Outcome(route, key, vector, features, tier, *grade)


class TierOutcomeSync:
    """This replica's end of the shared outcome streams. ``model`` and ``dim``: the embedding
    model this replica compares prompts with; outcomes embedded by another are ignored."""

    def __init__(
        self,
        tiers: Callable[[], TierRouter | None],
        redis_url: str,
        *,
        model: str,
        dim: int,
        prefix: str = "gw",
        metrics: Metrics | None = None,
        block_ms: int = 250,
        pending_max: int = 10_000,
        replica: str | None = None,
    ) -> None:
        self._tiers = tiers  # read each round: a reload may create the tier router
        self._redis = aioredis.Redis.from_url(
            redis_url, socket_timeout=2.0, socket_connect_timeout=1.0
        )
        self.model, self.dim = model, dim
        self.prefix = prefix
        self.metrics = metrics
        self.block_ms = block_ms
        self.replica = replica or uuid.uuid4().hex[:12]
        # Entries to write: (route, fields), oldest first.
        self._pending: deque[tuple[str, dict[str, Any]]] = deque(maxlen=pending_max)
        self._last: dict[str, str] = {}  # route -> the last stream entry applied
        self._epochs: dict[str, int] = {}  # route -> the epoch of its state when replayed
        self._hooked: TierRouter | None = None
        self.healthy = True

    @property
    def queued(self) -> int:
        """This replica's outcomes waiting to be written."""
        return len(self._pending)

    def key(self, route: str) -> str:
        return f"{self.prefix}:tier:{route}"

    def attach(self, tiers: TierRouter) -> None:
        """Share ``tiers``' outcomes from now on (a reload may create the tier router)."""
        tiers.on_outcome = self.publish
        tiers.replica = self.replica
        self._hooked = tiers

    # -- the request path -----------------------------------------------------------------
    def publish(self, outcome: Outcome) -> None:
        """Queue one of this replica's outcomes for the others (never waits)."""
        self._queue(outcome.route, encode(outcome, self.replica, self.model))

    def relay_grade(
        self, route: str, request_id: str, tiering: dict[str, Any], quality: float
    ) -> bool:
        """A client's grade of a request another replica answered (``tiering``: its decision
        record's): queued for that replica, which owns the outcome; ``False`` if the record
        names no other replica."""
        origin = tiering.get("replica")
        if not isinstance(origin, str) or origin == self.replica:
            return False
        self._queue(route, encode_grade(f"{origin}/{request_id}", self.replica, quality, 1.0))
        return True

    def _queue(self, route: str, fields: dict[str, Any]) -> None:
        if len(self._pending) == self._pending.maxlen:
            self._count("dropped")  # Redis has been away for long: the oldest goes
        self._pending.append((route, fields))

    # -- the background task --------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Write this replica's outcomes and learn the others' until ``stop``."""
        while not stop.is_set():
            try:
                await self.sync_once()
                if not self.healthy:
                    log.info("tier outcome streams are back")
                self.healthy = True
                continue
            except RedisError as exc:
                if self.healthy:
                    log.warning("tier outcome streams unavailable (%s); learning alone", exc)
                self.healthy = False
            except Exception:  # the follower must outlive any one bad round
                log.exception("sharing tier outcomes failed; continuing")
            self._count("error")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def sync_once(self, block_ms: int | None = None) -> None:
        """One round: write what is queued, replay the streams of routes not followed yet,
        then read (waiting up to ``block_ms`` for, 0: not at all) the others' new outcomes."""
        wait_ms = self.block_ms if block_ms is None else block_ms
        tiers = self._tiers()
        if tiers is None:
            await asyncio.sleep(wait_ms / 1000)
            return
        if self._hooked is not tiers:
            self.attach(tiers)
        memories, epochs = tiers.memories(), tiers.epochs()
        await self.flush(memories)
        for route in [r for r in self._last if epochs.get(r) != self._epochs.get(r)]:
            del self._last[route]  # the route lost tiering (and maybe gained it again)
            self._epochs.pop(route, None)
        for route, size in memories.items():
            if route not in self._last:
                await self._replay(tiers, route, size)
                self._epochs[route] = epochs[route]
        if not self._last:  # no tiered route: nothing to read, but never a busy loop
            await asyncio.sleep(wait_ms / 1000)
            return
        found: Any = await self._redis.xread(
            {self.key(route): last for route, last in self._last.items()},
            count=PAGE,
            block=wait_ms or None,  # Redis's BLOCK 0 would wait for ever
        )
        prefix = len(self.key(""))
        for stream, entries in found or []:
            route = stream.decode()[prefix:]
            if route in self._last:
                await self._apply_all(tiers, route, entries, replay=False)
                self._last[route] = entries[-1][0].decode()

    async def flush(self, memories: dict[str, int]) -> None:
        """Write the queued entries; a batch that fails goes back to the queue's head."""
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            kept = [(route, fields) for route, fields in batch if route in memories]
            self._count("dropped", len(batch) - len(kept))  # routes that lost tiering
            pipe = self._redis.pipeline(transaction=False)
            for route, fields in kept:
                pipe.xadd(
                    self.key(route),
                    fields,  # type: ignore[arg-type]
                    maxlen=memories[route],
                    approximate=True,
                )
            try:
                results = await pipe.execute(raise_on_error=False)
            except (RedisConnectionError, RedisTimeoutError):
                self._requeue(kept)  # written when Redis is back
                raise
            refused = sum(isinstance(result, Exception) for result in results)
            if refused:  # e.g. a key of another type: retrying would not help
                log.warning("Redis refused %d tier outcome writes: %s", refused, results)
            self._count("dropped", refused)
            self._count("written", len(kept) - refused)

    def _requeue(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Put a batch that could not be written back at the queue's head; what would not fit
        under ``pending_max`` beside what was queued meanwhile is its oldest: dropped."""
        assert self._pending.maxlen is not None
        over = len(self._pending) + len(batch) - self._pending.maxlen
        if over > 0:
            self._count("dropped", over)
            batch = batch[over:]
        self._pending.extendleft(reversed(batch))

    async def _replay(self, tiers: TierRouter, route: str, size: int) -> None:
        """Learn the newest ``size`` outcomes of a route's stream, oldest first."""
        pages: list[Any] = []
        newest, left = "+", size
        while left > 0:  # newest first, a page per call
            page: Any = await self._redis.xrevrange(self.key(route), newest, "-", min(left, PAGE))
            if not page:
                break
            pages.append(page)
            left -= len(page)
            newest = "(" + page[-1][0].decode()
        entries = [entry for page in reversed(pages) for entry in reversed(page)]
        await self._apply_all(tiers, route, entries, replay=True)
        self._last[route] = entries[-1][0].decode() if entries else "0-0"
        if entries:
            log.info("tier router %s: %d outcomes replayed from Redis", route, len(entries))

    async def _apply_all(
        self, tiers: TierRouter, route: str, entries: list[Any], *, replay: bool
    ) -> None:
        for start in range(0, len(entries), BATCH):
            if start:
                await asyncio.sleep(0)  # requests keep flowing
            self._apply(tiers, route, entries[start : start + BATCH], replay=replay)

    def _apply(self, tiers: TierRouter, route: str, entries: list[Any], *, replay: bool) -> None:
        for _, fields in entries:
            if fields.get(b"g") == b"1":
                self._apply_grade(tiers, route, fields)
                continue
            decoded = decode(route, fields)
            if decoded is None:
                self._count("malformed")
                continue
            replica, model, outcome = decoded
            # This replica's own outcomes were learnt when they happened; a replay still learns
            # the ones it no longer remembers (a route that lost tiering and gained it again).
            if replica == self.replica and (
                not replay or tiers.knows(outcome.key.partition("/")[2], route)
            ):
                continue
            comparable = model == self.model and outcome.embedding.size == self.dim
            self._count("learnt" if comparable and tiers.apply(outcome) else "ignored")

    def _apply_grade(self, tiers: TierRouter, route: str, fields: dict[bytes, bytes]) -> None:
        """A grade relayed by another replica: the replica that answered learns it as its own
        late grade (and shares it on); every other one regrades its copy of the outcome, if it
        has one (the replica that answered may have restarted since)."""
        grade = _grade(fields)
        try:
            key = fields[b"k"].decode()
        except (KeyError, UnicodeDecodeError):
            key = ""
        origin, _, request_id = key.partition("/")
        if grade is None or not request_id:
            self._count("malformed")
        elif origin == self.replica:
            self._count("learnt" if tiers.observe(request_id, *grade) else "ignored")
        elif tiers.regrade_shared(route, key, *grade):
            self._count("learnt")

    def _count(self, result: str, n: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.tier_outcomes, result).inc(n)

    async def close(self) -> None:
        """Write what is still queued (within two seconds), then disconnect."""
        tiers = self._tiers()
        if tiers is not None and self._pending:
            with contextlib.suppress(RedisError, TimeoutError):
                await asyncio.wait_for(self.flush(tiers.memories()), timeout=2.0)
        if tiers is not None and tiers.on_outcome == self.publish:
            tiers.on_outcome, tiers.replica = None, None
        await self._redis.aclose()


@contextlib.asynccontextmanager
async def sharing_outcomes(
    tiers: Callable[[], TierRouter | None],
    redis_url: str,
    *,
    model: str,
    dim: int,
    prefix: str,
    metrics: Metrics,
) -> AsyncIterator[TierOutcomeSync]:
    """The outcome streams' follower, running for the application's lifetime."""
    sync = TierOutcomeSync(tiers, redis_url, model=model, dim=dim, prefix=prefix, metrics=metrics)
    try:  # learn what the routes learnt before serving (what is left, the task catches up on)
        await asyncio.wait_for(sync.sync_once(block_ms=0), timeout=STARTUP_S)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("tier outcomes not replayed at start (%s); catching up in the background", exc)
    except Exception:  # a start-up must not fail on what another replica wrote
        log.exception("replaying tier outcomes failed; catching up in the background")
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop), name="tier-outcome-sync")
    try:
        yield sync
    finally:
        stop.set()
        await finish_tasks([task], grace_s=2.0)
        await sync.close()
