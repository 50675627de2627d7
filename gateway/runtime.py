"""Everything a request handler needs, built once per process (or per reload) and typed."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from providers.pool import ProviderPool

from .catalog import Catalog
from .context import Interceptor
from .settings import Settings


@dataclass(slots=True)
class Runtime:
    settings: Settings
    catalog: Catalog
    pool: ProviderPool
    interceptors: tuple[Interceptor, ...] = field(default_factory=tuple)


RUNTIME = web.AppKey("runtime", Runtime)
REQUEST_ID = web.RequestKey("request_id", str)
