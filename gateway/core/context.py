"""Per-request state shared by the pipeline's stages, and the interceptor seam."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from cache.embedder import (
    BatchingEmbedder,
    Embedder,
    ThenFailed,
    Vector,
    fits_window_off_loop,
)

from .decision import Decision

if TYPE_CHECKING:  # the policy layer imports this floor; its types are annotations here
    from gateway.policy.catalog import Route
    from gateway.policy.model import TeamConfig
from providers.base import Completion
from providers.schema import ChatRequest, content_text

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Why a stage did not act on the query's similarity: the embedder saw only the turn's beginning.
QUERY_EXCEEDS_WINDOW = "query_exceeds_window"
# A note the knowledge stage sets when its store failed (or is being left alone after a failure):
# the answer was made without the passages it should have had, so the cache keeps it briefly
# (gateway/stages/cache_quality.py, DEGRADED_TTL_S).
KNOWLEDGE_UNAVAILABLE = "knowledge_unavailable"


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
    request_headers: Mapping[str, str] = field(default_factory=dict)
    allowed_regions: frozenset[str] | None = None  # the team's, narrowed by x-gateway-regions
    embedder: Embedder | None = None
    upstream_s: float = 0.0  # time spent waiting on providers
    notes: dict[str, Any] = field(default_factory=dict)
    # Response headers set by stages (x-gateway-cache, x-gateway-source, ...).
    headers: dict[str, str] = field(default_factory=dict)
    _embedding: Vector | None = None
    _embedded: bool = False
    _fits: bool | None = None

    def overhead_ms(self) -> float:
        return (time.perf_counter() - self.started - self.upstream_s) * 1000

    @property
    def query_text(self) -> str:
        """The final user turn's text: what the cache and the knowledge base look up."""
        for message in reversed(self.chat.messages):
            if message.role == "user":
                return content_text(message.content)
        return ""

    async def query_fits(self) -> bool:
        """Whether the embedder sees the whole final user turn, computed at most once.

        A turn longer than the model's window is embedded from its beginning only: two turns
        that share it embed identically whatever follows (a pasted document, then different
        questions), so their similarity says nothing and must not choose an answer. Tokenizer
        only, no forward pass, and on a thread when it must tokenise (``fits_window_off_loop``);
        ``True`` without an embedder or one that cannot count.
        """
        if self._fits is None:
            text = self.query_text
            self._fits = self.embedder is None or await fits_window_off_loop(self.embedder, text)
        return self._fits

    async def query_embedding(self) -> Vector | None:
        """The final user turn's embedding, computed at most once per request.

        ``None`` without an embedder, for an empty query, or when the embedder fails (the
        failure is logged; the request goes on uncached: fail-open).
        """
        if not self._embedded and self.embedder is not None:
            self._embedding = await self._embed_once(self.embedder.embed)
        self._embedded = True
        return self._embedding

    async def query_embedding_then(self, then: Callable[[Vector], _T]) -> tuple[Vector, _T] | None:
        """``query_embedding`` and ``then(vector)``; ``None`` when there is no vector.

        When this call computes the vector on a ``BatchingEmbedder``, ``then`` runs on its
        worker thread right after it (``embed_then``): the cache's index search leaves the event
        loop. Otherwise (the vector is known already, another embedder) ``then`` runs here.
        An exception from ``then`` propagates; the vector is kept either way.
        """
        embedder = self.embedder
        if self._embedded or not isinstance(embedder, BatchingEmbedder):
            vector = await self.query_embedding()
            return None if vector is None else (vector, then(vector))
        try:
            found = await self._embed_once(lambda text: embedder.embed_then(text, then))
        except ThenFailed as exc:
            self._embedding = exc.vector
            raise exc.__cause__ or exc from None
        if found is not None:
            self._embedding = found[0]
        return found

    async def _embed_once(self, embed: Callable[[str], Awaitable[_T]]) -> _T | None:
        """``embed(query_text)``, marking the query embedded; ``None`` for an empty query or
        when the embedder fails (logged: the request goes on uncached, fail-open). A failure of
        ``embed_then``'s follow-up (``ThenFailed``) is the caller's to handle."""
        self._embedded = True
        text = self.query_text
        if not text:
            return None
        try:
            return await embed(text)
        except ThenFailed:
            raise
        except Exception:  # any embedder failure: answer uncached rather than fail
            log.exception("embedding failed for request %s; continuing without", self.request_id)
            self.notes["embedding_failed"] = True
            return None


class Interceptor(Protocol):
    """A stage before dispatch that may answer on its own (cache, knowledge base)."""

    async def before(self, ctx: RequestContext) -> Completion | None:
        """An answer that makes the upstream call unnecessary, or ``None`` to go on."""
        ...

    async def after(self, ctx: RequestContext, completion: Completion) -> None:
        """See the upstream's answer (e.g. to store it)."""
        ...
