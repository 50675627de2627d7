"""What sharing tier outcomes through Redis costs (``gateway.tiering.sync``), on a throwaway
``redis-server``, with numpy's BLAS and the garbage collector set up as ``gateway serve`` runs them:

- the request path: learning one outcome locally, with and without queueing it for the others;
- the writer: one batch of queued outcomes written to the route's stream;
- a starting replica's replay of a full memory (4,096 outcomes), and the longest the event loop
  was held meanwhile (other requests wait that long at most);
- the delay from an outcome learnt on one replica to the other having learnt it.

    python -m bench.tier_sync [--outcomes 4096] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

from gateway.core.background import single_thread_blas, tune_gc
from gateway.policy.settings import Settings
from gateway.telemetry.metrics import Metrics
from gateway.tiering.features import prompt_features
from gateway.tiering.router import TierRouter
from gateway.tiering.sync import BATCH, TierOutcomeSync
from tests.conftest import RedisServer
from tests.test_tiering import policy  # one tiered route, r

DIM = 384


def replica(url: str, memory: int) -> tuple[TierRouter, TierOutcomeSync]:
    router = TierRouter(policy({"memory": memory}), seed=0)
    return router, TierOutcomeSync(
        lambda: router, url, model="minilm", dim=DIM, prefix="bench", metrics=Metrics()
    )


def learn(router: TierRouter, vectors: np.ndarray, features: np.ndarray, tag: str) -> float:
    """Microseconds per outcome learnt (remember + served with a grade)."""
    started = time.perf_counter()
    for i, vector in enumerate(vectors):
        router.remember(f"{tag}{i}", "r", vector, features)
        router.served(f"{tag}{i}", "frontier" if i % 3 == 0 else "cheap", (0.5, 1.0))
    return (time.perf_counter() - started) / len(vectors) * 1e6


async def replay(url: str, memory: int) -> tuple[float, float, int]:
    """(seconds, longest hold of the event loop in ms, outcomes) of a starting replica."""
    router, sync = replica(url, memory)
    holds: list[float] = []
    done = False

    async def tick() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            holds.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    await sync.sync_once(block_ms=0)
    took = time.perf_counter() - started
    done = True
    await ticker
    await sync.close()
    return took, max(holds) * 1000, router.outcomes("r")


async def run(args: argparse.Namespace) -> None:
    single_thread_blas()
    tune_gc(Settings().gc_gen0_threshold)  # as ``gateway serve`` runs
    server = RedisServer()
    server.start()
    try:
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((args.outcomes, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        features = np.array(prompt_features("What is 12 + 30? Explain it step by step."))
        alone = TierRouter(policy({"memory": args.outcomes}), seed=0)
        one, sync_one = replica(server.url, args.outcomes)
        await sync_one.sync_once(block_ms=0)
        print(f"learning one outcome, {args.outcomes:,} in a row (us each):")
        print(f"  alone {learn(alone, vectors, features, 'a'):.1f}, "
              f"queued for the others too {learn(one, vectors, features, 'b'):.1f}")  # fmt: skip
        started = time.perf_counter()
        await sync_one.flush(one.memories())  # everything queued, a batch per call
        took = time.perf_counter() - started
        print(f"writing them: {took * 1000:.0f} ms, {took * 1000 / (args.outcomes / BATCH):.2f} ms "
              f"a batch of {BATCH}")  # fmt: skip
        for _ in range(args.rounds):
            took, hold, n = await replay(server.url, args.outcomes)
            print(f"a starting replica replays {n:,} outcomes: {took * 1000:.0f} ms, "
                  f"the event loop held {hold:.1f} ms at most")  # fmt: skip
        two, sync_two = replica(server.url, args.outcomes)
        await sync_two.sync_once(block_ms=0)
        follower = asyncio.Event()
        task = asyncio.create_task(sync_two.run(follower))
        delays = []
        for i in range(50):
            before = two.outcomes("r")
            started = time.perf_counter()
            learn(one, vectors[i : i + 1], features, f"late{i}-")
            await sync_one.flush(one.memories())
            while two.outcomes("r") == before:  # noqa: ASYNC110
                await asyncio.sleep(0.0005)
            delays.append((time.perf_counter() - started) * 1000)
        follower.set()
        await task
        print(f"one replica's outcome learnt by the other (after its write): "
              f"median {statistics.median(delays):.2f} ms, max {max(delays):.2f} ms")  # fmt: skip
        await sync_one.close()
        await sync_two.close()
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outcomes", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("tier_sync: redis-server is not installed", file=sys.stderr)
        return 2
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
