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
    timeout_s: float,
) -> None:
    """Cancel the periodic ``task`` and wait for it, then flush once more, giving up after
    ``timeout_s`` (shutdown must not hang on a sink that stopped answering)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await flush()


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
