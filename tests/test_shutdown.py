"""A stop always ends: SIGTERM after load, again and again, with Redis up or gone mid-way.

The bound is ``drain_delay_s + shutdown_timeout_s + MARGIN_S`` (``gateway.api.watchdog``). The
runs use the semantic cache (its Redis followers), team governance on Redis and the telemetry
exporter child: the parts that held the stop up when a cancelled Redis loop carried on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.api.watchdog import EXIT_OVERRUN, MARGIN_S, ShutdownWatchdog
from gateway.core.background import stop_tasks
from tests.conftest import TEAM_KEY, Fakes, RedisServer, policy_for
from tests.fakes.base import Hang
from tests.serve_process import GatewayProcess, write_policy

REDIS_URL = "redis://127.0.0.1:6379/0"
AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}
SHUTDOWN_TIMEOUT_S = 3.0
BOUND_S = SHUTDOWN_TIMEOUT_S + MARGIN_S


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be read


async def _load(url: str, count: int) -> list[asyncio.Task[Any]]:
    """Requests in flight: half streamed, most of them waiting on a slow upstream."""
    session = aiohttp.ClientSession()

    async def one(i: int) -> int | str:
        body = {
            "model": "default",
            "stream": i % 2 == 0,
            "messages": [{"role": "user", "content": f"question {i % 5} about the things"}],
        }
        try:
            async with session.post(
                f"{url}/v1/chat/completions", json=body, headers=AUTH
            ) as response:
                await response.read()
                return response.status
        except aiohttp.ClientError as exc:
            return type(exc).__name__

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    closer = asyncio.create_task(_close_after(session, tasks))
    await asyncio.sleep(0.3)
    return [*tasks, closer]


async def _close_after(session: aiohttp.ClientSession, tasks: list[asyncio.Task[Any]]) -> None:
    await asyncio.gather(*tasks, return_exceptions=True)
    await session.close()


@pytest.mark.timeout(900)
async def test_sigterm_after_load_always_ends_within_the_bound(
    fakes: Fakes, tmp_path: Path
) -> None:
    fakes.openai.default = Hang(0.5)  # requests are in flight when the signal comes
    policy = policy_for(fakes).model_dump()
    policy["cache"] = {"enabled": True}
    config = tmp_path / "policy.yaml"
    write_policy(config, policy)
    # True: Redis is stopped just before the signal. The hang this guards against came once in
    # three or four stops with Redis up (a race), hence the repeats.
    runs = [False] * 8 + [True] * 3
    for run, stop_redis in enumerate(runs):
        redis = RedisServer()
        redis.start()
        gateway = GatewayProcess(
            config,
            tmp_path / f"gateway-{run}.log",
            GATEWAY_REDIS_URL=redis.url,
            GATEWAY_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
            GATEWAY_EMBEDDER="onnx",
        )
        try:
            await gateway.start(timeout_s=120)
            assert gateway.process is not None
            exporters = _children(gateway.process.pid)
            assert exporters, "the telemetry exporter child is running"
            load = await _load(gateway.url, 30)
            if stop_redis:
                redis.stop()
            started = time.monotonic()
            gateway.signal(signal.SIGTERM)
            code = await gateway.wait(BOUND_S + 15)  # fails the test, not the bound check
            took = time.monotonic() - started
            log = gateway.log()
            assert code == 0, f"run {run}: exit {code}\n{log[-3000:]}"
            assert took <= BOUND_S + 1.0, f"run {run}: {took:.1f} s"
            assert "stopping took over" not in log
            assert "still running" not in log
            for pid in exporters:
                assert not _alive(pid), f"run {run}: child {pid} outlived the gateway"
            await asyncio.gather(*load, return_exceptions=True)
        finally:
            gateway.stop()
            redis.stop()


async def test_the_watchdog_reports_kills_the_children_and_exits_non_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    child = await asyncio.create_subprocess_exec("sleep", "60")
    loop = asyncio.get_running_loop()
    exited: list[int] = []
    gone = asyncio.Event()

    def exit(code: int) -> None:  # in place of os._exit, from the watchdog's thread
        exited.append(code)
        loop.call_soon_threadsafe(gone.set)

    stuck = asyncio.create_task(asyncio.Event().wait(), name="stuck-cleanup")
    watchdog = ShutdownWatchdog(loop, 0.2, lambda: [child.pid], exit=exit)
    with caplog.at_level(logging.ERROR, logger="gateway.api.watchdog"):
        watchdog.arm()
        watchdog.arm()  # once only
        await asyncio.wait_for(gone.wait(), timeout=5)
    assert exited == [EXIT_OVERRUN]
    assert await asyncio.wait_for(child.wait(), timeout=5) == -signal.SIGKILL
    text = caplog.text
    assert "stopping took over 0.2 s" in text
    assert "task stuck-cleanup: wait" in text  # which task, and where it waits
    assert "thread MainThread" in text
    stuck.cancel()


async def test_stop_tasks_cancels_again_a_task_that_swallowed_its_cancel() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if swallowed == 0:  # as asyncio.wait_for does on 3.11 (see stop_tasks)
                    swallowed += 1
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    started = time.monotonic()
    await stop_tasks([task], timeout_s=5)
    assert task.cancelled()
    assert swallowed == 1
    assert time.monotonic() - started < 2


async def test_stop_tasks_gives_up_after_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    running = True

    async def deaf() -> None:
        while running:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.create_task(deaf(), name="deaf-loop")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="gateway.core.background"):
        await stop_tasks([task], timeout_s=0.3)
    assert not task.done()
    assert "deaf-loop" in caplog.text
    running = False  # let it go, so that the test leaves nothing behind
    task.cancel()
    await asyncio.wait([task], timeout=1)
    assert task.done()


async def test_stop_tasks_ends_redis_loops_whatever_moment_the_cancel_lands() -> None:
    """The cause of the hang, on real Redis: a loop of commands (as teams-sync, limits-flush)
    cancelled at random moments. Cancelled once, some carry on (the cancel is lost in
    ``asyncio.wait_for`` on 3.11); ``stop_tasks`` ends every one."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=0.25)

    async def sync_loop() -> None:
        while True:
            await asyncio.sleep(0.001)
            with contextlib.suppress(RedisError, OSError):  # as the gateway's loops do
                await client.hgetall("gw-test:shutdown")

    lost = 0
    try:
        for i in range(40):
            task = asyncio.create_task(sync_loop())
            await asyncio.sleep(0.002 + (i % 10) / 1000)
            task.cancel()
            await asyncio.wait([task], timeout=0.05)
            lost += not task.done()
            started = time.monotonic()
            await stop_tasks([task], timeout_s=5)
            assert task.done(), f"loop {i} still running"
            assert time.monotonic() - started < 2
    finally:
        await client.aclose()
    print(f"cancels lost by a single cancel(): {lost} of 40")
