"""Background work off the request path: periodic flushers and fire-and-forget task sets.

Two shapes recur in the gateway. A writer (decision records, trace spans) flushes a queue every
few hundred milliseconds and must outlive any one failed batch, then at shutdown stops and flushes
what is left within a bounded time. A sampler (the judge, shadow traffic) starts one task per
sampled request, keeps a reference until it ends (the event loop holds only weak ones), and at
shutdown cancels whatever is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


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
    task.cancel()
    # wait(), not ``await task``: the task's CancelledError is not ours to raise, and one aimed
    # at this coroutine (the timeout above) must not be swallowed with it.
    await asyncio.wait([task])


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
        """Cancel every task and wait until each has ended."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


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
