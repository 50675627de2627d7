"""Should the int8 embedder batch concurrent requests? One text a pass vs micro-batches.

The gateway's int8 embedder (``onnx-int8``, the default) encodes one text per forward pass
(cache/embedders.py). This measures, on one process and the same weights, ``--callers``
concurrent ``embed`` calls (the cache's miss path under load) for ``--seconds`` each:

- ``one``: ``max_batch`` 1 (today's setting);
- ``batch-N``: up to N queued texts per pass, taken as the worker frees up (``max_wait_s`` 0:
  no text waits for company, a batch is what queued meanwhile).

For each: texts per second, process CPU per text, the batches' mean size; then the batched
vectors' cosine to each text's vector encoded alone (dynamic quantisation scales activations
over the whole batch, so a batched vector depends on its neighbours: the same query could hit
or miss depending on concurrent traffic). Questions of varied length, as a cache sees them::

    python -m bench.embed_batching [--callers 32] [--seconds 5] [--batches 4,8,16]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.overhead_cache import question
from cache.embedder import BatchingEmbedder
from cache.embedders import make_embedder


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def texts(count: int) -> list[str]:
    """Questions of 6 to 40 words (a number in each, as in bench.overhead's (u))."""
    out = []
    for n in range(count):
        base = question(7, n)
        out.append(" ".join([base] * (1 + n % 4)) if n % 3 else base)
    return out


async def under_load(
    embedder: BatchingEmbedder, pool: list[str], callers: int, seconds: float
) -> tuple[float, float, float]:
    """Texts per second, CPU seconds per text and mean batch size with ``callers`` callers."""
    done = 0
    deadline = time.perf_counter() + seconds
    batches0, texts0 = embedder.batches, embedder.texts

    async def caller(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < deadline:
            await embedder.embed(pool[i % len(pool)])
            done += 1
            i += callers

    began, cpu0 = time.perf_counter(), cpu_s()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    wall, cpu = time.perf_counter() - began, cpu_s() - cpu0
    batches = max(1, embedder.batches - batches0)
    return done / wall, cpu / max(1, done), (embedder.texts - texts0) / batches


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.embed_batching", description=__doc__)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batches", default="4,8,16")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    pool = texts(2000)
    embedder = make_embedder("onnx-int8", args.data_dir)  # max_batch 1, max_wait_s 0
    alone = embedder.encode(pool[:256])
    embedder.encode(pool[:64])  # warm
    rows = [("one", *asyncio.run(under_load(embedder, pool, args.callers, args.seconds)), 1.0)]
    for size in (int(b) for b in args.batches.split(",")):
        embedder.max_batch = size  # what make_embedder would pass; the worker reads it per batch
        rate, cpu, mean = asyncio.run(under_load(embedder, pool, args.callers, args.seconds))
        batched = np.concatenate([embedder.encode(pool[i : i + size]) for i in range(0, 256, size)])
        cosine = float(np.min(np.sum(batched * alone, axis=1)))
        rows.append((f"batch-{size}", rate, cpu, mean, cosine))
    print(f"int8 embedder, {args.callers} concurrent callers, {args.seconds:g} s each")
    print(f"{'setting':<10}{'texts/s':>10}{'CPU ms/text':>13}{'mean batch':>12}{'min cos':>10}")
    for name, rate, cpu, mean, cosine in rows:
        print(f"{name:<10}{rate:>10.0f}{cpu * 1e3:>13.2f}{mean:>12.1f}{cosine:>10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
