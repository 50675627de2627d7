"""Embedding backends side by side: torch (sentence-transformers), ONNX fp32, ONNX int8.

For each backend: load time (imports included: a cold start); single-query latency p50/p99 for a
short and a ~60-token query, as a bare ``encode`` and through the micro-batching worker
(``embed``, at the default ``max_wait_s`` of 2 ms and at 0); ``encode`` throughput for batches of
1, 8 and 32; throughput with 64 concurrent ``embed`` calls; fidelity to sentence-transformers fp32
(cosine over real banking77 queries); whether a text's vector depends on the batch it is in; and,
what matters for a cache, how often a query's nearest neighbour in a 2,000-query index (banking77
train) or the hit decision at the default 0.9 threshold differs from the fp32 reference.

The data is read in place from ``../shared/benchmarks/data/cache/banking77`` (relative to the
repository root). ONNX exports are cached under ``--data-dir`` (default ``./data``, as the
gateway does). Each backend runs in its own process, one after the other (in one process the
thread pools of torch and onnxruntime slow each other down), in ``--rounds`` rounds; each speed
figure is the best round's, as load from other processes only ever slows a run down. Run from
the repository root::

    python -m bench.embedder [--rounds 3] [--samples 300] [--seconds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cache.embedder import BatchingEmbedder, bundled_model_path

REPO = Path(__file__).resolve().parents[1]
DATASET = REPO.parent / "shared" / "benchmarks" / "data" / "cache" / "banking77"
KINDS = ("torch", "onnx", "onnx-int8")  # cache.embedders.EMBEDDER_KINDS, without its imports
REFERENCE = "torch"
SHORT_QUERY = "How do I locate my card?"
LONG_TOKENS = 60
CONCURRENCY = 64
BATCH_SIZES = (1, 8, 32)
WAITS_S = (0.002, 0.0)  # the default max_wait_s, and none
THRESHOLD = 0.9  # gateway.caching.ThresholdDecider's default
WARMUP = 10
# torch backend: torch, transformers, sentence_transformers, tokenizers. ONNX at run time:
# onnxruntime, tokenizers. ONNX export (once): torch, transformers, onnx.
INSTALLED = ("torch", "transformers", "sentence_transformers", "tokenizers", "onnxruntime", "onnx")

Matrix = npt.NDArray[np.float32]
Row = tuple[str, dict[str, str]]


# -- workload -------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def workload(args: argparse.Namespace) -> dict[str, Any]:
    """The texts every backend embeds: the same for all, fixed by seeds."""
    test = read_rows(args.dataset / "test.csv")
    train = read_rows(args.dataset / "train.csv")
    queries = random.Random(0).sample(test, args.queries)
    index = random.Random(1).sample(train, args.index)
    long_text, long_count = long_query(random.Random(2).sample([t for t, _ in test], 40))
    return {
        "queries": [t for t, _ in queries],
        "query_intents": [c for _, c in queries],
        "index": [t for t, _ in index],
        "index_intents": [c for _, c in index],
        "long": long_text,
        "long_tokens": long_count,
    }


def long_query(texts: Sequence[str]) -> tuple[str, int]:
    """Real queries joined until at least ``LONG_TOKENS`` tokens long (with [CLS] and [SEP])."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_model_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    parts: list[str] = []
    for text in texts:
        parts.append(text)
        count = len(tokenizer.encode(" ".join(parts)).ids)
        if count >= LONG_TOKENS:
            return " ".join(parts), count
    raise ValueError("not enough text for the long query")


# -- one backend, in its own process --------------------------------------------------------------


def percentiles_ms(samples: Sequence[float]) -> list[float]:
    ms = np.asarray(samples) * 1e3
    return [float(np.percentile(ms, 50)), float(np.percentile(ms, 99))]


def encode_latency(embedder: BatchingEmbedder, texts: Sequence[str], samples: int) -> list[float]:
    """p50/p99 of ``encode([text])``, cycling through ``texts``."""
    times = []
    for i in range(samples + WARMUP):  # first runs allocate and pick kernels
        text = texts[i % len(texts)]
        start = time.perf_counter()
        embedder.encode([text])
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return percentiles_ms(times)


async def embed_latency(embedder: BatchingEmbedder, text: str, samples: int) -> list[float]:
    times = []
    for i in range(samples + WARMUP):
        start = time.perf_counter()
        await embedder.embed(text)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return percentiles_ms(times)


def encode_throughput(
    embedder: BatchingEmbedder, texts: Sequence[str], batch: int, seconds: float
) -> float:
    embedder.encode(texts[:batch])
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        embedder.encode([texts[(done + j) % len(texts)] for j in range(batch)])
        done += batch
    return done / elapsed


async def concurrent_throughput(
    embedder: BatchingEmbedder, texts: Sequence[str], seconds: float
) -> tuple[float, float]:
    """Texts/s with ``CONCURRENCY`` simultaneous ``embed`` calls, and the mean batch size."""
    await asyncio.gather(*(embedder.embed(t) for t in texts[:CONCURRENCY]))
    batches, embedded = embedder.batches, embedder.texts
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        chunk = [texts[(done + j) % len(texts)] for j in range(CONCURRENCY)]
        await asyncio.gather(*(embedder.embed(t) for t in chunk))
        done += CONCURRENCY
    return done / elapsed, (embedder.texts - embedded) / max(embedder.batches - batches, 1)


async def measure(kind: str, args: argparse.Namespace, work: dict[str, Any], out: Path) -> None:
    """Figures for one backend to ``out/<kind>.json``, its vectors to ``out/<kind>.npz``."""
    start = time.perf_counter()
    from cache.embedders import make_embedder  # imports torch or onnxruntime: part of loading

    embedder = make_embedder(kind, args.data_dir, threads=args.threads)
    figures: dict[str, Any] = {"load_s": time.perf_counter() - start}
    try:
        figures["latency:encode_short"] = encode_latency(embedder, [SHORT_QUERY], args.samples)
        figures["latency:encode_long"] = encode_latency(embedder, [work["long"]], args.samples)
        figures["latency:encode_real"] = encode_latency(embedder, work["queries"], args.samples)
        for wait in WAITS_S:
            embedder.max_wait_s = wait
            figures[f"latency:embed_short@{wait}"] = await embed_latency(
                embedder, SHORT_QUERY, args.samples
            )
        for batch in BATCH_SIZES:
            figures[f"rate:encode_batch_{batch}"] = encode_throughput(
                embedder, work["queries"], batch, args.seconds
            )
        for wait in WAITS_S:
            embedder.max_wait_s = wait
            figures[f"rate:concurrent@{wait}"] = await concurrent_throughput(
                embedder, work["queries"], args.seconds
            )
        if args.vectors:
            np.savez(
                out / f"{kind}.npz",
                queries=embedder.encode(work["queries"]),
                index=embedder.encode(work["index"]),
                # The same texts one at a time: does a text's vector depend on its batch?
                alone=np.stack([embedder.encode([t])[0] for t in work["queries"][:64]]),
            )
    finally:
        await embedder.close()
    (out / f"{kind}.json").write_text(json.dumps(figures), encoding="utf-8")


# -- the comparison -------------------------------------------------------------------------------


def cosines(a: Matrix, b: Matrix) -> npt.NDArray[np.float32]:
    return np.asarray((a * b).sum(axis=1), dtype=np.float32)


def package_mb(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return "-"
    root = Path(next(iter(spec.submodule_search_locations)))
    return f"{sum(p.stat().st_size for p in root.rglob('*') if p.is_file()) / 1e6:.0f} MB"


def best_of(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each figure from its best round: noise from other processes only ever slows a run down."""
    best: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        if key.startswith("latency:"):  # the [p50, p99] pair of the round with the lowest p50
            best[key] = min(values, key=lambda pair: pair[0])
        elif key.startswith("rate:"):  # [texts/s, ...] of the fastest round
            best[key] = max(values, key=lambda v: np.atleast_1d(v)[0])
        else:
            best[key] = min(values)
    return best


def speed_rows(figures: dict[str, dict[str, Any]], export_s: float) -> list[Row]:
    def each(key: str, fmt: str) -> dict[str, str]:
        return {k: fmt.format(*np.atleast_1d(f[key])) for k, f in figures.items()}

    ms = "{:.2f} / {:.2f}"
    export = f"{export_s:.1f}" if export_s > 0.5 else "cached"
    rows: list[Row] = [
        ("load, imports included (s)", each("load_s", "{:.2f}")),
        ("one-off export + quantise (s)", {k: export for k in KINDS[1:]}),
        ("latency p50 / p99 (ms)", {}),
        ("  encode, short query", each("latency:encode_short", ms)),
        (f"  encode, {LONG_TOKENS}+ token query", each("latency:encode_long", ms)),
        ("  encode, banking77 test queries", each("latency:encode_real", ms)),
    ]
    rows += [
        (f"  embed, short, wait {w * 1e3:g} ms", each(f"latency:embed_short@{w}", ms))
        for w in WAITS_S
    ]
    rows.append(("throughput (texts/s)", {}))
    rows += [
        (f"  encode, batch {b}", each(f"rate:encode_batch_{b}", "{:.0f}")) for b in BATCH_SIZES
    ]
    for wait in WAITS_S:
        rows.append(
            (
                f"  {CONCURRENCY} concurrent embed, wait {wait * 1e3:g} ms",
                each(f"rate:concurrent@{wait}", "{:.0f}"),
            )
        )
        rows.append(("    mean batch", each(f"rate:concurrent@{wait}", "{1:.1f}")))
    return rows


def quality_rows(vectors: dict[str, dict[str, Matrix]], work: dict[str, Any]) -> list[Row]:
    ref = vectors[REFERENCE]
    cos = {k: cosines(v["queries"], ref["queries"]) for k, v in vectors.items()}
    alone = {k: cosines(v["alone"], v["queries"][:64]).min() for k, v in vectors.items()}
    norm = {k: np.abs(np.linalg.norm(v["queries"], axis=1) - 1).max() for k, v in vectors.items()}
    sims = {k: v["queries"] @ v["index"].T for k, v in vectors.items()}
    nearest = {k: s.argmax(axis=1) for k, s in sims.items()}
    top = {k: s.max(axis=1) for k, s in sims.items()}
    ref_hit = top[REFERENCE] >= THRESHOLD
    intents = np.array(work["index_intents"])
    truth = np.array(work["query_intents"])
    rows: list[Row] = [
        (f"fidelity to sentence-transformers fp32, {len(truth)} queries", {}),
        ("  cosine min", {k: f"{v.min():.5f}" for k, v in cos.items()}),
        ("  cosine mean", {k: f"{v.mean():.5f}" for k, v in cos.items()}),
        ("  max | |v| - 1 |", {k: f"{v:.1e}" for k, v in norm.items()}),
        ("  min cosine, text alone vs in a batch", {k: f"{v:.5f}" for k, v in alone.items()}),
        (f"nearest neighbour in a {len(intents)}-query index", {}),
        (
            "  NN differs from fp32 (%)",
            {k: f"{100 * (v != nearest[REFERENCE]).mean():.1f}" for k, v in nearest.items()},
        ),
        (
            f"  hit at {THRESHOLD} differs (%)",
            {k: f"{100 * ((v >= THRESHOLD) != ref_hit).mean():.1f}" for k, v in top.items()},
        ),
        (
            "  max |top-1 score - fp32|",
            {k: f"{np.abs(v - top[REFERENCE]).max():.4f}" for k, v in top.items()},
        ),
        (
            "  NN has the query's intent (%)",
            {k: f"{100 * (intents[v] == truth).mean():.1f}" for k, v in nearest.items()},
        ),
    ]
    if "onnx-int8" in vectors:
        mixed = (vectors["onnx-int8"]["queries"] @ ref["index"].T).argmax(axis=1)
        rows.append(
            (
                "  int8 queries, fp32 index: NN differs (%)",
                {"onnx-int8": f"{100 * (mixed != nearest[REFERENCE]).mean():.1f}"},
            )
        )
    return rows


def print_table(rows: Sequence[Row]) -> None:
    label_w = max(len(label) for label, _ in rows)
    widths = {k: max(len(k), *(len(cells.get(k, "")) for _, cells in rows)) for k in KINDS}
    header = " " * label_w + " | " + " | ".join(k.rjust(widths[k]) for k in KINDS)
    print(header)
    print("-" * len(header))
    for label, cells in rows:
        cols = " | ".join(cells.get(k, "").rjust(widths[k]) for k in KINDS)
        print(f"{label.ljust(label_w)} | {cols}" if cells else label)


def compare(args: argparse.Namespace) -> None:
    from cache.onnx_embedder import export_onnx

    work = workload(args)
    print(f"# bench.embedder: {platform.machine()}, {os.cpu_count()} CPUs, threads {args.threads}")
    print(f"# speed: best of {args.rounds} rounds, each backend in its own process")
    print(f"# load average at start: {os.getloadavg()[0]:.2f} (other processes skew the figures)")
    print(
        f"# long query: {work['long_tokens']} tokens; {args.queries} test queries; "
        f"index: {args.index} train queries"
    )
    start = time.perf_counter()
    export_onnx(bundled_model_path(), args.data_dir / "models" / "all-MiniLM-L6-v2.onnx", True)
    export_s = time.perf_counter() - start  # ~0 when the export was cached by an earlier run
    with tempfile.TemporaryDirectory(prefix="bench-embedder-") as tmp:
        out = Path(tmp)
        (out / "work.json").write_text(json.dumps(work), encoding="utf-8")
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for round_ in range(args.rounds):
            for kind in KINDS[round_ % len(KINDS) :] + KINDS[: round_ % len(KINDS)]:
                command = [sys.executable, "-m", "bench.embedder", "--backend", kind, "--out", tmp]
                if round_ == 0:
                    command.append("--vectors")
                subprocess.run([*command, *_passthrough(args)], check=True, cwd=REPO)
                runs[kind].append(json.loads((out / f"{kind}.json").read_text(encoding="utf-8")))
        figures = {kind: best_of(results) for kind, results in runs.items()}
        vectors = {}
        for kind in KINDS:
            with np.load(out / f"{kind}.npz") as data:
                vectors[kind] = {name: data[name] for name in data.files}
    print()
    print_table([*speed_rows(figures, export_s), *quality_rows(vectors, work)])
    print("\n# onnx-int8 runs one text per forward pass (make_embedder: batch-invariant vectors),")
    print("# so its batch and concurrent figures are sequential passes.")
    print("# installed: " + ", ".join(f"{name} {package_mb(name)}" for name in INSTALLED))
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")


def _passthrough(args: argparse.Namespace) -> list[str]:
    flags = ["--data-dir", str(args.data_dir), "--samples", str(args.samples)]
    flags += ["--seconds", str(args.seconds)]
    return flags + (["--threads", str(args.threads)] if args.threads else [])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=DATASET, help="banking77 CSV directory")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="exports: DIR/models")
    parser.add_argument("--queries", type=int, default=500, help="test queries: fidelity and NN")
    parser.add_argument("--index", type=int, default=2000, help="train queries in the NN index")
    parser.add_argument("--samples", type=int, default=300, help="latency samples per figure")
    parser.add_argument("--seconds", type=float, default=2.0, help="per throughput figure")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (cores)")
    parser.add_argument("--rounds", type=int, default=3, help="speed figures: best of N rounds")
    parser.add_argument("--backend", choices=KINDS, help=argparse.SUPPRESS)  # worker process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vectors", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backend:
        work = json.loads((args.out / "work.json").read_text(encoding="utf-8"))
        asyncio.run(measure(args.backend, args, work, args.out))
    else:
        compare(args)


if __name__ == "__main__":
    main()
