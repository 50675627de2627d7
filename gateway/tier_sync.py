"""Tier outcomes shared by the gateway's replicas and kept across restarts (Redis streams).

Each graded outcome a replica's tier router learns (``TierRouter.on_outcome``: the request's
embedding, text features, the tier that answered, its quality and the signal's weight) is
appended to its route's stream ``<prefix>:tier:<route>``, capped at about the route's
``memory``. Every replica follows the streams and learns the others' outcomes
(``TierRouter.apply``); a replica that starts, or a route that gains ``tiering``, first replays
the stream's newest ``memory`` entries, so a restart or a new replica does not start cold. A
later grade of the same request (``POST /v1/feedback`` after the heuristics) is a new entry with
the same key: it regrades the outcome wherever it is still remembered.

Nothing on the request path waits on Redis: outcomes queue in memory (``publish``) and one
background task writes them in batches and reads the others'. During an outage each replica
learns from its own outcomes alone; what it could not write is dropped (counted in
``gateway_tier_outcomes{result="dropped"}``), and it catches up with the others' when Redis
returns (entries trimmed from a stream meanwhile are missed).
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
from redis.exceptions import RedisError

from .metrics import Metrics
from .tiering import Outcome, TierRouter

log = logging.getLogger(__name__)

# Outcomes per write, entries read per call and entries applied between two yields to the event
# loop: each holds the loop for a few milliseconds at most (redis-py parses replies in Python).
BATCH = 64
PAGE = 256


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


def decode(route: str, fields: dict[bytes, bytes]) -> tuple[str, str, Outcome] | None:
    """(the writer's replica, its embedding model, the outcome) of a stream entry; ``None`` if
    it is malformed."""
    try:
        vector = np.frombuffer(fields[b"v"], dtype=np.float32)
        raw = fields.get(b"f", b"")
        features = np.frombuffer(raw, dtype=np.float64) if raw else None
        quality, weight = float(fields[b"q"]), float(fields[b"w"])
        outcome = Outcome(
            route, fields[b"k"].decode(), vector, features, fields[b"t"].decode(), quality, weight
        )
        replica, model = fields[b"r"].decode(), fields.get(b"m", b"").decode()
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
    if not (0 <= quality <= 1 and 0 < weight <= 1 and vector.size and np.isfinite(vector).all()):
        return None
    return replica, model, outcome


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
        self._pending: deque[Outcome] = deque(maxlen=pending_max)
        self._last: dict[str, str] = {}  # route -> the last stream entry applied
        self._hooked: TierRouter | None = None
        self.healthy = True

    @property
    def queued(self) -> int:
        """This replica's outcomes waiting to be written."""
        return len(self._pending)

    def key(self, route: str) -> str:
        return f"{self.prefix}:tier:{route}"

    # -- the request path -----------------------------------------------------------------
    def publish(self, outcome: Outcome) -> None:
        """Queue one of this replica's outcomes for the others (never waits)."""
        if len(self._pending) == self._pending.maxlen:
            self._count("dropped")  # Redis has been away for long: the oldest goes
        self._pending.append(outcome)

    # -- the background task --------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Write this replica's outcomes and learn the others' until ``stop``."""
        while not stop.is_set():
            try:
                await self.sync_once()
                if not self.healthy:
                    log.info("tier outcome streams are back")
                self.healthy = True
            except RedisError as exc:
                if self.healthy:
                    log.warning("tier outcome streams unavailable (%s); learning alone", exc)
                self.healthy = False
                self._count("error")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
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
            tiers.on_outcome = self.publish
            self._hooked = tiers
        memories = tiers.memories()
        await self.flush(memories)
        for route in [r for r in self._last if r not in memories]:
            del self._last[route]
        for route, size in memories.items():
            if route not in self._last:
                await self._replay(tiers, route, size)
        if not self._last:
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
                await self._apply_all(tiers, route, entries)
                self._last[route] = entries[-1][0].decode()

    async def flush(self, memories: dict[str, int]) -> None:
        """Write the queued outcomes (a batch that fails is dropped, counted)."""
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
            batch = [o for o in batch if o.route in memories]  # not a route that lost tiering
            pipe = self._redis.pipeline(transaction=False)
            for outcome in batch:
                pipe.xadd(
                    self.key(outcome.route),
                    encode(outcome, self.replica, self.model),  # type: ignore[arg-type]
                    maxlen=memories[outcome.route],
                    approximate=True,
                )
            try:
                await pipe.execute()
            except RedisError:
                self._count("dropped", len(batch))
                raise
            self._count("written", len(batch))

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
        await self._apply_all(tiers, route, entries)
        self._last[route] = entries[-1][0].decode() if entries else "0-0"
        if entries:
            log.info("tier router %s: %d outcomes replayed from Redis", route, len(entries))

    async def _apply_all(self, tiers: TierRouter, route: str, entries: list[Any]) -> None:
        for start in range(0, len(entries), BATCH):
            if start:
                await asyncio.sleep(0)  # requests keep flowing
            self._apply(tiers, route, entries[start : start + BATCH])

    def _apply(self, tiers: TierRouter, route: str, entries: list[Any]) -> None:
        for _, fields in entries:
            decoded = decode(route, fields)
            if decoded is None:
                self._count("malformed")
                continue
            replica, model, outcome = decoded
            if replica == self.replica:
                continue  # learnt when it happened
            comparable = model == self.model and outcome.embedding.size == self.dim
            self._count("learnt" if comparable and tiers.apply(outcome) else "ignored")

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
            tiers.on_outcome = None
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
    stop = asyncio.Event()
    task = asyncio.create_task(sync.run(stop), name="tier-outcome-sync")
    try:
        yield sync
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await sync.close()
