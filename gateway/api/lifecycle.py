"""The process around the application: governance tasks, reload, graceful shutdown.

``install`` wires into an application what every gateway has (team limits, the run-time team overlay
and their background tasks, the draining flag ``/readyz`` reads). ``serve`` runs it the way
``gateway serve`` does: SIGHUP reloads the policy; SIGTERM (or SIGINT) first turns ``/readyz``
not-ready, keeps serving for ``drain_delay_s`` so load balancers stop sending, then stops accepting
and lets in-flight requests and streams finish for up to ``shutdown_timeout_s`` before they are
cancelled; only then are the provider pools, the stages and Redis closed (the application's cleanup
contexts). Whatever hangs, the process ends: the stop arms a watchdog (``gateway.api.watchdog``)
that exits non-zero ``drain_delay_s + shutdown_timeout_s + MARGIN_S`` after the signal, saying
what was still running and killing the telemetry exporter child.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from gateway.admin.reload import reload_policy
from gateway.core.background import stop_tasks
from gateway.core.runtime import LIFECYCLE, RUNTIME, Lifecycle, Runtime
from gateway.policy.limits import Limits
from gateway.policy.model import PolicyError
from gateway.policy.settings import Settings
from gateway.policy.teams import SYNC_INTERVAL_S, TeamRegistry
from gateway.routing.fairness import TeamConcurrency

from .watchdog import EXIT_WATCH_S, MARGIN_S, ShutdownWatchdog

log = logging.getLogger(__name__)


def install(app: web.Application, environ: Mapping[str, str]) -> None:
    """Add governance, the team overlay, reload and draining to ``app`` (before it starts)."""
    runtime = app[RUNTIME]
    settings = runtime.settings
    runtime.limits = Limits(
        runtime.alerts, runtime.metrics, redis_url=settings.redis_url, prefix=settings.redis_prefix
    )
    runtime.teams = TeamRegistry(
        environ, redis_url=settings.redis_url, prefix=settings.redis_prefix
    )
    runtime.concurrency = TeamConcurrency()
    app[LIFECYCLE] = Lifecycle(policy=runtime.catalog.policy)
    app.cleanup_ctx.append(_governance)
    app.on_shutdown.append(_mark_draining)


async def _mark_draining(app: web.Application) -> None:
    app[LIFECYCLE].draining = True


async def _governance(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    lifecycle = app[LIFECYCLE]
    assert runtime.limits is not None
    assert runtime.teams is not None
    if await runtime.teams.refresh():
        runtime.catalog = runtime.teams.catalog(lifecycle.policy)
    tasks = [
        asyncio.create_task(runtime.limits.run(), name="limits-flush"),
        asyncio.create_task(_sync_teams(runtime, lifecycle), name="teams-sync"),
    ]
    yield
    lifecycle.draining = True
    await stop_tasks(tasks)
    await runtime.limits.close()
    await runtime.teams.close()
    await lifecycle.close()


async def _sync_teams(runtime: Runtime, lifecycle: Lifecycle) -> None:
    """Adopt teams added or re-keyed on other replicas."""
    assert runtime.teams is not None
    while True:
        await asyncio.sleep(SYNC_INTERVAL_S)
        if await runtime.teams.refresh():
            runtime.catalog = runtime.teams.catalog(lifecycle.policy)


def serve(
    app: web.Application,
    settings: Settings,
    children: Callable[[], Iterable[int | None]] = tuple,
) -> None:
    """``web.run_app`` with SIGHUP reload, a SIGTERM drain and a watchdog on the stop.

    ``children``: pids of child processes the watchdog kills besides the telemetry exporter
    (the local model server)."""

    async def stop_signals(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        runtime = app[RUNTIME]

        def child_pids() -> list[int | None]:
            exporter = runtime.exporter
            return [exporter.pid if exporter is not None else None, *children()]

        budget_s = settings.drain_delay_s + settings.shutdown_timeout_s + MARGIN_S
        watchdog = ShutdownWatchdog(loop, budget_s, child_pids)
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Replaces aiohttp's handler, which would stop accepting at once.
            loop.add_signal_handler(sig, _on_stop, app, settings.drain_delay_s, watchdog)

    async def reload_signal(app: web.Application) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _on_sighup, app)

    # The stop's handler first of the start-up hooks, so that a stop while the stages load is
    # watched too; a reload only once everything has started.
    app.on_startup.insert(0, stop_signals)
    app.on_startup.append(reload_signal)
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log=None,
            shutdown_timeout=settings.shutdown_timeout_s,
            # A client that goes away cancels its request, and with it the upstream call: a
            # self-hosted model stops generating an answer nobody will read.
            handler_cancellation=True,
        )
    finally:
        # The loop is closed; the interpreter's exit still joins threads (the default
        # executor's), which a stuck blocking call would hold for ever. (After a SIGTERM the
        # first watchdog's bound holds anyway; this one is for exits that did not start there.)
        ShutdownWatchdog(None, EXIT_WATCH_S, children).arm()


def _on_sighup(app: web.Application) -> None:
    async def run() -> None:
        try:
            await reload_policy(app)
        except PolicyError as exc:
            log.error("reload refused, the running policy stays: %s", exc)

    task = asyncio.ensure_future(run())
    app[LIFECYCLE]._retiring.add(task)
    task.add_done_callback(app[LIFECYCLE]._retiring.discard)


def _raise_graceful_exit() -> None:
    raise GracefulExit()


def _on_stop(app: web.Application, delay_s: float, watchdog: ShutdownWatchdog) -> None:
    watchdog.arm()  # first, whatever state the rest is in
    lifecycle = app[LIFECYCLE]
    if lifecycle.draining:  # already on its way out
        return
    lifecycle.draining = True
    log.info("stopping: not ready now, draining in %.1f s", delay_s)
    if delay_s <= 0:
        _raise_graceful_exit()
    asyncio.get_running_loop().call_later(delay_s, _raise_graceful_exit)
