"""Prompt embeddings for offline router replays, optionally cached on disk.

Embedding thousands of prompts on a CPU takes minutes; a replay run several times over the same
files (a benchmark, a parameter sweep) keeps them in one ``.npz`` file keyed by the SHA-256 of
each text and the embedder's name, so a cached vector is never reused across models.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Encode = Callable[[Sequence[str]], Matrix]


def text_key(model: str, text: str) -> str:
    return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()


def embed_cached(
    texts: Sequence[str], encode: Encode, model: str, cache: Path | None, *, batch: int = 256
) -> Matrix:
    """The embeddings of ``texts`` (rows in order), from ``cache`` where present; new vectors
    are added to the cache file."""
    stored: dict[str, Matrix] = {}
    if cache is not None and cache.exists():
        with np.load(cache) as data:
            stored = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
    keys = [text_key(model, t) for t in texts]
    missing = list(dict.fromkeys(k for k in keys if k not in stored))
    if missing:
        by_key = dict(zip(keys, texts, strict=True))
        for start in range(0, len(missing), batch):
            chunk = missing[start : start + batch]
            vectors = encode([by_key[k] for k in chunk])
            stored.update(zip(chunk, vectors, strict=True))
        if cache is not None:
            _save(cache, stored)
    return np.stack([stored[k] for k in keys]).astype(np.float32) if keys else _empty()


def _empty() -> Matrix:
    return np.zeros((0, 0), dtype=np.float32)


def _save(cache: Path, stored: dict[str, Matrix]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, keys=np.array(list(stored)), vectors=np.stack(list(stored.values())))
    os.replace(tmp, cache)
