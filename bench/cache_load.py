"""A replica's start-up load of the cache index from Redis: batched vs one entry at a time.

    python -m bench.cache_load [--entries 50000] [--scopes 4] [--redis-url URL]

Writes ``--entries`` cache entries (384-wide unit vectors, spread over ``--scopes`` scopes) through
``RedisStore.put``, then times, on the same data: ``CacheStage.load`` (500 entries per Redis round
trip, per-scope batches added by one thread per core, off the event loop) against reading the same
entries and adding them one ``ScopedIndexes.add`` at a time (what the load did before), and against
only reading them (the part that is Redis and decoding). Without
``--redis-url`` a throwaway ``redis-server`` (no persistence) runs on a free port and is stopped
afterwards; with one, the keys go under a fresh prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence

import numpy as np

from cache.embedder import Vector
from cache.index import ScopedIndexes
from cache.store import Entry, RedisStore
from gateway.policy.cache_config import CacheConfig
from gateway.stages.cache import CacheStage
from gateway.stages.cache_sync import load_indexes
from gateway.telemetry.metrics import Metrics

DIM = 384
NAME = "bench-embedder"


class _Named:
    """Only what CacheStage reads of an embedder at construction: its name and width."""

    name, dim = NAME, DIM

    async def embed(self, text: str) -> Vector:
        raise NotImplementedError

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    async def close(self) -> None:
        return None


async def fill(store: RedisStore, entries: int, scopes: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((entries, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, entries, 16):
        await asyncio.gather(
            *(
                store.put(
                    Entry(
                        id=random.getrandbits(63),
                        scope=f"scope-{i % scopes}",
                        team="bench",
                        route="bench",
                        query=f"question {i}",
                        answer={"choices": [{"message": {"content": f"answer {i}"}}]},
                        vector=vectors[i],
                        embedder=NAME,
                    ),
                    f"exact-{i}",
                    3600,
                    10**9,
                )
                for i in range(start, min(entries, start + 16))
            )
        )


async def read_only(store: RedisStore) -> int:
    return sum([1 async for _ in store.entries()])


async def one_at_a_time(store: RedisStore) -> int:
    indexes = ScopedIndexes(DIM)
    async for entry in store.entries():
        if entry.vector is not None:
            indexes.add(entry.scope, entry.id, entry.vector)
    return len(indexes)


async def run(url: str, entries: int, scopes: int) -> None:
    store = RedisStore(url, prefix=f"bench-load-{uuid.uuid4().hex[:8]}", timeout_s=5)
    try:
        t = time.perf_counter()
        await fill(store, entries, scopes)
        print(f"wrote {entries:,} entries in {scopes} scopes in {time.perf_counter() - t:.0f} s")
        for attempt in range(2):
            t = time.perf_counter()
            stage = CacheStage(CacheConfig(), store, _Named(), Metrics())
            batched = await load_indexes(stage)
            batched_s = time.perf_counter() - t
            t = time.perf_counter()
            single = await one_at_a_time(store)
            single_s = time.perf_counter() - t
            t = time.perf_counter()
            read = await read_only(store)
            read_s = time.perf_counter() - t
            print(
                f"round {attempt + 1}: batched load {batched:,} in {batched_s:.1f} s "
                f"({batched / batched_s:,.0f}/s, {stage.indexes.threads} threads); "
                f"one add at a time {single:,} in {single_s:.1f} s ({single / single_s:,.0f}/s); "
                f"reading them alone {read_s:.1f} s ({read / read_s:,.0f}/s)"
            )
    finally:
        await store.invalidate()
        await store.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_load", description=__doc__)
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--scopes", type=int, default=4)
    parser.add_argument("--redis-url")
    args = parser.parse_args(argv)
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.entries, args.scopes))
        return 0
    server = shutil.which("redis-server")
    if server is None:
        parser.error("no redis-server on PATH: pass --redis-url")
    port = _free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        asyncio.run(run(f"redis://127.0.0.1:{port}/0", args.entries, args.scopes))
    finally:
        process.terminate()
        process.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
