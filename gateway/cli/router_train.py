"""``gateway router train``: fit the replay's stack on TRAIN and write it for a route to load.

    gateway router train --train TRAIN.jsonl --out MODEL.npz [--cheap KEY --frontier KEY]
                         [--embedding-cache FILE] [--embedder torch|onnx|onnx-int8]
                         [--stack serving|full] [--knn-keys N]

TRAIN is ``gateway router replay``'s format: ``{"prompt", "quality": {"cheap", "frontier"}}``
lines (``--cheap/--frontier`` name other keys). MODEL is a versioned ``.npz`` (arrays and one
JSON document; no pickle: ``gateway.tiering.artifact``) that a route's ``tiering: {model:
MODEL}`` loads. Besides the stack it holds the embedder's name and width, the training set's
size, file and date, and the linear calibration of the stack's score into a quality gain
(fitted on the training prompts' out-of-fold scores).

``--stack serving`` (the default) fits the stack a request can afford to score
(``gateway.tiering.model.serving_models``: kNN over at most ``--knn-keys`` prototypes, word
n-grams only, two bagged ensembles per boosted model); ``--stack full`` fits ``router replay``'s
nine models, which rank a little better offline and cost several ms a decision.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.tiering.features import FEATURE_NAMES
from gateway.tiering.metrics import Array

from .router import ReplayError, add_train_arguments


def add_parsers(actions: Any) -> None:
    train = actions.add_parser(
        "train",
        help="fit a tier model on TRAIN outcomes and write it for a route's tiering.model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(train)
    train.add_argument("--out", type=Path, required=True, help="the model file to write (.npz)")
    train.add_argument(
        "--embedder",
        default=os.environ.get("GATEWAY_EMBEDDER", "onnx-int8"),
        help="torch, onnx or onnx-int8 (default: GATEWAY_EMBEDDER, else onnx-int8 as `gateway "
        "serve`); the gateway that loads the model must embed with the same",
    )
    train.add_argument(
        "--embedding-cache", type=Path, help="an .npz file keeping prompt embeddings across runs"
    )
    train.add_argument(
        "--stack",
        choices=("serving", "full"),
        default="serving",
        help="serving (default): the members cheap to score a request with; full: router "
        "replay's nine (character n-grams, kNN over every training prompt, 5-tree bags)",
    )
    train.add_argument(
        "--knn-keys",
        type=int,
        default=2048,
        help="with --stack serving, the most kNN keys a request scans: more training prompts "
        "are summarised by as many prototypes (default 2048; 0: every prompt)",
    )
    train.add_argument("--folds", type=int, default=5, help="cross-validation folds on TRAIN")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--threads",
        type=int,
        help="BLAS/OpenMP threads while fitting (default: the libraries'; 1 on a busy host: "
        "the trees' threads then wait on each other, measured 20x slower on 2 shared cores)",
    )


def calibrate(score: Array, gain: Array) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line of ``gain`` on ``score``; the slope is
    floored at 0 (a model whose score runs against the gain predicts the mean gain)."""
    if len(score) < 2 or float(score.std()) == 0.0:
        return float(gain.mean()) if len(gain) else 0.0, 0.0
    slope = max(0.0, float(np.cov(score, gain)[0, 1] / score.var(ddof=1)))
    return float(gain.mean() - slope * score.mean()), slope


def run(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except ReplayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from gateway.tiering.artifact import save_stack
    from gateway.tiering.deployed import TierModel, gateway_embedder
    from gateway.tiering.model import (
        Prompts,
        StackedGain,
        base_models,
        select_gain_model,
        serving_models,
    )

    from .router import embed_prompts, read_rows

    if args.knn_keys < 0:
        raise ReplayError("--knn-keys must be 0 (every prompt) or more")
    tiers = (args.cheap, args.frontier)
    rows = read_rows(args.train, tiers, require_quality=True)
    if not rows.prompts:
        raise ReplayError(f"{args.train}: no training lines")
    started = time.perf_counter()
    vectors = embed_prompts(rows.prompts, args.embedder, args.embedding_cache)
    x = Prompts.of(rows.prompts, vectors)
    cheap, frontier = np.array(rows.quality[args.cheap]), np.array(rows.quality[args.frontier])
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(args.threads):
        bases = base_models() if args.stack == "full" else serving_models(args.knn_keys or None)
        stack = select_gain_model(
            x, cheap, frontier, folds=args.folds, seed=args.seed, bases=bases
        ).model
    assert isinstance(stack, StackedGain)
    intercept, slope = calibrate(stack.oof_score, frontier - cheap)
    meta = save_stack(
        args.out,
        stack,
        embedder=gateway_embedder(args.embedder),
        dim=int(vectors.shape[1]),
        training={
            "prompts": len(rows.prompts),
            "file": args.train.name,
            "keys": {"cheap": args.cheap, "frontier": args.frontier},
            "quality": {"cheap": float(cheap.mean()), "frontier": float(frontier.mean())},
            "features": list(FEATURE_NAMES),
            "folds": args.folds,
            "seed": args.seed,
            "stack": args.stack,
        },
        calibration=(intercept, slope),
    )
    fitted = time.perf_counter() - started
    loading = time.perf_counter()
    TierModel.load(args.out, meta["embedder"]["name"], meta["embedder"]["dim"])
    loaded_ms = (time.perf_counter() - loading) * 1000
    size_mb = args.out.stat().st_size / 1e6
    print(
        f"trained {stack.name} on {len(rows.prompts)} prompts ({fitted:.1f} s); wrote {args.out} "
        f"({size_mb:.1f} MB, loads in {loaded_ms:.0f} ms)\n"
        f"gain = {intercept:.4f} + {slope:.4f} x score; out-of-fold APGR "
        f"{stack.oof_apgr.get('stack (weights chosen on these)', float('nan')):.3f}",
        file=sys.stderr,
    )
    return 0
