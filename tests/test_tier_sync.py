"""Tier outcomes shared through Redis streams (gateway.tier_sync), on throwaway redis-servers:
one replica's graded outcomes reach another's tier router, late grades follow, a restarted
replica replays what the route learnt, a Redis outage costs only the sharing."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.telemetry.metrics import Metrics
from gateway.tiering.features import prompt_features
from gateway.tiering.router import FRONTIER, TierRouter
from gateway.tiering.sync import TierOutcomeSync
from tests.conftest import RedisServer
from tests.test_tiering import policy, unit

DIM = 384


def serve(router: TierRouter, rng: np.random.Generator, center: np.ndarray, tag: str,
          tier: str, quality: float, count: int = 1) -> list[str]:  # fmt: skip
    """``count`` requests near ``center`` answered by ``tier`` and graded ``quality``."""
    ids = []
    for i in range(count):
        request_id = f"{tag}-{i}"
        features = np.array(prompt_features(f"{tag} question number {i}"))
        router.remember(request_id, "r", unit(rng, center, noise=0.05), features)
        router.served(request_id, tier, (quality, 1.0))
        ids.append(request_id)
    return ids


def replica(url: str, tiering: dict[str, Any] | None = None) -> tuple[TierRouter, TierOutcomeSync]:
    router = TierRouter(policy(tiering or {}), seed=0)
    metrics = Metrics()
    return router, TierOutcomeSync(
        lambda: router, url, model="minilm", dim=DIM, prefix="t", metrics=metrics
    )


def counted(sync: TierOutcomeSync, result: str) -> float:
    assert sync.metrics is not None
    return sum(v for labels, v in sync.metrics.samples("gateway_tier_outcomes_total")
               if labels["result"] == result)  # fmt: skip


@pytest.fixture
def centers() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(DIM), rng.standard_normal(DIM)
    return a / np.linalg.norm(a), b / np.linalg.norm(b)


async def test_one_replicas_outcomes_and_late_grades_reach_the_other(
    redis_server: RedisServer, centers: Any
) -> None:
    (a, sync_a), (b, sync_b) = replica(redis_server.url), replica(redis_server.url)
    try:
        for sync in (sync_a, sync_b):
            await sync.sync_once(block_ms=0)  # both follow the route's (empty) stream
        rng = np.random.default_rng(2)
        probe = unit(rng, centers[0], noise=0.05)
        cold = b.predicted_gain("r", "general", probe, None)
        ids = serve(a, rng, centers[0], "hard", FRONTIER, 0.9, count=20)
        serve(a, rng, centers[0], "hard-cheap", "cheap", 0.1, count=20)
        await sync_a.sync_once(block_ms=0)
        await sync_b.sync_once(block_ms=1000)
        assert b.outcomes("r") == a.outcomes("r") == 40
        assert counted(sync_a, "written") == 40
        assert counted(sync_b, "learnt") == 40
        learnt = b.predicted_gain("r", "general", probe, None)
        assert learnt == pytest.approx(a.predicted_gain("r", "general", probe, None))
        assert learnt > cold + 0.3
        # The client's feedback regrades the frontier's answers on a: b regrades them too.
        for request_id in ids:
            assert a.observe(request_id, 0.0)
        await sync_a.sync_once(block_ms=0)
        await sync_b.sync_once(block_ms=1000)
        assert b.outcomes("r") == 40  # graded again, not added
        regraded = b.predicted_gain("r", "general", probe, None)
        assert regraded == pytest.approx(a.predicted_gain("r", "general", probe, None))
        assert regraded < 0
        await sync_a.sync_once(block_ms=0)  # a skips its own entries
        assert a.outcomes("r") == 40
    finally:
        await sync_a.close()
        await sync_b.close()


async def test_a_restarted_replica_replays_the_newest_outcomes(
    redis_server: RedisServer, centers: Any
) -> None:
    """The stream keeps about ``memory`` outcomes; a new replica learns the newest of them in
    order and predicts as a router that saw just those (text features included)."""
    a, sync_a = replica(redis_server.url, {"memory": 64})
    rng = np.random.default_rng(3)
    served = []
    try:
        await sync_a.sync_once(block_ms=0)
        for i in range(240):
            center, tier = (centers[0], FRONTIER) if i % 3 else (centers[1], "cheap")
            outcome = (f"q{i}", unit(rng, center, noise=0.3), tier, float(rng.random()))
            served.append(outcome)
            a.remember(outcome[0], "r", outcome[1], np.array(prompt_features(f"q {i} {i % 7}")))
            a.served(outcome[0], tier, (outcome[3], 1.0))
            if i % 50 == 0:
                await sync_a.sync_once(block_ms=0)
        await sync_a.sync_once(block_ms=0)
        redis = aioredis.Redis.from_url(redis_server.url)
        assert 64 <= await redis.xlen("t:tier:r") < 240  # trimmed to about the memory
        await redis.aclose()
    finally:
        await sync_a.close()
    reference = TierRouter(policy({"memory": 64}), seed=0)
    for request_id, vector, tier, quality in served[-64:]:
        i = int(request_id[1:])
        reference.remember(request_id, "r", vector, np.array(prompt_features(f"q {i} {i % 7}")))
        reference.served(request_id, tier, (quality, 1.0))
    b, sync_b = replica(redis_server.url, {"memory": 64})
    try:
        await sync_b.sync_once(block_ms=0)
        assert b.outcomes("r") == 64
        features = np.array(prompt_features("q 9 3"))
        for center in centers:
            probe = unit(rng, center, noise=0.3)
            assert b.predicted_gain("r", "general", probe, features) == pytest.approx(
                reference.predicted_gain("r", "general", probe, features), abs=1e-12
            )
    finally:
        await sync_b.close()


async def test_a_redis_outage_delays_the_sharing_only(
    redis_server: RedisServer, centers: Any
) -> None:
    """Outcomes learnt while Redis is away are learnt locally at once, stay queued, and reach
    the other replica when Redis is back."""
    a, sync_a = replica(redis_server.url)
    b, sync_b = replica(redis_server.url)
    rng = np.random.default_rng(4)
    stop = asyncio.Event()
    runs: list[asyncio.Task[None]] = []
    try:
        for sync in (sync_a, sync_b):
            await sync.sync_once(block_ms=0)
        redis_server.stop()
        serve(a, rng, centers[0], "while-down", FRONTIER, 0.9, count=5)
        assert a.outcomes("r") == 5  # learnt at once, locally
        runs = [asyncio.create_task(s.run(stop)) for s in (sync_a, sync_b)]
        async with asyncio.timeout(10):
            while sync_a.healthy:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert sync_a.queued == 5  # a failed write goes back to the queue
        redis_server.start()
        serve(a, rng, centers[0], "after", FRONTIER, 0.9, count=3)
        async with asyncio.timeout(10):
            while b.outcomes("r") < 8:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert sync_a.healthy
        assert (a.outcomes("r"), b.outcomes("r"), sync_a.queued) == (8, 8, 0)
        assert counted(sync_a, "dropped") == 0
    finally:
        stop.set()
        await asyncio.gather(*runs, return_exceptions=True)
        await sync_a.close()
        await sync_b.close()


async def test_without_a_tiered_route_the_follower_waits(redis_server: RedisServer) -> None:
    """A reload may leave the tier router with no tiered route: each round then waits instead
    of returning at once (a task that never awaits would freeze the event loop)."""
    router, sync = replica(redis_server.url)
    without = policy({})
    router.configure(
        without.model_copy(
            update={"routes": [without.routes[0].model_copy(update={"tiering": None})]}
        )
    )
    try:
        started = asyncio.get_running_loop().time()
        await sync.sync_once(block_ms=100)
        assert asyncio.get_running_loop().time() - started >= 0.09
    finally:
        await sync.close()


async def test_a_grade_sent_to_another_replica_reaches_the_one_that_answered(
    redis_server: RedisServer, centers: Any
) -> None:
    """Behind a load balancer the client's feedback may land anywhere: the replica it lands on
    relays it to the one that answered, which grades its outcome again and shares that."""
    (a, sync_a), (b, sync_b) = replica(redis_server.url), replica(redis_server.url)
    try:
        for sync in (sync_a, sync_b):
            await sync.sync_once(block_ms=0)
        assert a.replica == sync_a.replica
        rng = np.random.default_rng(6)
        serve(a, rng, centers[0], "answered-by-a", FRONTIER, 0.9)
        await sync_a.sync_once(block_ms=0)
        await sync_b.sync_once(block_ms=1000)
        probe = unit(rng, centers[0], noise=0.05)
        before = b.predicted_gain("r", "general", probe, None)
        assert not b.observe("answered-by-a-0", 0.0)  # b did not answer it
        assert sync_b.relay_grade("r", "answered-by-a-0", {"replica": sync_a.replica}, 0.0)
        assert not sync_b.relay_grade("r", "x", {"replica": sync_b.replica}, 0.0)  # its own
        await sync_b.sync_once(block_ms=0)  # writes the relayed grade
        await sync_a.sync_once(block_ms=1000)  # a learns it, and shares its regrade
        await sync_a.sync_once(block_ms=0)
        await sync_b.sync_once(block_ms=1000)
        assert a.outcomes("r") == b.outcomes("r") == 1  # graded again, not added
        after = b.predicted_gain("r", "general", probe, None)
        assert after == pytest.approx(a.predicted_gain("r", "general", probe, None))
        assert after < before
    finally:
        await sync_a.close()
        await sync_b.close()


async def test_entries_that_do_not_fit_are_skipped(redis_server: RedisServer) -> None:
    """A malformed or non-finite entry, a vector not of unit length, another embedding model's
    vector (by name or width) or an unknown route's stream never reach the memory (one such
    entry would skew every replica's estimates); the rest still do."""
    b, sync_b = replica(redis_server.url)
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        await sync_b.sync_once(block_ms=0)
        good = unit(np.random.default_rng(5), np.ones(DIM) / np.sqrt(DIM)).tobytes()
        fields = {"r": "x", "m": "minilm", "t": "cheap", "q": "0.5", "w": "1.0", "f": b""}
        for key, changes in (
            ("x/1", {"v": good[:-4] + b"\x00"}),  # not a whole number of floats
            ("x/2", {"v": good}),  # fits
            (
                "x/3",
                {"v": np.full(768, 768**-0.5, np.float32).tobytes()},
            ),  # another model's width
            ("x/4", {"v": good, "m": "bge-small"}),  # another model's name
            ("x/5", {"v": good, "q": "7"}),  # not a quality
            ("x/6", {"v": good, "t": "premium"}),  # not a tier
            ("x/7", {"v": (np.frombuffer(good, np.float32) * 1e6).tobytes()}),  # not unit length
            ("x/8", {"v": good, "f": np.full(31, np.nan).tobytes()}),  # features not finite
            ("x/9", {"v": good, "w": "nan"}),  # not a weight
        ):
            await redis.xadd("t:tier:r", {**fields, "k": key, **changes})
        await redis.xadd("t:tier:r", {"k": "x/10"})
        await redis.xadd("t:tier:r", {"k": "x/11", "r": "x", "g": "1", "q": "2", "w": "1"})
        await redis.xadd("t:tier:elsewhere", {**fields, "k": "x/12", "v": good})
        await sync_b.sync_once(block_ms=1000)
        assert b.outcomes("r") == 1  # x/2
        assert counted(sync_b, "ignored") == 3  # x/3, x/4, x/6
        assert counted(sync_b, "malformed") == 7  # x/1, x/5, x/7-x/11
    finally:
        await redis.aclose()
        await sync_b.close()


async def test_a_write_redis_refuses_is_dropped_not_retried(redis_server: RedisServer) -> None:
    """A key Redis will never take a stream entry into (another type) costs that route's
    entries, not the others': they are written once, and the queue does not stall."""
    both = policy({})
    both = both.model_copy(
        update={"routes": [both.routes[0], both.routes[0].model_copy(update={"name": "r2"})]}
    )
    router = TierRouter(both, seed=0)
    sync = TierOutcomeSync(
        lambda: router, redis_server.url, model="minilm", dim=DIM, prefix="t", metrics=Metrics()
    )
    redis = aioredis.Redis.from_url(redis_server.url)
    await redis.set("t:tier:r2", "not a stream")
    with pytest.raises(RedisError, match="WRONGTYPE"):  # run() logs it, retries every second
        await sync.sync_once(block_ms=0)
    try:
        rng = np.random.default_rng(7)
        vector = unit(rng, np.ones(DIM) / np.sqrt(DIM))
        for i, route in enumerate(["r"] * 5 + ["r2"]):
            router.remember(f"q{i}", route, vector)
            router.served(f"q{i}", "cheap", (0.5, 1.0))
        for _ in range(3):
            await sync.flush(router.memories())
        assert await redis.xlen("t:tier:r") == 5
        assert (sync.queued, counted(sync, "written"), counted(sync, "dropped")) == (0, 5, 1)
    finally:
        await redis.aclose()
        await sync.close()


def test_a_batch_put_back_keeps_the_newest_under_the_bound() -> None:
    """While a failed write was under way, newer outcomes were queued: putting the batch back
    drops its oldest entries, never the newest, and counts them."""
    sync = TierOutcomeSync(
        lambda: None, "redis://127.0.0.1:9/0", model="m", dim=DIM, metrics=Metrics(),
        pending_max=10,
    )  # fmt: skip
    for i in range(8):
        sync._queue("r", {"k": f"new{i}"})
    sync._requeue([("r", {"k": f"old{i}"}) for i in range(5)])
    assert [fields["k"] for _, fields in sync._pending] == [
        "old3", "old4", *(f"new{i}" for i in range(8)),
    ]  # fmt: skip
    assert counted(sync, "dropped") == 3


async def test_a_relayed_grade_reaches_replicas_after_the_answering_one_restarted(
    redis_server: RedisServer, centers: Any
) -> None:
    (a, sync_a), (b, sync_b) = replica(redis_server.url), replica(redis_server.url)
    rng = np.random.default_rng(8)
    try:
        for sync in (sync_a, sync_b):
            await sync.sync_once(block_ms=0)
        serve(a, rng, centers[0], "before-restart", FRONTIER, 0.9)
        await sync_a.sync_once(block_ms=0)
        await sync_b.sync_once(block_ms=1000)
        old_a = sync_a.replica
        await sync_a.close()  # a restarts: a new replica that replays what the route learnt
        a2, sync_a2 = replica(redis_server.url)
        await sync_a2.sync_once(block_ms=0)
        assert a2.outcomes("r") == 1
        probe = unit(rng, centers[0], noise=0.05)
        before = a2.predicted_gain("r", "general", probe, None)
        assert sync_b.relay_grade("r", "before-restart-0", {"replica": old_a}, 0.0)
        await sync_b.sync_once(block_ms=0)
        await sync_a2.sync_once(block_ms=1000)
        await sync_b.sync_once(block_ms=1000)
        after = a2.predicted_gain("r", "general", probe, None)
        assert after < before
        assert b.predicted_gain("r", "general", probe, None) == pytest.approx(after)
        assert (a2.outcomes("r"), b.outcomes("r")) == (1, 1)
        await sync_a2.close()
    finally:
        await sync_b.close()
