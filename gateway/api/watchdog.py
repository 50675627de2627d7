"""The last resort of a stop: a process that was told to stop ends, whatever hangs.

The orderly stop (``gateway.api.lifecycle``) drains, waits for in-flight requests, then closes
the pools, the stages, Redis and the telemetry exporter, each with its own bound. Any of them
can still hang in a way no timeout inside the event loop reaches: a thread stuck in a blocking
call (the interpreter joins its threads at exit), a cleanup awaiting something that never
comes, a callback blocking the loop itself. ``ShutdownWatchdog`` is a daemon thread armed when
the stop begins: if the process is still alive ``budget_s`` later it logs what was still running
(the event loop's tasks and where each waits, every thread's stack), kills the child processes
it was given (the exporter, which would otherwise outlive a killed parent), and exits with
``EXIT_OVERRUN`` without running any more Python cleanup (``os._exit``).

A daemon thread rather than a task: it must run when the loop does not, and during interpreter
shutdown while the main thread waits on a stuck thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

EXIT_OVERRUN = 70  # EX_SOFTWARE: the stop did not finish in time
MARGIN_S = 5.0  # over drain delay + shutdown timeout: the cleanup after the last request
EXIT_WATCH_S = 15.0  # from the loop's end to the process's (the local model stops in <= 10 s)


class ShutdownWatchdog:
    """Armed once; ends the process ``budget_s`` after ``arm`` unless it ended by itself."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        budget_s: float,
        children: Callable[[], Iterable[int | None]] = tuple,
        *,
        exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.loop = loop
        self.budget_s = budget_s
        self.children = children  # pids to kill before exiting (read when it fires)
        self._exit = exit
        self._thread: threading.Thread | None = None
        self.fired = threading.Event()

    @property
    def armed(self) -> bool:
        return self._thread is not None

    def arm(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, name="shutdown-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        if self.fired.wait(self.budget_s):
            return
        self.fire()

    def fire(self) -> None:
        """Say what is still running, kill the children, exit non-zero."""
        self.fired.set()
        with contextlib.suppress(Exception):  # a report that fails must not stop the exit
            log.error(
                "stopping took over %.1f s; exiting with status %d. Still running:\n%s",
                self.budget_s,
                EXIT_OVERRUN,
                self.report(),
            )
        for pid in self._child_pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                log.error("killed child process %d", pid)
        with contextlib.suppress(Exception):
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
        self._exit(EXIT_OVERRUN)

    def _child_pids(self) -> list[int]:
        try:
            return [pid for pid in self.children() if pid]
        except Exception:  # read from another thread while the loop mutates it: best effort
            return []

    def report(self) -> str:
        lines: list[str] = []
        for task in _tasks(self.loop) if self.loop is not None else []:
            lines.append(f"  task {task.get_name()}: {_awaiting(task.get_coro())}")
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue
            stack = "".join(traceback.format_stack(frame, limit=4)).rstrip()
            lines.append(f"  thread {names.get(ident, ident)}:\n{stack}")
        return "\n".join(lines) or "  (nothing: the interpreter itself did not finish)"


def _tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[object]]:
    # all_tasks iterates a WeakSet the loop's thread may change meanwhile: retry on that.
    for _ in range(5):
        try:
            return [t for t in asyncio.all_tasks(loop) if not t.done()]
        except RuntimeError:
            continue
    return []


def _awaiting(coro: object) -> str:
    """Where a task waits: its chain of awaits, outermost first (``name file:line`` each)."""
    steps: list[str] = []
    while coro is not None and len(steps) < 16:
        frame = next((f for a in _FRAMES if (f := getattr(coro, a, None)) is not None), None)
        if frame is None:
            break
        code = frame.f_code
        steps.append(f"{code.co_name} {code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}")
        following = next((c for a in _AWAITS if (c := getattr(coro, a, None)) is not None), None)
        if following is None and code.co_name in ("__aexit__", "__aenter__"):
            # An async context manager's generator: awaited through anext(), which hides it.
            following = getattr(frame.f_locals.get("self"), "gen", None)
        coro = following
    return " -> ".join(steps) or repr(coro)


_FRAMES = ("cr_frame", "ag_frame", "gi_frame")
_AWAITS = ("cr_await", "ag_await", "gi_yieldfrom")
