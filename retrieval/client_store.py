"""qdrant-client's ``AsyncQdrantClient``: a Qdrant server, or the client's local mode on disk.

Against a server the collection gets keyword payload indexes on the filtered fields, so the ACL
filter is planned with them. Local mode has no indexes (it evaluates filters point by point in
Python) and says so in a warning if asked for one, so none is asked for there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm

from .store import INDEXED_FIELDS, All, Condition, Empty, Hit, Match, Point, StoreUnavailable

T = TypeVar("T")

_BATCH = 256
HNSW_EF = 64  # as retrieval/edge_store.py


def _condition(where: Condition) -> Any:
    if isinstance(where, Match):
        if len(where.values) == 1:
            return qm.FieldCondition(key=where.key, match=qm.MatchValue(value=where.values[0]))
        return qm.FieldCondition(key=where.key, match=qm.MatchAny(any=list(where.values)))
    if isinstance(where, Empty):
        return qm.IsEmptyCondition(is_empty=qm.PayloadField(key=where.key))
    if isinstance(where, All):
        return qm.Filter(must=[_condition(c) for c in where.conditions])
    return qm.Filter(should=[_condition(c) for c in where.conditions])


def to_filter(where: Condition) -> qm.Filter:
    """The engine-neutral condition as a qdrant-client filter."""
    built = _condition(where)
    return built if isinstance(built, qm.Filter) else qm.Filter(must=[built])


class ClientStore:
    """A collection through ``AsyncQdrantClient``."""

    def __init__(
        self, collection: str, client: AsyncQdrantClient, *, description: str, indexes: bool
    ) -> None:
        self.collection = collection
        self.client = client
        self.description = description
        self._indexes = indexes
        self._known = False  # the collection was seen to exist
        # The same search breadth as the embedded engine (a server's HNSW; local mode has none).
        self._search_params = qm.SearchParams(hnsw_ef=HNSW_EF) if indexes else None

    @classmethod
    def server(
        cls, collection: str, url: str, *, api_key: str | None = None, timeout_s: float = 5.0
    ) -> ClientStore:
        """A Qdrant server. No request is made until the first call."""
        client = AsyncQdrantClient(
            url=url,
            api_key=api_key,
            timeout=max(1, round(timeout_s)),
            check_compatibility=False,  # its failure is a warning at start-up, not an error
        )
        return cls(collection, client, description=f"Qdrant at {url}", indexes=True)

    @classmethod
    def local(cls, collection: str, path: Path) -> ClientStore:
        """qdrant-client's local mode, persisted under ``path`` (one process at a time)."""
        path.mkdir(parents=True, exist_ok=True)
        client = AsyncQdrantClient(path=str(path))
        return cls(
            collection, client, description=f"qdrant-client local mode at {path}", indexes=False
        )

    async def _call(self, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except Exception as exc:  # connection refused, HTTP errors, timeouts, local-mode errors
            raise StoreUnavailable(f"{self.description}: {exc or type(exc).__name__}") from exc

    async def exists(self) -> bool:
        if not self._known:
            self._known = await self._call(self.client.collection_exists(self.collection))
        return self._known

    async def create(self, dim: int) -> None:
        if await self.exists():
            return
        await self._call(
            self.client.create_collection(
                self.collection,
                vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE),
            )
        )
        if self._indexes:
            for field in INDEXED_FIELDS:
                await self._call(
                    self.client.create_payload_index(
                        self.collection, field, qm.PayloadSchemaType.KEYWORD, wait=True
                    )
                )
        self._known = True

    async def dim(self) -> int | None:
        if not await self.exists():
            return None
        info = await self._call(self.client.get_collection(self.collection))
        vectors = info.config.params.vectors
        return vectors.size if isinstance(vectors, qm.VectorParams) else None

    async def search(
        self, vector: Sequence[float], where: Condition, limit: int, score_threshold: float
    ) -> list[Hit]:
        response = await self._call(
            self.client.query_points(
                self.collection,
                query=list(vector),
                query_filter=to_filter(where),
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
                search_params=self._search_params,
            )
        )
        return [Hit(str(p.id), p.score, dict(p.payload or {})) for p in response.points]

    async def scan(self, where: Condition, fields: Sequence[str]) -> list[Hit]:
        hits: list[Hit] = []
        offset: Any = None
        while True:
            records, offset = await self._call(
                self.client.scroll(
                    self.collection,
                    scroll_filter=to_filter(where),
                    limit=1000,
                    offset=offset,
                    with_payload=list(fields),
                    with_vectors=False,
                )
            )
            hits.extend(Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records)
            if offset is None:
                return hits

    async def upsert(self, points: Sequence[Point]) -> None:
        for start in range(0, len(points), _BATCH):
            batch = [
                qm.PointStruct(id=p.id, vector=list(p.vector), payload=p.payload)
                for p in points[start : start + _BATCH]
            ]
            await self._call(self.client.upsert(self.collection, points=batch, wait=True))

    async def delete(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), _BATCH):
            selector = qm.PointIdsList(points=list(ids[start : start + _BATCH]))
            await self._call(
                self.client.delete(self.collection, points_selector=selector, wait=True)
            )

    async def finish(self) -> None:
        """Nothing to do: a server indexes in the background; local mode has no index."""

    async def close(self) -> None:
        await self._call(self.client.close())
