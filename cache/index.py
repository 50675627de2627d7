"""In-process vector indexes, one per isolation scope, kept in sync from Redis.

An HNSW graph (usearch) per scope: lookups stay well under a millisecond at a million entries, and
entries can be removed (eviction, invalidation). Vectors are unit length, so inner product is
cosine similarity. Redis stays the source of truth: a replica rebuilds its indexes from it at
start and follows the other replicas' additions and removals through a Redis stream.
"""

from __future__ import annotations

import threading

import numpy as np

# isort: off
# cache.embedder first: it makes the system libstdc++ the process's C++ runtime, without which
# loading onnxruntime after usearch crashes (see cache/embedder.py, _share_system_libstdcxx).
from .embedder import Vector
from usearch.index import Index

# isort: on


class ScopeIndex:
    """Nearest cached entries of one scope."""

    def __init__(self, dim: int) -> None:
        self._index = Index(
            ndim=dim, metric="ip", dtype="f32", connectivity=16, expansion_search=64
        )

    def __len__(self) -> int:
        return len(self._index)

    def add(self, key: int, vector: Vector) -> None:
        if key in self._index:
            self._index.remove(key)
        self._index.add(np.uint64(key), vector)

    def remove(self, key: int) -> None:
        if key in self._index:
            self._index.remove(key)

    def nearest(self, vector: Vector, count: int = 1) -> list[tuple[int, float]]:
        """``(key, cosine similarity)`` of the ``count`` nearest entries, best first."""
        if not len(self._index):
            return []
        matches = self._index.search(vector, count)
        return [
            (int(key), 1.0 - float(distance))
            for key, distance in zip(matches.keys, matches.distances, strict=True)
        ]


class ScopedIndexes:
    """A ``ScopeIndex`` per scope, created on first use; safe to call from one event loop."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._scopes: dict[str, ScopeIndex] = {}
        self._owner: dict[int, str] = {}
        self._lock = threading.Lock()  # the loader thread and the loop may both add

    def __len__(self) -> int:
        return len(self._owner)

    def add(self, scope: str, key: int, vector: Vector) -> None:
        with self._lock:
            index = self._scopes.get(scope)
            if index is None:
                index = self._scopes[scope] = ScopeIndex(self.dim)
            index.add(key, vector)
            self._owner[key] = scope

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
        index = self._scopes.get(scope)
        return index.nearest(vector, count) if index is not None else []

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()
            self._owner.clear()
