"""Everything a request handler needs, built once per process (or per reload) and typed."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from aiohttp import web

from cache.embedder import Embedder
from gateway.policy.catalog import Catalog
from gateway.policy.limits import Limits
from gateway.policy.settings import Settings
from gateway.policy.teams import TeamRegistry
from gateway.quality.monitor import QualityMonitor
from gateway.routing.breakers import BreakerBoard
from gateway.routing.router import Router
from gateway.routing.shared import SharedState
from gateway.routing.tasks import TaskClassifier
from gateway.telemetry.alerts import Alerts
from gateway.telemetry.decisions import DecisionLog
from gateway.telemetry.exporter import ExporterLink
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.timeseries import TrafficSeries
from gateway.telemetry.tracing import Tracing
from gateway.tiering.router import TierRouter
from gateway.tiering.sync import TierOutcomeSync
from providers.pool import ProviderPool

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
    interceptors: tuple[Interceptor, ...] = field(default_factory=tuple)
    embedder: Embedder | None = None
    tasks: TaskClassifier | None = None  # None: no labelled task examples in policy
    tiers: TierRouter | None = None  # None: no route has tiering
    tier_sync: TierOutcomeSync | None = None  # tier outcomes shared through Redis
    tracing: Tracing | None = None  # None: no OTLP endpoint, no spans
    exporter: ExporterLink | None = (
        None  # the telemetry exporter process (gateway/telemetry/exporter.py)
    )
    series: TrafficSeries = field(default_factory=TrafficSeries)  # the dashboard's traffic
    limits: Limits | None = None  # team limits and budgets (gateway.lifecycle installs them)
    teams: TeamRegistry | None = None  # the run-time team overlay
    quality: QualityMonitor = field(default_factory=QualityMonitor)  # signals, regressions

    def snapshot(self) -> Runtime:
        """A shallow copy: a request keeps the catalog and pool it started with across a reload."""
        return copy.copy(self)


RUNTIME = web.AppKey("runtime", Runtime)
REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_STARTED = web.RequestKey("request_started", float)  # perf_counter at arrival
