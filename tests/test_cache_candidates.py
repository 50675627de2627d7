"""What a semantic lookup reads: candidates only when one is near enough to matter, and an
index that lets go of entries the store no longer holds."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np

from cache.local_store import LocalStore
from cache.store import Entry, RedisStore
from gateway.core.runtime import RUNTIME
from gateway.policy.cache_config import CacheConfig
from gateway.stages.cache import CacheStage
from gateway.stages.cache_sync import sweep_indexes
from gateway.telemetry.metrics import Metrics
from tests.conftest import Fakes, policy_for
from tests.fakes.base import Ok
from tests.test_cache_store import SHARED_REDIS, ask, entry, settle


async def test_a_lookup_reads_candidates_only_when_one_is_near(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    """A question far from every cached one misses without reading any entry (nothing below
    the floor can be served, verified or compared); a near one reads its candidates."""
    client = await make_gateway(
        policy_for(fakes, cache={"static_threshold": 0.85}), embedder=embedder
    )
    stage = client.app[RUNTIME].interceptors[0]
    reads: list[list[int]] = []
    read_many = stage.store.get_many

    async def counted(ids: list[int]) -> list[Entry | None]:
        if ids:  # an empty read makes no round trip
            reads.append(list(ids))
        return await read_many(ids)

    stage.store.get_many = counted
    fakes.openai.push(Ok(text="On the third floor."))
    await ask(client, "Where is the office?")
    await settle(client)

    fakes.openai.push(Ok(text="Lima."))
    assert await ask(client, "What was the capital of Peru in 1850?") == ("miss", "Lima.")
    assert reads == []  # the nearest entry was far below 0.85: no round trip for it

    assert await ask(client, "Where is the office located?") == ("hit", "On the third floor.")
    assert len(reads) == 1  # near: its candidates were read and re-scored
    assert reads[0]


async def test_the_sweep_drops_expired_entries_from_the_index() -> None:
    """An entry that expires in the store sends no event: the sweep finds it and the index
    lets it go; live entries stay."""
    store = LocalStore()
    stage = CacheStage(
        CacheConfig(),
        store,
        SimpleNamespace(name="e", dim=4),  # type: ignore[arg-type]
        Metrics(),
    )
    await store.put(entry(1), "x1", ttl_s=60, cap=10)
    await store.put(entry(2), "x2", ttl_s=0.05, cap=10)
    for entry_id in (1, 2):
        stage.indexes.add("s", entry_id, np.ones(4, dtype=np.float32) / 2)
    await asyncio.sleep(0.1)  # entry 2 expires
    stop = asyncio.Event()
    sweeping = asyncio.ensure_future(sweep_indexes(stage, stop, every_s=0.01, batch=1))
    for _ in range(200):  # one key per pass: two passes at least
        if stage.indexes.keys() == [1]:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await sweeping
    assert stage.indexes.keys() == [1]
    await stage.close()


async def test_existing_tells_which_entries_redis_still_holds() -> None:
    store = RedisStore(SHARED_REDIS, prefix=f"gw-test-{uuid.uuid4().hex[:8]}")
    try:
        await store.put(entry(1), "x1", ttl_s=60, cap=10)
        assert await store.existing([1, 2]) == [True, False]
        assert await store.existing([]) == []
    finally:
        await store.close()
