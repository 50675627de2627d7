"""Per-request state shared by the pipeline's stages, and the interceptor seam."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from providers.base import Completion
from providers.schema import ChatRequest

from .catalog import Route
from .decisions import Decision
from .policy import TeamConfig


@dataclass(slots=True)
class RequestContext:
    """What the pipeline knows about one request; interceptors read and annotate it."""

    request_id: str
    started: float  # perf_counter at arrival
    team: TeamConfig
    route: Route
    chat: ChatRequest
    task_type: str
    deadline: float  # event-loop time by which the request must be answered
    deadline_s: float
    decision: Decision
    upstream_s: float = 0.0  # time spent waiting on providers
    notes: dict[str, Any] = field(default_factory=dict)

    def overhead_ms(self) -> float:
        return (time.perf_counter() - self.started - self.upstream_s) * 1000


class Interceptor(Protocol):
    """A stage before dispatch that may answer on its own (cache, knowledge base)."""

    async def before(self, ctx: RequestContext) -> Completion | None:
        """An answer that makes the upstream call unnecessary, or ``None`` to go on."""
        ...

    async def after(self, ctx: RequestContext, completion: Completion) -> None:
        """See the upstream's answer (e.g. to store it)."""
        ...
