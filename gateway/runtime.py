"""Everything a request handler needs, built once per process (or per reload) and typed."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from cache.embedder import Embedder
from providers.pool import ProviderPool

from .alerts import Alerts
from .breakers import BreakerBoard
from .catalog import Catalog
from .context import Interceptor
from .decisions import DecisionLog
from .metrics import Metrics
from .router import Router
from .settings import Settings
from .shared import SharedState
from .tracing import Tracing


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
    tracing: Tracing | None = None  # None: no OTLP endpoint, no spans


RUNTIME = web.AppKey("runtime", Runtime)
REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_STARTED = web.RequestKey("request_started", float)  # perf_counter at arrival
