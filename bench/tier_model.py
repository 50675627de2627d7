"""What a deployed tier model costs a request, and what it ranks like: ``gateway router train``'s
stacks side by side on RouteLLM's MMLU and GSM8K.

    python -m bench.tier_model [--only mmlu,gsm8k] [--stacks full,serving] [--reuse-model]
                               [--limit N] [--train-limit N]

For each dataset, the split of ``bench.router`` (seed 0; the data is read from
../shared/benchmarks and never copied), each stack trained on the whole TRAIN half by
``gateway router train --stack STACK`` (``--threads 1``; embeddings cached in ``--work``/emb.npz,
shared with ``bench.router_live``, whose model files these are), then for each model file:

- its out-of-fold APGR on TRAIN (what ``router train`` prints) and its APGR on the held-out half;
- the held-out quality, as a share of always-frontier's, when its scores send the top ``--share``
  (default: 0.45 MMLU, 0.55 GSM8K) of prompts to the frontier: the offline ranking the live
  route is held to;
- the file's size and load time, and one prompt's score (``TierModel.score``, the prompt's
  features and embedding given): p50/p99 over ``--timed`` held-out prompts, three passes, and
  each member's own p50.

The host load (``os.getloadavg``) is printed beside the timings: compare stacks within one run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.router import _routellm_rows, _split
from bench.router_live import SHARES, add_data_arguments, ranked_quality, train
from gateway.cli.router import embed_prompts
from gateway.core.background import single_thread_blas
from gateway.tiering.deployed import Query, TierModel
from gateway.tiering.features import feature_matrix
from gateway.tiering.metrics import apgr


def percentiles(timings: list[float]) -> tuple[float, float]:
    timings = sorted(timings)
    return statistics.median(timings), timings[int(0.99 * (len(timings) - 1))]


def measure(
    path: Path, test: list[dict[str, Any]], vectors: np.ndarray, share: float, timed: int
) -> None:
    started = time.perf_counter()
    model = TierModel.load(path, "all-MiniLM-L6-v2", 384)
    load_ms = (time.perf_counter() - started) * 1000
    texts = [r["prompt"] for r in test]
    feats = feature_matrix(texts)
    scores = np.array([model.score(*row) for row in zip(texts, vectors, feats, strict=True)])
    cheap = np.array([r["quality"]["cheap"] for r in test])
    frontier = np.array([r["quality"]["frontier"] for r in test])
    ranked = ranked_quality(scores, test, share)
    oof = model.meta["oof_apgr"].get("stack (weights chosen on these)", float("nan"))
    timings: list[float] = []
    members: list[list[float]] = [[] for _ in model._members]
    for _ in range(3):
        for text, vector, feat in zip(texts[:timed], vectors[:timed], feats[:timed], strict=True):
            t0 = time.perf_counter()
            model.score(text, vector, feat)
            timings.append((time.perf_counter() - t0) * 1000)
            query = Query(text, vector, feat)
            for spent, (_, _, _, scorer) in zip(members, model._members, strict=True):
                t0 = time.perf_counter()
                scorer(query)
                spent.append((time.perf_counter() - t0) * 1000)
    p50, p99 = percentiles(timings)
    print(
        f"{model.meta['training'].get('stack', 'full'):<8} {model.meta['name']}\n"
        f"         out-of-fold APGR {oof:.3f}, held-out APGR {apgr(scores, cheap, frontier):.3f}; "
        f"top {share:.0%} to the frontier: {ranked:.4f} = {ranked / frontier.mean():.1%} of "
        f"always-frontier\n"
        f"         {path.stat().st_size / 1e6:.1f} MB, loads in {load_ms:.0f} ms; score p50 "
        f"{p50:.2f} ms, p99 {p99:.2f} ms (load {os.getloadavg()[0]:.1f}); members' p50: "
        + ", ".join(
            f"{m['kind']} {statistics.median(t):.3f}"
            for m, t in zip(model.meta["members"], members, strict=True)
        ),
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--stacks", default="full,serving")
    parser.add_argument("--share", type=float, help="default 0.45 MMLU, 0.55 GSM8K")
    parser.add_argument("--limit", type=int, help="a seeded random subset of the held-out half")
    parser.add_argument("--train-limit", type=int, help="a seeded random subset of TRAIN")
    parser.add_argument("--timed", type=int, default=300, help="held-out prompts timed")
    parser.add_argument(
        "--reuse-model", action="store_true", help="keep models trained by an earlier run"
    )
    args = parser.parse_args(argv)
    single_thread_blas()  # as `gateway serve` runs: BLAS threads waiting on busy cores cost ms
    for name in args.only.split(","):
        train_rows, test = _split(_routellm_rows(args.data, name), args.seed)
        # The seeded subsets of bench.router_live (so the two share model files).
        if args.train_limit and args.train_limit < len(train_rows):
            train_rows = random.Random(args.seed).sample(train_rows, args.train_limit)
        if args.limit and args.limit < len(test):
            test = random.Random(args.seed).sample(test, args.limit)
        vectors = embed_prompts([r["prompt"] for r in test], "torch", args.work / "emb.npz")
        share = args.share if args.share is not None else SHARES[name]
        frontier = np.mean([r["quality"]["frontier"] for r in test])
        print(
            f"== {name}: {len(train_rows)} TRAIN prompts, {len(test)} held out; "
            f"always-frontier {frontier:.4f}",
            flush=True,
        )
        for stack in args.stacks.split(","):
            path, took = train(args.work, name, train_rows, args.reuse_model, stack)
            if took:
                print(f"{stack}: trained in {took:.0f} s", flush=True)
            measure(path, test, vectors, share, args.timed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
