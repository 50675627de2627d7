"""A trained tier model on disk: what ``gateway router train`` writes and a route's ``tiering:
{model: PATH}`` loads.

One ``.npz`` file (numpy's zip of arrays, read with ``allow_pickle=False``: loading it runs no
code) holding the arrays of every fitted model of the stack and, under ``meta.json``, one JSON
document: the format and its version, the embedder (name and width) the prompts were embedded
with, the training set's size and date, the stack's members with their weights and z-score
statistics, and the calibration that turns the stack's score into a quality gain.

Each member is stored as the numbers it scores with, not as a scikit-learn object:

- ``knn``: the gains of its keys and, for prototypes, how many prompts each stands for; the
  keys themselves (training prompts' embeddings, or prototypes of them) once in the file
  under ``knn-keys.N``, shared by every kNN member that uses them (version 2; version 1 gave
  each member its own copy, and is still read); ``ridge``: the standardisation and
  coefficients;
- ``text-odds``: per TF-IDF vectoriser its parameters, its terms (JSON, in column order) and
  idf weights, and each logistic regression's coefficients (or the constant it fell back to);
- ``boosted``: the PCA centre and basis, and every tree of every ensemble flattened into node
  arrays (feature, threshold, children, leaf value), walked level by level for all trees at once.

``save_stack`` writes it; ``gateway.tiering.deployed.TierModel`` reads it back.
"""

from __future__ import annotations

import io
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .model import BoostedGain, GainModel, KnnGain, RidgeGain, StackedGain, TextOddsGain

FORMAT = "gateway-tier-model"
# 2: kNN keys shared between members (``knn-keys.N``) and optionally prototypes with counts.
# Version 1 files still load (each kNN member's own ``.keys``).
VERSION = 2
READABLE = (1, 2)
META = "meta.json"


def _logistic(model: Any, key: str, arrays: dict[str, Any]) -> dict[str, Any]:
    """A ``fit_good`` model: its constant, or a logistic regression's coefficients."""
    if isinstance(model, float):
        return {"constant": model}
    arrays[f"{key}.coef"] = np.asarray(model.coef_[0], dtype=np.float64)
    return {"intercept": float(model.intercept_[0])}


def _trees(model: Any, key: str, arrays: dict[str, Any], *, proba: bool) -> dict[str, Any]:
    """A histogram GBM's trees as flat node arrays (roots index into them)."""
    if isinstance(model, float):
        return {"constant": model}
    feature, threshold, left, right, leaf, value, missing_left, roots = (
        [],
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )
    offset, depth = 0, 0
    for iteration in model._predictors:
        for tree in iteration:
            nodes = tree.nodes
            roots.append(offset)
            feature.append(nodes["feature_idx"].astype(np.int32))
            threshold.append(nodes["num_threshold"].astype(np.float64))
            left.append(nodes["left"].astype(np.int32) + offset)
            right.append(nodes["right"].astype(np.int32) + offset)
            leaf.append(nodes["is_leaf"].astype(bool))
            value.append(nodes["value"].astype(np.float64))
            missing_left.append(nodes["missing_go_to_left"].astype(bool))
            depth = max(depth, int(nodes["depth"].max()))
            offset += len(nodes)
    for name, parts in (
        ("feature", feature),
        ("threshold", threshold),
        ("left", left),
        ("right", right),
        ("leaf", leaf),
        ("value", value),
        ("missing_left", missing_left),
    ):
        arrays[f"{key}.{name}"] = np.concatenate(parts)
    arrays[f"{key}.roots"] = np.array(roots, dtype=np.int32)
    baseline = float(np.asarray(model._baseline_prediction).ravel()[0])
    return {"baseline": baseline, "depth": depth, "proba": proba}


def _shared_keys(keys: Any, arrays: dict[str, Any]) -> str:
    """The name of ``keys`` among the file's shared kNN key matrices, added if new: the kNN
    members of a stack fit on the same prompts (or the same prototypes of them), so the file
    holds them once and a deployed model scans them once a prompt."""
    keys = np.asarray(keys, dtype=np.float32)
    names = [name for name in arrays if name.startswith("knn-keys.")]
    for name in names:
        if arrays[name].shape == keys.shape and np.array_equal(arrays[name], keys):
            return name
    name = f"knn-keys.{len(names)}"
    arrays[name] = keys
    return name


def _member(model: GainModel, key: str, arrays: dict[str, Any]) -> dict[str, Any]:
    if isinstance(model, KnnGain):
        arrays[f"{key}.gain"] = np.asarray(model._gain, dtype=np.float64)
        if model._counts is not None:
            arrays[f"{key}.counts"] = np.asarray(model._counts, dtype=np.float64)
        return {
            "kind": "knn",
            "keys": _shared_keys(model._keys, arrays),
            "k": model._k,
            "temperature": model.temperature,
            "prior": model._prior,
        }
    if isinstance(model, RidgeGain):
        arrays[f"{key}.mean"] = model._mean
        arrays[f"{key}.scale"] = model._scale
        arrays[f"{key}.coef"] = model._coef
        return {
            "kind": "ridge",
            "use_embedding": model.use_embedding,
            "intercept": model._intercept,
        }
    if isinstance(model, TextOddsGain):
        vectorizers = []
        for j, vectorizer in enumerate(model._vectorizers):
            terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
            arrays[f"{key}.v{j}.idf"] = np.asarray(vectorizer.idf_, dtype=np.float64)
            vectorizers.append(
                {
                    "analyzer": vectorizer.analyzer,
                    "ngram_range": list(vectorizer.ngram_range),
                    "sublinear_tf": vectorizer.sublinear_tf,
                    "terms": terms,
                }
            )
        models = [_logistic(m, f"{key}.m{j}", arrays) for j, m in enumerate(model._models)]
        return {"kind": "text-odds", "vectorizers": vectorizers, "models": models}
    if isinstance(model, BoostedGain):
        arrays[f"{key}.centre"] = np.asarray(model._centre, dtype=np.float32)
        arrays[f"{key}.basis"] = np.asarray(model._basis, dtype=np.float32)
        members = [
            [_trees(m, f"{key}.b{i}.{j}", arrays, proba=model.odds) for j, m in enumerate(bag)]
            for i, bag in enumerate(model._members)
        ]
        return {"kind": "boosted", "odds": model.odds, "members": members}
    raise TypeError(f"cannot store a {type(model).__name__}")


def save_stack(
    path: Path,
    stack: StackedGain,
    *,
    embedder: str,
    dim: int,
    training: dict[str, Any],
    calibration: tuple[float, float],
) -> dict[str, Any]:
    """Write ``stack`` (fitted) to ``path`` atomically; returns the metadata written.
    ``training``: what to say of the training set (size, file, qualities); ``calibration``:
    (intercept, slope) of the quality gain on the stack's score."""
    arrays: dict[str, Any] = {}
    members = []
    for i, (weight, model, mean, std) in enumerate(stack.fitted):
        member = _member(model, f"s{i}", arrays)
        member.update({"name": model.name, "weight": weight, "mean": mean, "std": std})
        members.append(member)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "name": stack.name,
        "embedder": {"name": embedder, "dim": dim},
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training": training,
        "oof_apgr": stack.oof_apgr,
        "calibration": {"intercept": calibration[0], "slope": calibration[1]},
        "members": members,
    }
    arrays[META] = np.frombuffer(orjson.dumps(meta), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(buffer.getvalue())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return meta
