"""The application's state: what a request handler needs (``Runtime``, built once per process
and swapped in parts by a reload) and what outlives requests (``Lifecycle``: the file's policy,
the reload lock, the draining flag, pools being retired)."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from providers.pool import ProviderPool

if TYPE_CHECKING:
    # The runtime holds one object of each layer above this one; it names their types only, so
    # the ground floor imports nothing above it when it loads.
    from cache.embedder import Embedder
    from gateway.policy.catalog import Catalog
    from gateway.policy.limits import Limits
    from gateway.policy.model import Policy
    from gateway.policy.settings import Settings
    from gateway.policy.teams import TeamRegistry
    from gateway.quality.monitor import QualityMonitor
    from gateway.routing.breakers import BreakerBoard
    from gateway.routing.fairness import TeamConcurrency
    from gateway.routing.router import Router
    from gateway.routing.shared import SharedState
    from gateway.routing.tasks import TaskClassifier
    from gateway.telemetry.alerts import Alerts
    from gateway.telemetry.decisions import DecisionLog
    from gateway.telemetry.exporter_link import ExporterLink
    from gateway.telemetry.metrics import Metrics
    from gateway.telemetry.timeseries import TrafficSeries
    from gateway.telemetry.tracing import Tracing
    from gateway.tiering.router import TierRouter
    from gateway.tiering.sync import TierOutcomeSync

    from .context import Interceptor


@dataclass(slots=True)
class Runtime:
    settings: Settings
    catalog: Catalog
    pool: ProviderPool
    shared: SharedState
    board: BreakerBoard
    router: Router
    alerts: Alerts
    metrics: Metrics
    decisions: DecisionLog
    quality: QualityMonitor  # signals, regressions
    series: TrafficSeries  # the dashboard's traffic
    interceptors: tuple[Interceptor, ...] = field(default_factory=tuple)
    embedder: Embedder | None = None
    tasks: TaskClassifier | None = None  # None: no labelled task examples in policy
    tiers: TierRouter | None = None  # None: no route has tiering
    tier_sync: TierOutcomeSync | None = None  # tier outcomes shared through Redis
    tracing: Tracing | None = None  # None: no OTLP endpoint, no spans
    exporter: ExporterLink | None = None  # the telemetry exporter process (its link)
    limits: Limits | None = None  # team limits and budgets (gateway.api.lifecycle installs them)
    teams: TeamRegistry | None = None  # the run-time team overlay
    concurrency: TeamConcurrency | None = None  # teams' requests in flight (max_in_flight)

    def snapshot(self) -> Runtime:
        """A shallow copy: a request keeps the catalog and pool it started with across a reload."""
        return copy.copy(self)


@dataclass(slots=True)
class Lifecycle:
    """What outlives a request: the file's policy, the reload lock, the draining flag."""

    policy: Policy  # as read from the file, without the run-time team overlay
    draining: bool = False
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)
    _retired: list[ProviderPool] = field(default_factory=list)

    def retire(self, pool: ProviderPool, after_s: float) -> None:
        """Close a replaced pool once no request can still be using it."""
        self._retired.append(pool)

        async def close_later() -> None:
            await asyncio.sleep(after_s)
            if pool in self._retired:
                self._retired.remove(pool)
                await pool.close()

        task = asyncio.ensure_future(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for pool in self._retired:
            await pool.close()
        self._retired.clear()


RUNTIME = web.AppKey("runtime", Runtime)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_STARTED = web.RequestKey("request_started", float)  # perf_counter at arrival
