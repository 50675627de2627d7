"""The semantic cache across replicas and stores: shared entries, another embedder's vectors,
Redis outages, invalidation of answers built on re-ingested chunks, removal of one entry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.core.runtime import RUNTIME
from gateway.stages.cache_sync import load_indexes
from tests.conftest import Fakes, RedisServer
from tests.fakes.base import Ok
from tests.test_cache import PARAPHRASE, QUESTION, SHARED_REDIS, ask, cached_policy, settle


def shared_redis() -> dict[str, Any]:
    """Settings for replicas of one test: the shared Redis under a prefix of their own."""
    return {
        "redis_url": SHARED_REDIS,
        "redis_prefix": f"gw-test-{uuid.uuid4().hex[:8]}",
        # A loaded host must not skip the lookup these replica tests are about (a skipped one
        # stores the fake's default answer, which the next ask then hits).
        "stage_timeout_s": 30.0,
    }


async def test_two_replicas_share_entries_and_settings(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    settings = shared_redis()
    first = await make_gateway(cached_policy(fakes), embedder=embedder, **settings)
    second = await make_gateway(cached_policy(fakes), embedder=embedder, **settings)
    await asyncio.sleep(0.3)  # both replicas following the event stream
    fakes.openai.push(Ok(text="Shared answer."))
    await ask(first)
    await settle(first)
    for _ in range(40):  # the second replica indexes it from the Redis stream
        _, body, headers = await ask(second, PARAPHRASE, headers={"x-gateway-cache": ""})
        if headers["x-gateway-cache"] == "hit":
            break
        await asyncio.sleep(0.1)
    assert headers["x-gateway-cache"] == "hit"
    assert body["choices"][0]["message"]["content"] == "Shared answer."
    # Ops turn the cache off for the team on one replica; the other applies it within seconds.
    stage = first.app[RUNTIME].interceptors[0]
    await stage.store.set_config("team:alpha", {"enabled": False})  # type: ignore[attr-defined]
    for _ in range(40):
        _, _, headers = await ask(second)
        if headers["x-gateway-cache"] == "bypass":
            break
        await asyncio.sleep(0.1)
    assert headers["x-gateway-cache"] == "bypass"


class Renamed:
    """The session's model under another name: what another embedder looks like to the cache
    (identical vectors, so only the tag can keep them apart)."""

    def __init__(self, inner: Any, name: str) -> None:
        self._inner, self.name, self.dim = inner, name, inner.dim

    async def embed(self, text: str) -> npt.NDArray[np.float32]:
        vector: npt.NDArray[np.float32] = await self._inner.embed(text)
        return vector

    async def embed_many(self, texts: list[str]) -> npt.NDArray[np.float32]:
        vectors: npt.NDArray[np.float32] = await self._inner.embed_many(texts)
        return vectors

    def encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        vectors: npt.NDArray[np.float32] = self._inner.encode(texts)
        return vectors

    async def close(self) -> None:
        return None


async def test_vectors_of_another_embedder_are_never_compared(
    make_gateway: Any, fakes: Fakes, embedder: Any
) -> None:
    settings = shared_redis()
    writer = await make_gateway(cached_policy(fakes), embedder=embedder, **settings)
    fakes.openai.push(Ok(text="Stored answer."))
    await ask(writer)
    await settle(writer)
    # Replicas started afterwards build their indexes from Redis (the batched start-up load).
    same = await make_gateway(cached_policy(fakes), embedder=embedder, **settings)
    other = await make_gateway(
        cached_policy(fakes), embedder=Renamed(embedder, "another-model"), **settings
    )
    same_stage, other_stage = (c.app[RUNTIME].interceptors[0] for c in (same, other))
    assert await load_indexes(same_stage) == 1  # type: ignore[arg-type]
    assert await load_indexes(other_stage) == 0  # type: ignore[arg-type]
    _, body, headers = await ask(same, PARAPHRASE)
    assert headers["x-gateway-cache"] == "hit"
    assert body["choices"][0]["message"]["content"] == "Stored answer."
    fakes.openai.push(Ok(text="Fresh answer."))
    _, body, headers = await ask(other, PARAPHRASE)
    assert headers["x-gateway-cache"] == "miss"
    assert body["choices"][0]["message"]["content"] == "Fresh answer."
    # The exact path compares no vectors: it still serves the entry.
    _, body, headers = await ask(other, QUESTION)
    assert headers["x-gateway-cache"] == "hit"
    assert body["choices"][0]["message"]["content"] == "Stored answer."


async def test_redis_outage_loses_no_request_and_the_cache_comes_back(
    make_gateway: Any, fakes: Fakes, embedder: Any, redis_server: RedisServer
) -> None:
    client = await make_gateway(cached_policy(fakes), embedder=embedder, redis_url=redis_server.url)
    await ask(client)
    await settle(client)
    _, _, headers = await ask(client)
    assert headers["x-gateway-cache"] == "hit"
    redis_server.stop()
    for i in range(5):
        status, body, headers = await ask(client, f"question {i} during the outage")
        assert status == 200
        assert body["choices"][0]["message"]["content"]
    metrics = await (await client.get("/metrics")).text()
    assert "gateway_cache_errors_total" in metrics
    redis_server.start()  # same port, empty
    await asyncio.sleep(1.5)
    await ask(client, "after the outage")
    await settle(client)
    _, _, headers = await ask(client, "after the outage")
    assert headers["x-gateway-cache"] == "hit"


async def test_reingested_chunks_invalidate_answers_built_on_them() -> None:
    from cache.store import Entry, RedisStore

    store = RedisStore(SHARED_REDIS, prefix=f"gw-test-{uuid.uuid4().hex[:8]}")
    try:

        def built(entry_id: int, *chunks: str) -> Entry:
            return Entry(
                id=entry_id,
                scope="s",
                team="t",
                route="r",
                query=f"q{entry_id}",
                answer={"choices": []},
                vector=None,
                fingerprint=list(chunks),
            )

        built_on = built(1, "chunk-a:v1", "chunk-b:v3")
        unrelated = built(2, "chunk-c:v1")
        for entry in (built_on, unrelated):
            await store.put(entry, f"x{entry.id}", ttl_s=60, cap=10)
        assert await store.invalidate(chunks=["chunk-b"]) == 1
        assert await store.get(1) is None
        assert await store.get(2) is not None
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["redis", "local"])
async def test_removing_one_entry_tells_the_other_replicas(kind: str) -> None:
    """``Store.remove``: only in the entry's own scope; gone for lookups (exact key included);
    on Redis a ``del`` event, which every replica applies to its index."""
    from cache.local_store import LocalStore
    from cache.store import Entry, RedisStore, Store

    store: Store = (
        RedisStore(SHARED_REDIS, prefix=f"gw-test-{uuid.uuid4().hex[:8]}")
        if kind == "redis"
        else LocalStore()
    )
    try:
        after = await store.latest_event()
        entry = Entry(
            id=7, scope="s", team="t", route="r", query="q", answer={"choices": []}, vector=None
        )
        await store.put(entry, "x7", ttl_s=60, cap=10)
        assert await store.remove(7, "another scope") is False
        assert await store.remove(7, "s") is True
        assert await store.get(7) is None
        assert await store.exact("x7") is None
        assert await store.remove(7, "s") is False
        if kind == "redis":
            _, events = await store.events(after, block_ms=100)
            assert [(e.op, e.id) for e in events] == [("add", 7), ("del", 7)]
    finally:
        await store.close()
