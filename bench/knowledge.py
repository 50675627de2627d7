"""Knowledge store figures: ingestion throughput, filtered search latency and recall.

Compares the embedded engines behind the same ``KnowledgeStore`` API the gateway uses:

- ``edge``: Qdrant Edge in-process (the default), HNSW built by ``finish()``;
- ``qdrant-local``: qdrant-client's local mode (brute force, the filter evaluated point by
  point in Python; every point persisted to SQLite on upsert);
- ``local-memory``: the same local mode in memory, to time its search at sizes whose on-disk
  ingestion would take most of an hour.

Scale test: clustered random unit vectors (384-d like all-MiniLM-L6-v2; clusters of ~50 chunks,
as documents give) with realistic payloads (~600 characters of text, teams, residency, kinds),
searched with the gateway's own ACL filter (a team with regions [eu], one kb) for the top 4,
from queries close to stored chunks. Recall@4 is measured against exact numpy search under the
same ACL; latencies are those of the best of three timed passes (a shared machine only adds
latency). Real test: the sample knowledge base (examples/kb) through ``ingest()`` with the real
embedding model, then real questions. Run from the repository root::

    python -m bench.knowledge [--sizes 10000,100000] [--local-sizes 10000]
                              [--memory-sizes 100000] [--queries 500] [--no-real]

Target: search p50 <= 2 ms at 100k chunks in the embedded default.

``--answers`` and ``--calibrate`` measure curated answers instead (bench/knowledge_answers.py):
paraphrases answered directly, must-not questions never, verification calls and their latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from retrieval.client_store import ClientStore
from retrieval.ingest import ingest
from retrieval.search import Access, access_filter
from retrieval.store import KnowledgeStore, Point
from retrieval.stores import open_store

DIM = 384
TOP_K = 4
TARGET_P50_MS = 2.0
PASSES = 3
ACCESS = Access("team-a", frozenset({"eu"}), ("company",))
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "kb"
QUESTIONS = [
    "How many days of annual leave do I get?",
    "How many vacation days per year?",
    "I lost my laptop on the train, what now?",
    "What's the hotel limit in Paris?",
    "Can I expense a parking ticket?",
    "How do I connect to internal tools from home?",
    "Can I work from Portugal for a month?",
    "Is SMS allowed for two-factor login?",
    "When is salary paid?",
    "What is the capital of France?",
]
FILLER = (
    "The employee asks the manager for approval of the travel request within five working "
    "days; receipts for every expense above ten euros are uploaded to the expense tool. "
) * 5


@dataclass
class Row:
    """One line of the printed table."""

    store: str
    chunks: int
    upsert_per_s: float | None = None
    index_s: float | None = None
    total_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    recall: float | None = None
    note: str = ""


def clustered(n: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    centers = rng.standard_normal((max(1, n // 50), DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    vectors = centers[rng.integers(0, len(centers), n)]
    vectors += 0.06 * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def payloads(n: int, rng: np.random.Generator) -> tuple[list[dict[str, Any]], npt.NDArray[Any]]:
    """Payloads, and which of them ``ACCESS`` may see (for exact recall)."""
    teams_pick = rng.choice(["*", "team-a", "team-b"], size=n, p=[0.6, 0.2, 0.2])
    eu = rng.random(n) < 0.1
    other_kb = rng.random(n) < 0.1
    text = FILLER[:600]
    rows = [
        {
            "kb": "other" if other_kb[i] else "company",
            "source": f"docs/file-{i // 20}.md",
            "kind": "faq" if i % 10 == 0 else "passage",
            "title": f"Document {i // 20}",
            "section": f"Section {i % 20}",
            "text": text,
            "teams": [str(teams_pick[i])],
            "residency": ["eu"] if eu[i] else [],
            "version": f"{i:016x}",
        }
        for i in range(n)
    ]
    visible = (teams_pick != "team-b") & ~other_kb
    return rows, visible


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def bench_store(engine: str, path: Path) -> KnowledgeStore:
    if engine == "local-memory":  # the same search code as qdrant-local, without its SQLite
        from qdrant_client import AsyncQdrantClient

        client = AsyncQdrantClient(location=":memory:")
        return ClientStore("bench", client, description="local mode in memory", indexes=False)
    return open_store(collection="bench", url=None, path=path, engine=engine)


async def scale(engine: str, n: int, queries: int, root: Path, passes: int = PASSES) -> Row:
    rng = np.random.default_rng(n)
    vectors = clustered(n, rng)
    rows, visible = payloads(n, rng)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    store = bench_store(engine, root / f"{engine}-{n}")
    try:
        await store.create(DIM)
        started = time.perf_counter()
        for start in range(0, n, 1000):
            batch = [
                Point(ids[i], vectors[i].tolist(), rows[i])
                for i in range(start, min(n, start + 1000))
            ]
            await store.upsert(batch)
        upsert_s = time.perf_counter() - started
        started = time.perf_counter()
        await store.finish()
        index_s = time.perf_counter() - started
        picks = rng.choice(n, queries, replace=False)
        asked = vectors[picks] + 0.04 * rng.standard_normal((queries, DIM)).astype(np.float32)
        asked /= np.linalg.norm(asked, axis=1, keepdims=True)
        where = access_filter(ACCESS)
        for q in asked[: min(50, queries)]:  # warm-up: page cache, thread pool
            await store.search(q.tolist(), where, TOP_K, 0.0)
        position = {cid: i for i, cid in enumerate(ids)}
        recalls = []
        for q in asked:
            hits = await store.search(q.tolist(), where, TOP_K, 0.0)
            exact = set(np.argsort(-np.where(visible, vectors @ q, -9.0))[:TOP_K].tolist())
            recalls.append(len(exact & {position[h.id] for h in hits}) / TOP_K)
        # Timed passes, the best one kept: on a shared machine other processes only ever add
        # latency (as timeit takes the minimum).
        best: list[float] = []
        for _ in range(passes):
            latencies = []
            for q in asked:
                t = time.perf_counter()
                await store.search(q.tolist(), where, TOP_K, 0.0)
                latencies.append((time.perf_counter() - t) * 1000)
            if not best or statistics.median(latencies) < statistics.median(best):
                best = latencies
        return Row(
            engine,
            n,
            upsert_per_s=n / upsert_s,
            index_s=index_s,
            total_per_s=n / (upsert_s + index_s),
            p50_ms=statistics.median(best),
            p99_ms=percentile(best, 99),
            recall=statistics.fmean(recalls),
        )
    finally:
        await store.close()


async def real(engine: str, root: Path, embedder: Any) -> tuple[Row, float]:
    """The sample knowledge base with the real model; returns the row and embed ms per query."""
    store = open_store(collection="real", url=None, path=root / f"real-{engine}", engine=engine)
    try:
        started = time.perf_counter()
        result = await ingest(
            [EXAMPLES / "policies"], store=store, embedder=embedder, kb="company", teams=["*"],
            root=EXAMPLES,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        vectors = [(await embedder.embed(q)).tolist() for q in QUESTIONS]
        embed_ms = (time.perf_counter() - started) * 1000 / len(QUESTIONS)
        where = access_filter(Access("support", None, ("company",)))
        for v in vectors:
            await store.search(v, where, TOP_K, 0.0)
        latencies = []
        for _ in range(20):
            for v in vectors:
                t = time.perf_counter()
                await store.search(v, where, TOP_K, 0.0)
                latencies.append((time.perf_counter() - t) * 1000)
        row = Row(
            engine,
            result.chunks,
            total_per_s=result.chunks / seconds,
            p50_ms=statistics.median(latencies),
            p99_ms=percentile(latencies, 99),
            note="real model; chunks/s includes parsing and embedding",
        )
        return row, embed_ms
    finally:
        await store.close()


def render(rows: list[Row]) -> str:
    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = (
        f"{'store':<13}{'chunks':>8}{'upsert/s':>11}{'index s':>9}{'total/s':>10}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'recall@4':>10}  note"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.store:<13}{r.chunks:>8}{cell(r.upsert_per_s, ',.0f'):>11}"
            f"{cell(r.index_s, '.1f'):>9}{cell(r.total_per_s, ',.0f'):>10}"
            f"{cell(r.p50_ms, '.3f'):>9}{cell(r.p99_ms, '.3f'):>9}{cell(r.recall, '.3f'):>10}"
            f"  {r.note}"
        )
    return "\n".join(lines)


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.knowledge", description=__doc__)
    parser.add_argument("--sizes", default="10000,100000", help="scale test sizes (edge)")
    parser.add_argument(
        "--local-sizes", default="10000", help="sizes for qdrant-local (slow: SQLite per point)"
    )
    parser.add_argument(
        "--memory-sizes", default="100000", help="sizes for qdrant-local's search, in memory"
    )
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--no-real", action="store_true", help="skip the real-model test")
    answers = parser.add_argument_group("curated answers (bench/knowledge_answers.py)")
    answers.add_argument("--answers", action="store_true", help="run the evaluation set")
    answers.add_argument("--calibrate", action="store_true", help="calibrate on the dev split")
    answers.add_argument(
        "--verifier",
        default="none,fake,noisy:0.05/0.10,noisy:0.02/0.20",
        help="none, fake (perfect: an upper bound), noisy:FY/FN (false yes/no rates), local",
    )
    answers.add_argument("--seed", type=int, default=0, help="the noisy verifiers' draws")
    answers.add_argument("--max-error-rate", type=float, default=0.01)
    answers.add_argument("--verify-timeout", type=float, default=0.8, help="seconds")
    answers.add_argument("--calibration", help="a kb calibration as JSON (default: built in)")
    answers.add_argument(
        "--split",
        choices=("eval", "dev"),
        default="eval",
        help="the questions --answers runs (dev: in-sample, for tuning; eval: the report)",
    )
    args = parser.parse_args(argv)
    if args.answers or args.calibrate:
        from bench import knowledge_answers

        return await knowledge_answers.main(args)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-knowledge-") as tmp:
        root = Path(tmp)
        plan = {
            "edge": sizes,
            "qdrant-local": [int(s) for s in args.local_sizes.split(",") if s],
            "local-memory": [int(s) for s in args.memory_sizes.split(",") if s],
        }
        for n in sorted({n for ns in plan.values() for n in ns}):
            for engine, engine_sizes in plan.items():
                if n not in engine_sizes:
                    continue
                print(f"... {engine} at {n:,} chunks", file=sys.stderr, flush=True)
                if engine == "edge":
                    rows.append(await scale(engine, n, min(args.queries, n), root))
                    continue
                # Local mode evaluates the filter point by point in Python (~0.3 s a query at
                # 10k): a few queries, one pass.
                with warnings.catch_warnings():  # "not recommended for more than 20,000 points"
                    warnings.simplefilter("ignore", UserWarning)
                    row = await scale(engine, n, min(args.queries, 20), root, passes=1)
                if engine == "local-memory":
                    row.note = "qdrant-local's search without its SQLite: ingestion not comparable"
                rows.append(row)
        embed_ms = None
        if not args.no_real:
            from cache.embedder import SentenceEmbedder

            embedder = SentenceEmbedder()
            try:
                for engine in ("edge", "qdrant-local"):
                    print(f"... {engine}, real model", file=sys.stderr, flush=True)
                    row, embed_ms = await real(engine, root, embedder)
                    rows.append(row)
            finally:
                await embedder.close()
    print(render(rows))
    if embed_ms is not None:
        print(f"\nquery embedding (all-MiniLM-L6-v2, one at a time): {embed_ms:.1f} ms per query")
    at_scale = [r for r in rows if r.store == "edge" and r.chunks == 100_000 and r.p50_ms]
    for r in at_scale:
        verdict = "met" if r.p50_ms is not None and r.p50_ms <= TARGET_P50_MS else "MISSED"
        print(f"target: p50 <= {TARGET_P50_MS} ms at 100k embedded: {r.p50_ms:.3f} ms, {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
