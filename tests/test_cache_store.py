"""The cache store's batched calls on a real Redis, and exact entries kept in process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from cache.hot import HotEntries
from cache.local_store import LocalStore
from cache.store import Entry, Put, RedisStore
from gateway.core.runtime import RUNTIME
from gateway.policy.cache_config import CacheConfig
from gateway.stages.cache import CacheStage
from gateway.telemetry.metrics import Metrics
from tests.conftest import TEAM_KEY, Fakes, policy_for
from tests.fakes.base import Ok

SHARED_REDIS = "redis://127.0.0.1:6379/0"


def entry(entry_id: int, scope: str = "s", query: str = "q") -> Entry:
    vector = np.ones(4, dtype=np.float32) / 2
    return Entry(
        id=entry_id,
        scope=scope,
        team="t",
        route="r",
        query=query,
        answer={"choices": [{"message": {"content": f"answer {entry_id}"}}]},
        vector=vector,
        embedder="e",
    )


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    redis_store = RedisStore(SHARED_REDIS, prefix=f"gw-test-{uuid.uuid4().hex[:8]}")
    yield redis_store
    await redis_store.close()


async def test_a_batch_is_stored_in_one_go_and_evicts_over_the_cap(store: RedisStore) -> None:
    puts = [Put(entry(i), f"x{i}", ttl_s=60, cap=3) for i in range(1, 6)]
    evicted = await store.put_many(puts)
    assert sorted(evicted) == [1, 2]  # the least recently stored of the scope
    found = await store.get_many([1, 3, 5, 99])
    assert [e.id if e else None for e in found] == [None, 3, 5, None]
    exact = await store.exact("x4")
    assert exact is not None
    assert exact.answer["choices"][0]["message"]["content"] == "answer 4"
    assert exact.vector is not None
    assert np.allclose(exact.vector, 0.5)
    assert await store.exact("x1") is None  # its entry was evicted


async def test_states_and_hits_are_saved_for_live_entries_only(store: RedisStore) -> None:
    await store.put(entry(1), "x1", ttl_s=60, cap=10)
    await store.save_states({1: b"learned", 2: b"gone"})
    await store.touch_many({(1, "s"): 3})
    kept = await store.get(1)
    assert kept is not None
    assert kept.state == b"learned"
    assert kept.hits == 3
    assert await store.get(2) is None  # never resurrected as a stub


async def test_many_concurrent_calls_wait_for_a_connection_instead_of_failing() -> None:
    events: list[str] = []
    small = RedisStore(
        SHARED_REDIS,
        prefix=f"gw-test-{uuid.uuid4().hex[:8]}",
        max_connections=4,
        on_pool_event=events.append,
        # Budgets a loaded CI machine cannot overrun: the test is about waiting, not its length.
        timeout_s=5.0,
        pool_wait_s=30.0,
    )
    try:
        await small.put(entry(1), "x1", ttl_s=60, cap=10)
        found = await asyncio.gather(*(small.exact("x1") for _ in range(300)))
        assert all(e is not None and e.id == 1 for e in found)
        assert "waited" in events
        assert "timed_out" not in events
    finally:
        await small.close()


def test_kept_entries_expire_and_are_dropped_by_id_key_or_scope() -> None:
    hot = HotEntries(capacity=2, ttl_s=1.0)
    hot.put("k1", entry(1), now=0.0, expires_in_s=10)
    assert hot.get("k1", now=0.5) is not None
    assert hot.get("k1", now=1.5) is None  # kept 1 s at most
    hot.put("k2", entry(2), now=0.0, expires_in_s=0.2)
    assert hot.get("k2", now=0.3) is None  # never past the entry's own expiry
    hot.put("k3", entry(3, scope="a"), now=0.0, expires_in_s=10)
    hot.put("k4", entry(4, scope="b"), now=0.0, expires_in_s=10)
    hot.put("k5", entry(5, scope="b"), now=0.0, expires_in_s=10)
    assert len(hot) == 2
    assert hot.get("k3", now=0.1) is None
    hot.drop_id(4)
    assert hot.get("k4", now=0.1) is None
    hot.drop_scope("b")
    assert len(hot) == 0


async def ask(client: TestClient[Any, Any], text: str, **headers: str) -> tuple[str, str]:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {TEAM_KEY}", **headers},
    )
    body = await response.json()
    return response.headers["x-gateway-cache"], body["choices"][0]["message"]["content"]


async def settle(client: TestClient[Any, Any]) -> None:
    for stage in client.app[RUNTIME].interceptors:
        await stage.drain()  # type: ignore[attr-defined]


async def test_a_repeat_served_from_memory_follows_a_refreshed_answer(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    settings = {"redis_url": SHARED_REDIS, "redis_prefix": f"gw-test-{uuid.uuid4().hex[:8]}"}
    client = await make_gateway(
        policy_for(fakes, cache={"static_threshold": 0.85}), embedder=embedder, **settings
    )
    fakes.openai.push(Ok(text="First answer."))
    await ask(client, "Where is the office?")
    await settle(client)
    assert await ask(client, "Where is the office?") == ("hit", "First answer.")
    stage = client.app[RUNTIME].interceptors[0]
    assert len(stage.hot) == 1  # type: ignore[attr-defined]
    assert await ask(client, "Where is the office?") == ("hit", "First answer.")  # from memory
    fakes.openai.push(Ok(text="Second answer."))
    assert await ask(client, "Where is the office?", **{"x-gateway-cache": "refresh"}) == (
        "refresh",
        "Second answer.",
    )
    await settle(client)
    assert await ask(client, "Where is the office?") == ("hit", "Second answer.")
    assert len(fakes.openai.requests) == 2


class CountingStore(LocalStore):
    """The in-process store, counting exact reads and answering them after a pause."""

    def __init__(self) -> None:
        super().__init__()
        self.exact_reads = 0

    async def exact(self, key: str) -> Entry | None:
        self.exact_reads += 1
        await asyncio.sleep(0.01)
        return await super().exact(key)


async def test_concurrent_repeats_share_one_exact_read() -> None:
    """When a popular question's copy in memory lapses, its concurrent repeats share one read;
    a repeat cut off meanwhile leaves the read running for the others."""
    store = CountingStore()
    await store.put(entry(1), "x1", ttl_s=60, cap=10)
    embedder = SimpleNamespace(name="e", dim=4)
    stage = CacheStage(CacheConfig(), store, embedder, Metrics())  # type: ignore[arg-type]
    impatient = asyncio.ensure_future(stage._read_exact("x1"))
    await asyncio.sleep(0)
    impatient.cancel()
    found = await asyncio.gather(*(stage._read_exact("x1") for _ in range(50)))
    assert {e.id if e else None for e in found} == {1}
    assert store.exact_reads == 1
    assert await stage._read_exact("x1") is not None
    assert store.exact_reads == 2  # a read is shared while it runs, not remembered
