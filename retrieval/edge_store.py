"""The embedded default: Qdrant Edge (``qdrant-edge-py``), Qdrant's engine in-process, on disk.

One shard directory per collection: ``<knowledge_path>/edge/<collection>``. Calls are
synchronous in Rust and release the GIL, so they run in worker threads and never block the
event loop. After ingestion ``finish`` flushes and runs the optimizer, which builds the HNSW
graph and the payload indexes: a 100k-chunk search then takes about a millisecond (see
bench/knowledge.py) where qdrant-client's local mode scans every point in Python.

A shard is opened by one process at a time (Qdrant Edge locks its write-ahead log): with the
embedded store, ``gateway ingest`` runs while the gateway is stopped. A Qdrant server
(``GATEWAY_QDRANT_URL``) has no such limit.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import qdrant_edge as qe

from .store import (
    INDEXED_FIELDS,
    All,
    Condition,
    Empty,
    Hit,
    Match,
    Point,
    StoreLocked,
    StoreUnavailable,
)

T = TypeVar("T")

_BATCH = 512
# Search breadth. Measured at 100k chunks under the ACL filter (bench/knowledge.py): ef 64 keeps
# recall@4 at 0.99 for ~60 % of the default's latency; ef 32 drops it to 0.96. Vectors stay
# float32 (no quantization) so that scores, which thresholds are compared with, are exact.
HNSW_EF = 64
_CONFIG_FILE = "edge_config.json"


def hnsw_config() -> qe.HnswIndexConfig:
    """Qdrant's defaults for building the graph."""
    return qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000)


def _condition(where: Condition) -> Any:
    if isinstance(where, Match):
        if len(where.values) == 1:
            return qe.FieldCondition(where.key, match=qe.MatchValue(where.values[0]))
        return qe.FieldCondition(where.key, match=qe.MatchAny(list(where.values)))
    if isinstance(where, Empty):
        return qe.IsEmptyCondition(where.key)
    if isinstance(where, All):
        return qe.Filter(must=[_condition(c) for c in where.conditions])
    return qe.Filter(should=[_condition(c) for c in where.conditions])


def to_filter(where: Condition) -> qe.Filter:
    """The engine-neutral condition as a Qdrant Edge filter."""
    built = _condition(where)
    return built if isinstance(built, qe.Filter) else qe.Filter(must=[built])


class EdgeStore:
    """A collection as a Qdrant Edge shard directory."""

    def __init__(self, collection: str, root: Path) -> None:
        self.collection = collection
        self.path = root / collection
        self.description = f"embedded Qdrant Edge at {self.path}"
        self._shard: qe.EdgeShard | None = None
        self._lock = threading.Lock()  # opening and closing, from worker threads

    # -- lifetime ---------------------------------------------------------------------------
    def _open(self, create_dim: int | None = None) -> qe.EdgeShard | None:
        with self._lock:
            if self._shard is not None:
                return self._shard
            if (self.path / _CONFIG_FILE).exists():
                try:
                    self._shard = qe.EdgeShard.load(str(self.path))
                except Exception as exc:
                    if "WouldBlock" in str(exc):
                        raise StoreLocked(
                            f"{self.description} is open in another process (a running "
                            "gateway?): ingest through its admin API (gateway ingest "
                            "--gateway URL), or use a Qdrant server"
                        ) from exc
                    raise
            elif create_dim is not None:
                vectors = qe.EdgeVectorParams(size=create_dim, distance=qe.Distance.Cosine)
                config = qe.EdgeConfig(vectors=vectors, hnsw_config=hnsw_config())
                shard = qe.EdgeShard.create(str(self.path), config)
                for field in INDEXED_FIELDS:
                    shard.update(
                        qe.UpdateOperation.create_field_index(field, qe.PayloadSchemaType.Keyword)
                    )
                self._shard = shard
            return self._shard

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except StoreUnavailable:
            raise
        except Exception as exc:  # the engine raises plain Exception: translate it once, here
            raise StoreUnavailable(f"{self.description}: {exc}") from exc

    async def exists(self) -> bool:
        if self._shard is not None:  # the request path: no thread hop once open
            return True
        return await self._call(self._open) is not None

    async def create(self, dim: int) -> None:
        await self._call(self._open, dim)

    async def dim(self) -> int | None:
        if await self._call(self._open) is None:
            return None
        return await self._call(_dim_of, self.path)

    async def close(self) -> None:
        with self._lock:
            shard, self._shard = self._shard, None
        if shard is not None:
            await asyncio.to_thread(shard.close)

    def _require(self) -> qe.EdgeShard:
        shard = self._open()
        if shard is None:
            raise StoreUnavailable(f"{self.description}: the collection does not exist")
        return shard

    # -- reads ------------------------------------------------------------------------------
    async def search(
        self, vector: Sequence[float], where: Condition, limit: int, score_threshold: float
    ) -> list[Hit]:
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(list(vector)),
            filter=to_filter(where),
            score_threshold=score_threshold,
            with_payload=True,
            params=qe.SearchParams(hnsw_ef=HNSW_EF),
        )

        def run() -> list[Hit]:
            return [
                Hit(str(p.id), p.score, dict(p.payload or {}))
                for p in self._require().query(request)
            ]

        return await self._call(run)

    async def scan(self, where: Condition, fields: Sequence[str]) -> list[Hit]:
        def run() -> list[Hit]:
            shard = self._require()
            hits: list[Hit] = []
            offset: Any = None
            while True:
                records, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset,
                        limit=1000,
                        filter=to_filter(where),
                        with_payload=list(fields),
                        with_vector=False,
                    )
                )
                hits.extend(Hit(str(r.id), 0.0, dict(r.payload or {})) for r in records)
                if offset is None:
                    return hits

        return await self._call(run)

    # -- writes -----------------------------------------------------------------------------
    async def upsert(self, points: Sequence[Point]) -> None:
        def run() -> None:
            shard = self._require()
            for start in range(0, len(points), _BATCH):
                batch = [
                    qe.Point(uuid.UUID(p.id), list(p.vector), p.payload)
                    for p in points[start : start + _BATCH]
                ]
                shard.update(qe.UpdateOperation.upsert_points(batch))

        await self._call(run)

    async def delete(self, ids: Sequence[str]) -> None:
        def run() -> None:
            shard = self._require()
            for start in range(0, len(ids), _BATCH):
                batch: list[qe.PointId] = [uuid.UUID(i) for i in ids[start : start + _BATCH]]
                shard.update(qe.UpdateOperation.delete_points(batch))

        await self._call(run)

    async def finish(self) -> None:
        def run() -> None:
            shard = self._require()
            shard.flush()
            shard.optimize()
            shard.flush()

        await self._call(run)


def _dim_of(path: Path) -> int | None:
    """The default vector's size, from the shard's own configuration file."""
    config = json.loads((path / _CONFIG_FILE).read_text())
    vectors = config.get("vectors") or {}
    params = vectors.get("") if isinstance(vectors, dict) else None
    size = params.get("size") if isinstance(params, dict) else None
    return int(size) if size is not None else None
