"""The cache's vector index at a million entries: build, memory, single-query lookup, recall.

    python -m bench.vector_index [--size 1000000] [--configs f32:16,f16:16,i8:16]
        [--expansion 32,64,128] [--centres synthetic|real] [--threads 2]

Builds one usearch HNSW index per ``dtype:connectivity`` over the same ``--size`` unit vectors
(384 wide, like all-MiniLM-L6-v2), with batched multi-threaded ``Index.add`` (as the gateway's
start-up load does), then for each ``expansion_search`` measures, side by side:

- lookup latency of one query at a time (``count`` = 1 + the hit policy's runners-up, what
  ``CacheStage`` asks for), p50 / p99;
- recall@1 against exact brute force over all vectors, on ``--recall-sample`` queries: as returned
  by the index, and after re-ranking its candidates by exact float32 cosine (what the gateway does
  with the vectors it fetches from the store anyway);
- the similarity error of the index's own top-1 distance (quantised dtypes approximate it), and
  the shortfall: how much lower the best re-scored candidate's cosine is than the true nearest's
  (p99 and max; a miss by 0.001 serves the same answer, a miss by 0.05 may not).

Vectors look like sentence embeddings, not uniform on the sphere (HNSW on uniform random
vectors is a worst case unlike real data). ``--centres real`` (the default) starts from
all-MiniLM-L6-v2 embeddings of the ~37k BANKING77 and CLINC150 texts (encoded once, kept in
/tmp/knowledge-gateway-bench): each vector is one text's embedding, blended with up to half of
another's, plus a little noise, so it stays in the low-dimensional span real embeddings occupy.
``--centres synthetic`` draws ``--clusters`` random topics sharing a common direction (MiniLM is
anisotropic: unrelated sentences sit at cosine ~0.1) with heavy isotropic noise: a pessimistic,
high-intrinsic-dimension case. Queries are drawn the same way: new questions, some near a stored
one.

Timings on a shared machine are noisy: run it alone, or compare configurations within one run.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

# isort: off
import cache.embedder  # noqa: F401  # before usearch: the shared libstdc++ (see cache/index.py)
from usearch.index import Index

# isort: on
from cache.hits import NEIGHBOURS
from cache.index import EXPANSION_ADD, metric_for

Matrix = npt.NDArray[np.float32]
CACHE_DIR = Path("/tmp/knowledge-gateway-bench")
COUNT = 1 + NEIGHBOURS


def _unit(rows: Matrix) -> Matrix:
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def synthetic_centres(clusters: int, dim: int, rng: np.random.Generator) -> Matrix:
    common = _unit(rng.standard_normal((1, dim), dtype=np.float32))
    centres = _unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    return _unit(0.4 * common + centres)


def real_centres() -> Matrix:
    """MiniLM (ONNX fp32) embeddings of every BANKING77 and CLINC150 text, cached on disk."""
    path = CACHE_DIR / "vector_index_centres.npy"
    if path.exists():
        return np.asarray(np.load(path), dtype=np.float32)
    from bench.cache_offline import banking77, clinc150
    from cache.embedders import make_embedder

    texts = [t for split in ("train", "test") for t, _ in banking77(split)]
    texts += [t for t, _ in clinc150("train", "val", "test", "oos_train", "oos_val", "oos_test")]
    embedder = make_embedder("onnx", Path("data"))
    vectors = embedder.encode(sorted(set(texts)))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def sample(
    centres: Matrix,
    size: int,
    rng: np.random.Generator,
    *,
    blend: float,
    noise: tuple[float, float],
) -> Matrix:
    """``size`` unit vectors: a random centre, plus up to ``blend`` of another centre, plus
    isotropic noise of a norm drawn from ``noise``.

    With real sentence embeddings as centres, blends stay in the span real embeddings occupy
    (their intrinsic dimension is far below 384), and the small noise makes every vector
    distinct; with synthetic centres, the large noise is the pessimistic, high-dimensional case.
    """
    dim = centres.shape[1]
    out = np.empty((size, dim), dtype=np.float32)
    for start in range(0, size, 100_000):
        n = min(100_000, size - start)
        rows = centres[rng.integers(0, len(centres), n)].copy()
        if blend:
            mix = rng.uniform(0, blend, (n, 1)).astype(np.float32)
            rows += mix * centres[rng.integers(0, len(centres), n)]
        scale = rng.uniform(*noise, (n, 1)).astype(np.float32) / np.sqrt(dim)
        rows += scale * rng.standard_normal(rows.shape, np.float32)
        out[start : start + n] = _unit(rows)
    return out


def exact_top1(data: Matrix, queries: Matrix) -> tuple[npt.NDArray[np.int64], Matrix]:
    """Brute-force nearest row (and its cosine) of every query."""
    best = np.full(len(queries), -1, dtype=np.int64)
    score = np.full(len(queries), -np.inf, dtype=np.float32)
    for start in range(0, len(data), 100_000):
        sims = queries @ data[start : start + 100_000].T
        arg = sims.argmax(axis=1)
        top = sims[np.arange(len(queries)), arg]
        better = top > score
        best[better], score[better] = arg[better] + start, top[better]
    return best, score


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def measure(
    index: Index,
    data: Matrix,
    queries: Matrix,
    truth: tuple[npt.NDArray[np.int64], Matrix],
    sample: int,
) -> dict[str, float]:
    timings = []
    for query in queries:  # one at a time, as a request does
        t = time.perf_counter()
        index.search(query, COUNT)
        timings.append((time.perf_counter() - t) * 1000)
    _, score = truth
    hits = reranked = 0
    errors, shortfalls = [], []
    for i, query in enumerate(queries[:sample]):
        found = index.search(query, COUNT)
        keys = np.asarray(found.keys, dtype=np.int64)
        if not len(keys):
            continue
        exact = data[keys] @ query
        hits += int(np.isclose(exact[0], score[i], atol=1e-6))
        reranked += int(np.isclose(exact.max(), score[i], atol=1e-6))
        errors.append(abs((1.0 - float(found.distances[0])) - float(exact[0])))
        shortfalls.append(float(score[i]) - float(exact.max()))  # how much worse than the best
    return {
        "p50": pct(timings, 50),
        "p99": pct(timings, 99),
        "mean": statistics.fmean(timings),
        "recall": hits / sample,
        "reranked": reranked / sample,
        "sim_err_p99": pct(errors, 99),
        "shortfall_p99": pct(shortfalls, 99),
        "shortfall_max": max(shortfalls),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vector_index", description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--configs", default="f32:16,f16:16,i8:16")
    parser.add_argument("--expansion", default="32,64,128")
    parser.add_argument("--expansion-add", type=int, default=EXPANSION_ADD)
    parser.add_argument("--centres", choices=["synthetic", "real"], default="real")
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--recall-sample", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    if args.centres == "real":
        centres = real_centres()
        blend, noise = 0.5, (0.1, 0.3)
    else:
        centres = synthetic_centres(args.clusters, args.dim, rng)
        blend, noise = 0.0, (0.7, 1.0)  # cosine ~0.5 inside a topic, ~0.1 across
    data = sample(centres, args.size, rng, blend=blend, noise=noise)
    # Queries come from the same distribution: new questions, some close to a stored one.
    queries = sample(centres, args.queries, rng, blend=blend, noise=noise)
    truth = exact_top1(data, queries[: args.recall_sample])
    within = float(np.mean(np.sum(data[:2000] * data[2000:4000], axis=1)))
    print(
        f"{args.size:,} x {args.dim} vectors ({args.centres} centres: {len(centres):,}), "
        f"{args.queries:,} queries, mean cosine of random pairs {within:.3f}, "
        f"mean query-to-nearest {float(truth[1].mean()):.3f}; "
        f"generated + brute force in {time.perf_counter() - t:.0f} s; "
        f"add threads {args.threads}, expansion_add {args.expansion_add}, count {COUNT}"
    )
    print(
        f"\n{'dtype':5s} {'M':>3s} {'build s':>8s} {'add/s':>8s} {'index MB':>9s} "
        f"{'RSS +MB':>8s} {'ef':>4s} {'p50 ms':>7s} {'p99 ms':>7s} {'mean':>6s} "
        f"{'recall@1':>9s} {'reranked':>9s} {'sim err p99':>11s} {'short p99':>9s} {'max':>6s}"
    )
    keys = np.arange(args.size, dtype=np.uint64)
    for config in args.configs.split(","):
        dtype, _, connectivity = config.partition(":")
        gc.collect()
        before = rss_mb()
        index = Index(
            ndim=args.dim,
            metric=metric_for(dtype),
            dtype=dtype,
            connectivity=int(connectivity or 16),
            expansion_add=args.expansion_add,
        )
        t = time.perf_counter()
        for start in range(0, args.size, 100_000):
            index.add(
                keys[start : start + 100_000], data[start : start + 100_000], threads=args.threads
            )
        build = time.perf_counter() - t
        grown = rss_mb() - before
        for expansion in (int(e) for e in args.expansion.split(",")):
            index._compiled.expansion_search = expansion  # typed read-only, settable
            r = measure(index, data, queries, truth, args.recall_sample)
            print(
                f"{dtype:5s} {index.connectivity:3d} {build:8.0f} {args.size / build:8.0f} "
                f"{index.memory_usage / 2**20:9.0f} {grown:8.0f} {expansion:4d} "
                f"{r['p50']:7.3f} {r['p99']:7.3f} {r['mean']:6.3f} {r['recall']:9.1%} "
                f"{r['reranked']:9.1%} {r['sim_err_p99']:11.4f} {r['shortfall_p99']:9.4f} "
                f"{r['shortfall_max']:6.4f}",
                flush=True,
            )
        del index
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\npeak RSS {peak:.0f} MB (vectors themselves: {data.nbytes / 2**20:.0f} MB); "
        "target: lookup <= 1 ms at 1 M entries"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
