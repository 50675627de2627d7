"""Background work off the request path: periodic flushers and fire-and-forget task sets.

Two shapes recur in the gateway. A writer (decision records, trace spans) flushes a queue every
few hundred milliseconds and must outlive any one failed batch, then at shutdown stops and flushes
what is left within a bounded time. A sampler (the judge, shadow traffic) starts one task per
sampled request, keeps a reference until it ends (the event loop holds only weak ones), and at
shutdown cancels whatever is still running. Every stop goes through ``stop_tasks``: a task is
cancelled again until it ends (see there why once is not enough), within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0  # for background tasks to end once cancelled
_RECANCEL_S = 0.1


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Cancel ``tasks`` and wait until each has ended, cancelling again any that carries on;
    after ``timeout_s`` what still runs is logged and left (the shutdown watchdog ends it).

    Why again: a cancellation can be lost inside the task. Python 3.11's ``asyncio.wait_for``
    returns the inner result when it completes just as the cancel arrives (fixed in 3.12), and
    redis-py sends every command through it when ``socket_timeout`` is set; measured, a loop of
    Redis calls cancelled at a random moment carried on 71 times in 200. A periodic loop that
    lost its cancel goes round again, and ``task.cancel(); await task`` then waits for ever: the
    SIGTERM that logged "draining in 0.0 s" and never ended (issue 28).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {task for task in tasks if not task.done()}
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            names = ", ".join(sorted(task.get_name() for task in pending))
            log.warning("background tasks still running %.1f s after a stop: %s", timeout_s, names)
            return
        for task in pending:
            task.cancel()
        # wait(), not ``await task``: the task's CancelledError is not ours to raise, and one
        # aimed at this coroutine must not be swallowed with it.
        _, pending = await asyncio.wait(pending, timeout=min(_RECANCEL_S, left))


async def finish_tasks(
    tasks: Iterable[asyncio.Task[Any]], grace_s: float, timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """Let ``tasks`` (told to stop, e.g. by an event) end by themselves within ``grace_s``,
    then ``stop_tasks`` what is left."""
    pending = [task for task in tasks if not task.done()]
    if pending:
        _, left = await asyncio.wait(pending, timeout=grace_s)
        await stop_tasks(left, timeout_s)


async def flush_periodically(
    interval_s: Callable[[], float],
    flush: Callable[[], Awaitable[None]],
    log: logging.Logger,
    failure: str,
) -> None:
    """Call ``flush`` every ``interval_s()`` seconds for ever; a failed flush is logged (as
    ``failure``, on the caller's logger) and the next one still runs.

    ``interval_s`` is read before each wait, so a changed interval applies from the next one.
    """
    while True:
        await asyncio.sleep(interval_s())
        try:
            await flush()
        except Exception:  # the writer must outlive any one bad batch
            log.exception(failure)


async def stop_then_flush(
    task: asyncio.Task[None] | None,
    flush: Callable[[], Awaitable[None]],
    lock: asyncio.Lock,
    timeout_s: float,
) -> None:
    """Stop the periodic ``task``, then flush once more, all within ``timeout_s`` (shutdown
    must not hang on a sink that stopped answering).

    ``lock`` is the one ``flush`` writes under: the task is cancelled only while it is not held,
    so a batch being written is finished, not cancelled after it left the queue (lost).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            if task is not None:
                async with lock:
                    await _cancel(task)
            await flush()
    if task is not None:  # time ran out waiting for the batch in progress
        await _cancel(task)


async def _cancel(task: asyncio.Task[None]) -> None:
    await stop_tasks([task])


class TaskSet:
    """Tasks started for their effect alone, referenced until each ends."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run ``work`` in the background; it should catch its own failures."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until no task is left, including any started meanwhile."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every task and wait until each has ended (within ``STOP_TIMEOUT_S``)."""
        await stop_tasks(list(self._tasks))


def tune_gc(gen0_threshold: int) -> None:
    """Tune the collector for a long-running process (the gateway, its exporter process;
    measured: bench/README.md).

    Every request allocates a few hundred short-lived container objects; with CPython's default
    threshold of 700 the young generation is collected every couple of requests and the full
    collections walk every module object loaded at start-up: 18 % of the CPU under load.
    Freezing what start-up built and raising the young threshold cuts that to ~1 %.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


def single_thread_blas() -> None:
    """numpy's BLAS (OpenBLAS) on one thread for the rest of this process.

    The gateway's matrix work is small and on the request path: the tier router's similarity of
    a prompt to the 4,096 it remembers, the task classifier's centroids. Fanned out to BLAS's
    threads, a matrix-vector product waits for idle cores, which a loaded server does not have
    (p99 8 ms against 0.3 ms, measured on 2 cores); on one thread it is also 2.6x cheaper than
    numpy's einsum (0.19 against 0.50 ms of CPU for 4,096 x 384, on a loaded 2-core host).
    The embedders (ONNX Runtime, torch) keep their own thread pools.
    """
    from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

    ThreadpoolController().select(internal_api="openblas").limit(limits=1)
