"""``gateway router replay``: learn a tier router from one file of outcomes, score another.

    gateway router replay --train TRAIN.jsonl --score TEST.jsonl --out SCORES.jsonl
                          [--cheap KEY --frontier KEY] [--report] [--embedding-cache FILE]

TRAIN lines: ``{"prompt": "...", "quality": {"cheap": 0..1, "frontier": 0..1}}`` (an optional
``"cost"`` object with the same keys). TEST lines: ``{"prompt": "..."}``; other keys are ignored
for scoring. SCORES: one ``{"prompt", "frontier_score"}`` line per TEST line, in order; higher
means the frontier model is more worth it. Only TRAIN is learnt from (the models' weights are
chosen on their out-of-fold predictions on TRAIN). ``--report`` prints RouteLLM's APGR and
CPT(50 %), CPT(80 %) for the router, a random router and a prompt-length router when TEST lines
carry ``quality``, and the cost of reaching 95 % of the frontier's quality when they carry
``cost``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.tiering.metrics import Array, apgr, cost_to_reach, cpt, random_figures
from gateway.tiering.model import Prompts, select_gain_model


class ReplayError(Exception):
    """A replay input that cannot be used; the message names the file and line."""


@dataclass
class Rows:
    prompts: list[str] = field(default_factory=list)
    quality: dict[str, list[float]] = field(default_factory=dict)  # tier -> per row
    cost: dict[str, list[float]] = field(default_factory=dict)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The TRAIN file and its tier keys, as ``router replay`` and ``router train`` read them."""
    parser.add_argument("--train", type=Path, required=True, help="JSONL with quality per tier")
    parser.add_argument("--cheap", default="cheap", help="the cheap tier's key (default cheap)")
    parser.add_argument(
        "--frontier", default="frontier", help="the frontier tier's key (default frontier)"
    )


def add_parser(commands: Any) -> Any:
    """The ``router`` command with ``replay``; returns its sub-command parsers."""
    router = commands.add_parser("router", help="tier router: replay, train, history")
    actions = router.add_subparsers(dest="router_command", required=True)
    replay = actions.add_parser(
        "replay",
        help="learn from TRAIN outcomes, score TEST prompts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(replay)
    replay.add_argument("--score", type=Path, required=True, help="JSONL prompts to score")
    replay.add_argument("--out", type=Path, required=True, help="JSONL scores, in TEST order")
    replay.add_argument("--report", action="store_true", help="print APGR and CPT on TEST")
    replay.add_argument(
        "--embedder",
        default=os.environ.get("GATEWAY_EMBEDDER", "torch"),
        help="torch, onnx or onnx-int8 (default: GATEWAY_EMBEDDER or torch)",
    )
    replay.add_argument(
        "--embedding-cache", type=Path, help="an .npz file keeping prompt embeddings across runs"
    )
    replay.add_argument("--folds", type=int, default=5, help="cross-validation folds on TRAIN")
    replay.add_argument("--seed", type=int, default=0)
    return actions


def run(args: argparse.Namespace) -> int:
    try:
        return _replay(args)
    except ReplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def read_rows(path: Path, tiers: Sequence[str], *, require_quality: bool) -> Rows:
    """Prompts (and, where present on every line, the tiers' quality and cost) of a JSONL file."""
    rows = Rows()
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror}") from exc
    quality: dict[str, list[float]] = {t: [] for t in tiers}
    cost: dict[str, list[float]] = {t: [] for t in tiers}
    has_quality = has_cost = True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ReplayError(f"{where}: not JSON: {exc}") from exc
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ReplayError(f"{where}: expected an object with a string 'prompt'")
        rows.prompts.append(item["prompt"])
        has_quality = has_quality and _take(item.get("quality"), tiers, quality, where)
        has_cost = has_cost and _take(item.get("cost"), tiers, cost, where)
        if require_quality and not has_quality:
            raise ReplayError(f"{where}: expected 'quality' with numbers for {' and '.join(tiers)}")
    if has_quality and rows.prompts:
        rows.quality = quality
    if has_cost and rows.prompts:
        rows.cost = cost
    return rows


def _take(obj: Any, tiers: Sequence[str], into: dict[str, list[float]], where: str) -> bool:
    if not isinstance(obj, dict):
        return False
    values = []
    for tier in tiers:
        value = obj.get(tier)
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return False
        values.append(float(value))
    for tier, value in zip(tiers, values, strict=True):
        into[tier].append(value)
    return True


def embed_prompts(
    texts: list[str], embedder: str, cache: Path | None
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Embeddings of ``texts`` by ``embedder`` (torch, onnx or onnx-int8), kept in the ``cache``
    file; the model loads only if the cache lacks some of them."""
    import asyncio

    from cache.embedder import BUNDLED_MODEL_NAME, BatchingEmbedder
    from cache.embedders import make_embedder
    from gateway.tiering.embeddings import embed_cached

    loaded: list[BatchingEmbedder] = []

    def encode(batch: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        if not loaded:
            data_dir = Path(os.environ.get("GATEWAY_DATA_DIR", "data"))
            loaded.append(make_embedder(embedder, data_dir))
        return loaded[0].encode(batch)

    # The same name the embedder will report: int8 vectors differ, so they are cached apart.
    name = BUNDLED_MODEL_NAME + ("-int8" if embedder == "onnx-int8" else "")
    try:
        return embed_cached(texts, encode, name, cache)
    finally:
        for model in loaded:
            asyncio.run(model.close())


def _replay(args: argparse.Namespace) -> int:
    tiers = (args.cheap, args.frontier)
    train = read_rows(args.train, tiers, require_quality=True)
    test = read_rows(args.score, tiers, require_quality=False)
    if not train.prompts:
        raise ReplayError(f"{args.train}: no training lines")
    started = time.perf_counter()
    vectors = embed_prompts(train.prompts + test.prompts, args.embedder, args.embedding_cache)
    n = len(train.prompts)
    x_train, x_test = Prompts.of(train.prompts, vectors[:n]), Prompts.of(test.prompts, vectors[n:])
    cheap = np.array(train.quality[args.cheap])
    frontier = np.array(train.quality[args.frontier])
    selection = select_gain_model(x_train, cheap, frontier, folds=args.folds, seed=args.seed)
    scores = selection.model.predict(x_test) if test.prompts else np.zeros(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("wb") as out:
        for prompt, score in zip(test.prompts, scores, strict=True):
            out.write(orjson.dumps({"prompt": prompt, "frontier_score": round(float(score), 6)}))
            out.write(b"\n")
    elapsed = time.perf_counter() - started
    print(
        f"scored {len(test.prompts)} prompts with {selection.model.name}, learnt from {n} "
        f"({elapsed:.1f} s); wrote {args.out}",
        file=sys.stderr,
    )
    if args.report:
        if selection.cv:
            cv = ", ".join(f"{name} {value:.3f}" for name, value in selection.cv.items())
            print(f"{args.folds}-fold out-of-fold APGR on TRAIN: {cv}")
        print(f"model: {selection.model.name}")
        if not test.quality:
            print(f"no report: {args.score} lines lack quality for {' and '.join(tiers)}")
            return 0
        print_report(
            test.prompts,
            scores,
            test.quality[args.cheap],
            test.quality[args.frontier],
            test.cost.get(args.cheap),
            test.cost.get(args.frontier),
        )
    return 0


def report_rows(
    prompts: Sequence[str], scores: Array, weak_q: Sequence[float], strong_q: Sequence[float]
) -> dict[str, tuple[float, float, float]]:
    """Router, random and prompt-length (APGR, CPT(50 %), CPT(80 %))."""
    weak, strong = np.array(weak_q), np.array(strong_q)
    lengths = np.array([len(p) for p in prompts], dtype=np.float64)

    def figures(s: Array) -> tuple[float, float, float]:
        return apgr(s, weak, strong), cpt(s, weak, strong, 0.5), cpt(s, weak, strong, 0.8)

    return {
        "router": figures(scores),
        "random": random_figures(weak, strong),
        "prompt length": figures(lengths),
    }


def print_report(
    prompts: Sequence[str],
    scores: Array,
    weak_q: Sequence[float],
    strong_q: Sequence[float],
    weak_cost: Sequence[float] | None,
    strong_cost: Sequence[float] | None,
) -> None:
    weak, strong = np.array(weak_q), np.array(strong_q)
    print(
        f"TEST: {len(prompts)} prompts; cheap quality {weak.mean():.4f}, "
        f"frontier quality {strong.mean():.4f}"
    )
    for name, (area, cpt50, cpt80) in report_rows(prompts, scores, weak_q, strong_q).items():
        print(f"{name:<14} APGR {area:.3f}  CPT(50%) {_pct(cpt50)}  CPT(80%) {_pct(cpt80)}")
    if weak_cost is None or strong_cost is None:
        return
    wc, sc = np.array(weak_cost), np.array(strong_cost)
    target = 0.95 * float(strong.mean())
    cost, share = cost_to_reach(scores, weak, strong, wc, sc, target)
    random_cost, _ = cost_to_reach(np.zeros(len(weak)), weak, strong, wc, sc, target)
    print(
        f"cost to reach 95% of frontier quality ({target:.4f}): router ${cost:.4f} "
        f"({_pct(share)} frontier calls), random ${random_cost:.4f}, "
        f"always-frontier ${sc.sum():.4f}"
    )


def _pct(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value * 100:5.1f}%"
