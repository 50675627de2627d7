"""In-process vector indexes, one per isolation scope, kept in sync from Redis.

An HNSW graph (usearch) per scope: lookups stay under a millisecond at a million entries (see
``bench/vector_index.py``), and entries can be removed (eviction, invalidation). Redis stays the
source of truth: a replica rebuilds its indexes from it at start, in batches added by several
threads at once, and follows the other replicas' additions and removals through a Redis stream.

The index only *finds* candidates: it stores vectors quantised to int8 (a quarter of float32's
memory, faster distances), so the similarity it reports is approximate (about ±0.005). The cache
stage recomputes each candidate's cosine exactly from the float32 vector the store keeps with the
entry, and re-ranks by that; hit decisions never see a quantised similarity.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import numpy.typing as npt

# isort: off
# cache.embedder first: it makes the system libstdc++ the process's C++ runtime, without which
# loading onnxruntime after usearch crashes (see cache/embedder.py, _share_system_libstdcxx).
from .embedder import Vector
from usearch.index import Index

# isort: on

# Chosen with bench/vector_index.py at 1 M entries (figures in bench/README.md).
DTYPE = "i8"
CONNECTIVITY = 16
EXPANSION_ADD = 128
EXPANSION_SEARCH = 128


def metric_for(dtype: str) -> str:
    """Inner product is cosine for unit vectors, but usearch's int8 kernel only yields a
    ``1 - cosine`` distance under the ``cos`` metric (``ip`` returns raw int8 dot products)."""
    return "cos" if dtype == "i8" else "ip"


class ScopeIndex:
    """Nearest cached entries of one scope."""

    def __init__(
        self,
        dim: int,
        *,
        dtype: str = DTYPE,
        connectivity: int = CONNECTIVITY,
        expansion_search: int = EXPANSION_SEARCH,
    ) -> None:
        self._index = Index(
            ndim=dim,
            metric=metric_for(dtype),
            dtype=dtype,
            connectivity=connectivity,
            expansion_add=EXPANSION_ADD,
            expansion_search=expansion_search,
        )

    def __len__(self) -> int:
        return len(self._index)

    def add(self, key: int, vector: Vector) -> None:
        if key in self._index:
            self._index.remove(key)
        self._index.add(np.uint64(key), vector)

    def add_many(
        self, keys: npt.NDArray[np.uint64], vectors: npt.NDArray[np.float32], threads: int = 0
    ) -> None:
        """Add a batch with ``threads`` threads (0: one per core); a key present is replaced,
        and within the batch the last vector of a repeated key wins."""
        if not len(keys):
            return
        # np.unique keeps the first occurrence: reverse so the last one does.
        _, last = np.unique(keys[::-1], return_index=True)
        keep = np.sort(len(keys) - 1 - last)
        keys, vectors = keys[keep], vectors[keep]
        present = [int(k) for k in keys if int(k) in self._index]
        if present:
            self._index.remove(present)
        self._index.add(keys, vectors, threads=threads)

    def remove(self, key: int) -> None:
        if key in self._index:
            self._index.remove(key)

    def nearest(self, vector: Vector, count: int = 1) -> list[tuple[int, float]]:
        """``(key, approximate cosine similarity)`` of the ``count`` nearest entries, best first."""
        if not len(self._index):
            return []
        matches = self._index.search(vector, count)
        return [
            (int(key), 1.0 - float(distance))
            for key, distance in zip(matches.keys, matches.distances, strict=True)
        ]


class ScopedIndexes:
    """A ``ScopeIndex`` per scope, created on first use.

    Thread-safe: every call takes one lock (usearch may reallocate while adding). The cache
    searches on the embedder's worker thread (right after the query's vector), adds its own
    entries on an index thread (``apply``), and the start-up load runs ``add_many`` on a worker
    thread (its batch uses several threads); the event loop applies other replicas' changes.
    A lookup during a bulk load does not wait for the batch: it finds nothing (a miss); otherwise
    it waits for the one add or removal under way (about a millisecond).
    """

    def __init__(self, dim: int, *, threads: int | None = None) -> None:
        self.dim = dim
        self.threads = threads or os.cpu_count() or 1  # for bulk loads
        self._scopes: dict[str, ScopeIndex] = {}
        self._owner: dict[int, str] = {}
        self._lock = threading.Lock()
        self._loading = 0  # bulk loads under way (``add_many``)

    def __len__(self) -> int:
        return len(self._owner)

    def keys(self) -> list[int]:
        """A snapshot of every indexed key, in insertion order."""
        with self._lock:
            return list(self._owner)

    def _scope(self, scope: str) -> ScopeIndex:
        index = self._scopes.get(scope)
        if index is None:
            index = self._scopes[scope] = ScopeIndex(self.dim)
        return index

    def add(self, scope: str, key: int, vector: Vector) -> None:
        with self._lock:
            self._forget_elsewhere(key, scope)
            self._scope(scope).add(key, vector)
            self._owner[key] = scope

    def add_many(self, scope: str, keys: list[int], vectors: list[Vector]) -> None:
        """A batch of one scope's entries, added by several threads (start-up load)."""
        if not keys:
            return
        array = np.asarray(keys, dtype=np.uint64)
        matrix = np.asarray(np.stack(vectors), dtype=np.float32)
        self._loading += 1
        try:
            with self._lock:
                for key in keys:
                    self._forget_elsewhere(key, scope)
                self._scope(scope).add_many(array, matrix, self.threads)
                self._owner.update(dict.fromkeys(keys, scope))
        finally:
            self._loading -= 1

    def apply(self, adds: list[tuple[str, int, Vector]], removals: list[int]) -> None:
        """Add ``(scope, key, vector)`` entries, then remove keys, one operation per lock hold
        (a lookup or the loop waits for one add at most, not the batch). For the cache's own
        writes, on a thread of its own: each add costs about a millisecond of graph search."""
        for scope, key, vector in adds:
            self.add(scope, key, vector)
        for key in removals:
            self.remove(key)

    def _forget_elsewhere(self, key: int, scope: str) -> None:
        """A key lives in one scope's index only (ids are random: this is belt and braces)."""
        previous = self._owner.get(key)
        if previous is not None and previous != scope and previous in self._scopes:
            self._scopes[previous].remove(key)

    def remove(self, key: int) -> None:
        with self._lock:
            scope = self._owner.pop(key, None)
            if scope is not None:
                self._scopes[scope].remove(key)

    def drop_scope(self, scope: str) -> None:
        with self._lock:
            index = self._scopes.pop(scope, None)
            if index is not None:
                self._owner = {k: s for k, s in self._owner.items() if s != scope}

    def nearest(self, scope: str, vector: Vector, count: int = 1) -> list[tuple[int, float]]:
        """The ``count`` nearest of ``scope`` (approximate similarities); none during a bulk
        load."""
        if not self._lock.acquire(blocking=not self._loading):
            return []
        try:
            index = self._scopes.get(scope)
            return index.nearest(vector, count) if index is not None else []
        finally:
            self._lock.release()

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()
            self._owner.clear()
