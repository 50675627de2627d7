"""The knowledge store seam: one collection of chunks, searched with a filter inside Qdrant.

Two implementations behind ``KnowledgeStore``:

- ``ClientStore`` (retrieval/client_store.py): qdrant-client's ``AsyncQdrantClient``, against a
  Qdrant server (``GATEWAY_QDRANT_URL``) or, as ``knowledge_engine: qdrant-local``, its local
  mode on disk (brute force in Python);
- ``EdgeStore`` (retrieval/edge_store.py): Qdrant Edge, Qdrant's engine in-process, on disk
  under ``knowledge_path`` (the embedded default; the figures are in the README).

Filters are written once, as a small engine-neutral tree (``Match``, ``Empty``, ``All``,
``AnyOf``), and each store translates it to its engine's filter objects: the ACL rule lives in
retrieval/search.py, not in two places. Engine exceptions become ``StoreUnavailable`` at this
boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# Payload fields that filters use: indexed where the engine supports payload indexes.
INDEXED_FIELDS = ("kb", "source", "teams", "residency", "kind")


class StoreUnavailable(Exception):
    """The knowledge store cannot be reached or failed; callers go on without it."""


class StoreLocked(StoreUnavailable):
    """The embedded store is open in another process (a running gateway): ingest through it."""


@dataclass(frozen=True, slots=True)
class Match:
    """The payload field (a keyword or a list of them) holds any of ``values``."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Empty:
    """The payload field is missing, null or an empty list."""

    key: str


@dataclass(frozen=True, slots=True)
class All:
    """Every condition holds."""

    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one condition holds."""

    conditions: tuple[Condition, ...]


Condition = Match | Empty | All | AnyOf


@dataclass(frozen=True, slots=True)
class Point:
    """A chunk to write: id, embedding, payload."""

    id: str
    vector: Sequence[float]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Hit:
    """A stored chunk as search or scan returns it (``score`` is 0 for a scan)."""

    id: str
    score: float
    payload: dict[str, Any]


class KnowledgeStore(Protocol):
    """One Qdrant collection of chunks."""

    collection: str
    description: str  # for logs and readiness: engine and location

    async def exists(self) -> bool:
        """Whether the collection exists (opening it when it does)."""
        ...

    async def create(self, dim: int) -> None:
        """Create the collection for ``dim``-wide cosine vectors, unless it exists."""
        ...

    async def dim(self) -> int | None:
        """The width of the collection's vectors; ``None`` when it does not exist."""
        ...

    async def search(
        self, vector: Sequence[float], where: Condition, limit: int, score_threshold: float
    ) -> list[Hit]:
        """The ``limit`` nearest chunks matching ``where`` with a cosine >= ``score_threshold``,
        best first. The filter runs inside the engine."""
        ...

    async def scan(self, where: Condition, fields: Sequence[str]) -> list[Hit]:
        """Every chunk matching ``where``, with only ``fields`` of its payload."""
        ...

    async def upsert(self, points: Sequence[Point]) -> None: ...

    async def delete(self, ids: Sequence[str]) -> None: ...

    async def finish(self) -> None:
        """After a batch of writes: make them durable and build indexes."""
        ...

    async def close(self) -> None: ...
