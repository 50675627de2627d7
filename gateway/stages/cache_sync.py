"""The cache stage's life beside the requests: its indexes built from the store, kept in step
with the other replicas, run-time settings picked up, and the stage's lifetime.

Split from gateway/stages/cache.py (the request path): everything here runs in background tasks
that ``running_cache`` starts and stops, and reaches the stage through its public attributes and
its health callbacks. Redis failing here means a log line, a metric and a retry, never an error
a request sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from cache.embedder import Embedder
from cache.local_store import LocalStore
from cache.scope import exact_key
from cache.store import CacheUnavailable, Entry, RedisStore, Store
from gateway.core.background import finish_tasks
from gateway.policy.cache_config import CacheConfig
from gateway.policy.settings import Settings
from gateway.telemetry.metrics import Metrics

from .cache import CacheStage

log = logging.getLogger(__name__)

LOAD_BATCH = 1024  # entries per multi-threaded index add at start (bounds a lookup's wait)
# Entries that expire in Redis (their TTL) send no event; a lookup drops one from the index only
# when it is a candidate worth reading. The sweep checks this many indexed keys this often, in
# turn, so an index does not keep every expired entry until the process restarts.
SWEEP_EVERY_S = 60.0
SWEEP_BATCH = 4096


async def load_indexes(stage: CacheStage) -> int:
    """Build the stage's indexes from the store (at start; requests miss until an entry is in).

    Entries are added in batches, per scope, by several threads at once, off the event loop;
    only entries whose vector this stage's embedder made are indexed."""
    loaded = 0
    batch: list[Entry] = []
    adding: asyncio.Task[int] | None = None  # the previous batch, added while we read on
    async for entry in stage.store.entries():
        if stage.comparable(entry):
            batch.append(entry)
        if len(batch) >= LOAD_BATCH:
            loaded += await adding if adding is not None else 0
            adding = asyncio.ensure_future(_index_batch(stage, batch))
            batch = []
    loaded += await adding if adding is not None else 0
    return loaded + await _index_batch(stage, batch)


async def _index_batch(stage: CacheStage, batch: list[Entry]) -> int:
    by_scope: dict[str, list[Entry]] = {}
    for entry in batch:
        by_scope.setdefault(entry.scope, []).append(entry)

    def add() -> None:
        for scope, entries in by_scope.items():
            stage.indexes.add_many(
                scope,
                [e.id for e in entries],
                [e.vector for e in entries if e.vector is not None],
            )

    await asyncio.to_thread(add)
    return len(batch)


async def follow_replicas(stage: CacheStage, stop: asyncio.Event) -> None:
    """Keep the stage's indexes in step with the other replicas; survive Redis outages."""
    last = "$"
    while not stop.is_set():
        try:
            if last == "$":
                last = await stage.store.latest_event()
                await load_indexes(stage)
            last, events = await stage.store.events(last, block_ms=1000)
            for event in events:
                await _apply(stage, event.op, event.id, event.scope)
            stage.recovered()
        except CacheUnavailable as exc:
            stage.unavailable("sync", exc)
            last = "$"  # reload once Redis is back: we may have missed events
            stage.hot.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)


async def _apply(stage: CacheStage, op: str, entry_id: int, scope: str) -> None:
    if op == "add":
        if stage.own_write(entry_id):  # written (and indexed) by this replica
            return
        entry = await stage.store.get(entry_id)
        if entry is None:
            return
        stage.hot.drop_key(exact_key(entry.scope, entry.query))  # a newer answer
        if entry.vector is not None and stage.comparable(entry):
            stage.indexes.add(entry.scope, entry.id, entry.vector)
    elif op == "del":
        stage.indexes.remove(entry_id)
        stage.hot.drop_id(entry_id)
    elif op == "scope":
        stage.indexes.drop_scope(scope)
        stage.hot.drop_scope(scope)


async def sweep_indexes(
    stage: CacheStage,
    stop: asyncio.Event,
    every_s: float = SWEEP_EVERY_S,
    batch: int = SWEEP_BATCH,
) -> None:
    """Remove indexed entries the store no longer holds, ``batch`` keys every ``every_s``."""
    cursor = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        if stop.is_set():
            return
        keys = stage.indexes.keys()
        if cursor >= len(keys):
            cursor = 0
        chunk = keys[cursor : cursor + batch]
        cursor += batch
        try:
            alive = await stage.store.existing(chunk)
        except CacheUnavailable as exc:
            stage.unavailable("sweep", exc)
            continue
        gone = [key for key, found in zip(chunk, alive, strict=True) if not found]
        if gone:
            # Off the loop: a removal waits for an add under way on the index thread. (The
            # copies in memory need nothing: they are never kept past their entry's TTL.)
            await asyncio.to_thread(stage.indexes.apply, [], gone)
            log.debug("cache: %d expired entries left the index", len(gone))


async def refresh_config(stage: CacheStage, stop: asyncio.Event, every_s: float = 2.0) -> None:
    """Pick up run-time overrides set by ops on any replica."""
    while not stop.is_set():
        try:
            stage.runtime = await stage.store.get_config()
        except CacheUnavailable as exc:
            stage.unavailable("config", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every_s)


@contextlib.asynccontextmanager
async def running_cache(
    config: CacheConfig,
    settings: Settings,
    embedder: Embedder,
    metrics: Metrics,
) -> AsyncIterator[CacheStage]:
    """A cache stage with its store and background sync, for the application's lifetime."""

    def pool_event(outcome: str) -> None:
        metrics.child(metrics.cache_pool_waits, outcome).inc()

    store: Store = (
        RedisStore(settings.redis_url, prefix=settings.redis_prefix, on_pool_event=pool_event)
        if settings.redis_url
        else LocalStore()
    )
    stage = CacheStage(config, store, embedder, metrics)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(follow_replicas(stage, stop), name="cache-index-sync"),
        asyncio.create_task(refresh_config(stage, stop), name="cache-config-sync"),
        asyncio.create_task(sweep_indexes(stage, stop), name="cache-index-sweep"),
    ]
    try:
        yield stage
    finally:
        stop.set()
        await finish_tasks(tasks, grace_s=2.0)  # a blocked read of the stream ends in 1 s
        await stage.close()
        await store.close()
