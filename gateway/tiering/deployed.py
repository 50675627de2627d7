"""A trained tier model loaded for a route (``tiering: {model: PATH}``).

``TierModel.load`` reads what ``gateway.tiering.artifact.save_stack`` wrote and refuses, with a
``TierModelError`` naming the file, anything it cannot score with: not a tier model, another
format version, missing or misshapen arrays, or prompts embedded by another model than the
gateway's. ``load_route_models`` does so for every route of a policy; ``gateway check-config``,
the start and a reload call it, so a bad model never reaches a request.

``TierModel.gain`` scores one prompt (its text, embedding and ``prompt_features``) as the
expected quality gain of the frontier over the cheap tier: the stack's score (its members'
z-scored predictions, weighted) through the linear calibration fitted on the training prompts'
out-of-fold scores.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from gateway.policy.model import Policy, PolicyError

from .artifact import FORMAT, META, READABLE, VERSION
from .features import FEATURE_NAMES

Array = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float32]


class Query:
    """One prompt being scored: its text, embedding and ``prompt_features``, and the
    similarities to each shared kNN key matrix, computed once for all the members using it."""

    __slots__ = ("_sims", "emb", "feats", "text")

    def __init__(self, text: str, emb: Vector, feats: Array) -> None:
        self.text, self.emb, self.feats = text, emb, feats
        self._sims: dict[str, Vector] = {}

    def similarities(self, name: str, keys: Vector) -> Vector:
        sims = self._sims.get(name)
        if sims is None:
            sims = self._sims[name] = keys @ self.emb
        return sims


Scorer = Callable[[Query], float]


class TierModelError(PolicyError):
    """A tier model file that cannot be used; the message names the file and why."""


def _expit(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class _Arrays:
    """The file's arrays by key; a missing one is a ``KeyError`` naming it."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def __getitem__(self, key: str) -> Any:
        if key not in self._data:
            raise KeyError(f"array {key!r} missing")
        return self._data[key]


def _knn(spec: dict[str, Any], a: _Arrays, key: str) -> Scorer:
    # Version 2 names a shared key matrix; version 1 stored each member's own.
    name = str(spec.get("keys", f"{key}.keys"))
    keys, gains = a[name], a[f"{key}.gain"]
    counts = a.get(f"{key}.counts")
    k, temperature, prior = (
        min(int(spec["k"]), len(keys)),
        float(spec["temperature"]),
        spec["prior"],
    )
    if keys.ndim != 2 or len(gains) != len(keys):
        raise ValueError(f"{key}: kNN keys and gains do not match")
    if counts is not None and len(counts) != len(keys):
        raise ValueError(f"{key}: kNN keys and counts do not match")

    def score(q: Query) -> float:
        if k == 0:
            return float(prior)
        sims = q.similarities(name, keys)
        top = np.argpartition(-sims, k - 1)[:k]
        near = sims[top].astype(np.float64)
        weights = np.exp((near - near.max()) / temperature)
        if counts is not None:
            weights *= counts[top]
        return float(weights @ gains[top] / weights.sum())

    return score


def _ridge(spec: dict[str, Any], a: _Arrays, key: str) -> Scorer:
    mean, scale, coef = a[f"{key}.mean"], a[f"{key}.scale"], a[f"{key}.coef"]
    intercept, use_embedding = float(spec["intercept"]), bool(spec["use_embedding"])

    def score(q: Query) -> float:
        emb, scaled = q.emb, (q.feats - mean) / scale
        value = float(scaled @ coef[-len(scaled) :]) + intercept
        if use_embedding:
            value += float(emb.astype(np.float64) @ coef[: len(emb)]) * math.sqrt(len(emb))
        return value

    return score


def _text_odds(spec: dict[str, Any], a: _Arrays, key: str) -> Scorer:
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

    analysers = []
    for j, v in enumerate(spec["vectorizers"]):
        # The vectoriser's own analyser (tokens, n-grams, lower-casing), from its parameters.
        analyse = TfidfVectorizer(
            analyzer=v["analyzer"], ngram_range=tuple(v["ngram_range"])
        ).build_analyzer()
        vocabulary = {term: i for i, term in enumerate(v["terms"])}
        idf = a[f"{key}.v{j}.idf"]
        if len(idf) != len(vocabulary):
            raise ValueError(f"{key}: idf and terms do not match")
        analysers.append((analyse, vocabulary, idf, bool(v["sublinear_tf"])))
    width = sum(len(vocabulary) for _, vocabulary, _, _ in analysers)
    models: list[tuple[Array, float] | float] = []
    for j, m in enumerate(spec["models"]):
        if "constant" in m:
            models.append(float(m["constant"]))
            continue
        coef = a[f"{key}.m{j}.coef"]
        if len(coef) != width:
            raise ValueError(f"{key}: coefficients do not match the terms")
        models.append((coef, float(m["intercept"])))

    def score(q: Query) -> float:
        columns: list[int] = []
        values: list[float] = []
        offset = 0
        for analyse, vocabulary, idf, sublinear in analysers:
            counts: dict[int, int] = {}
            for term in analyse(q.text):
                column = vocabulary.get(term)
                if column is not None:
                    counts[column] = counts.get(column, 0) + 1
            if counts:
                cols = np.fromiter(counts, dtype=np.intp, count=len(counts))
                tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
                weights = (np.log(tf) + 1 if sublinear else tf) * idf[cols]
                weights /= np.linalg.norm(weights)
                columns.extend((cols + offset).tolist())
                values.extend(weights.tolist())
            offset += len(vocabulary)
        cols_all = np.array(columns, dtype=np.intp)
        vals_all = np.array(values, dtype=np.float64)
        frontier, cheap = (
            m if isinstance(m, float) else _expit(float(m[0][cols_all] @ vals_all) + m[1])
            for m in models
        )
        return frontier - cheap

    return score


_NODE_ARRAYS = ("feature", "threshold", "left", "right", "leaf", "value", "missing_left")


def _ensemble_nodes(spec: dict[str, Any], a: _Arrays, key: str) -> dict[str, Any] | None:
    """One ensemble's node arrays, checked; ``None`` for a constant."""
    if "constant" in spec:
        return None
    nodes = {name: a[f"{key}.{name}"] for name in _NODE_ARRAYS}
    roots = a[f"{key}.roots"]
    n = len(nodes["feature"])
    if any(len(x) != n for x in nodes.values()):
        raise ValueError(f"{key}: tree node arrays differ in length")
    if n and max(int(nodes["left"].max()), int(nodes["right"].max()), int(roots.max())) >= n:
        raise ValueError(f"{key}: a tree node points outside the trees")
    return {**nodes, "roots": roots, "depth": int(spec["depth"])}


def _boosted(spec: dict[str, Any], a: _Arrays, key: str) -> Scorer:
    """Every tree of every ensemble in one forest, walked once a prompt: the level-by-level
    walk costs per step, not per tree (one walk per ensemble took 0.76 ms for five bags)."""
    centre, basis = a[f"{key}.centre"], a[f"{key}.basis"]
    odds = bool(spec["odds"])
    # Per ensemble: its baseline, a constant, whether its raw sum is a log-odds, and its sign
    # (odds: the frontier's P(good) minus the cheap tier's).
    ensembles: list[tuple[float, float | None, bool, float]] = []
    parts: dict[str, list[Any]] = {name: [] for name in (*_NODE_ARRAYS, "roots", "group")}
    offset, depth = 0, 0
    for i, bag in enumerate(spec["members"]):
        for j, member in enumerate(bag):
            sign = -1.0 if odds and j == 1 else 1.0
            nodes = _ensemble_nodes(member, a, f"{key}.b{i}.{j}")
            if nodes is None:
                ensembles.append((0.0, float(member["constant"]), False, sign))
                continue
            group = len(ensembles)
            ensembles.append((float(member["baseline"]), None, bool(member["proba"]), sign))
            for name in _NODE_ARRAYS:
                values = nodes[name]
                parts[name].append(values + offset if name in ("left", "right") else values)
            parts["roots"].append(nodes["roots"] + offset)
            parts["group"].append(np.full(len(nodes["roots"]), group, dtype=np.intp))
            offset += len(nodes["feature"])
            depth = max(depth, nodes["depth"])
    flat = {name: np.concatenate(v) if v else np.zeros(0) for name, v in parts.items()}
    feature, threshold = flat["feature"].astype(np.intp), flat["threshold"]
    left, right = flat["left"].astype(np.intp), flat["right"].astype(np.intp)
    leaf, value, missing_left = flat["leaf"].astype(bool), flat["value"], flat["missing_left"]
    roots, groups = flat["roots"].astype(np.intp), flat["group"].astype(np.intp)
    bags = max(1, len(spec["members"]))

    def score(q: Query) -> float:
        design = np.concatenate([q.feats, ((q.emb - centre) @ basis).astype(np.float64)])
        at = roots
        for _ in range(depth):  # one level a step for all trees; a leaf stays where it is
            x = design[feature[at]]
            go_left = np.where(np.isnan(x), missing_left[at], x <= threshold[at])
            at = np.where(leaf[at], at, np.where(go_left, left[at], right[at]))
        sums = np.bincount(groups, weights=value[at], minlength=len(ensembles))
        total = 0.0
        for (baseline, constant, proba, sign), raw in zip(ensembles, sums, strict=True):
            if constant is not None:
                total += sign * constant
            else:
                total += sign * (_expit(baseline + raw) if proba else baseline + raw)
        return float(total / bags)

    return score


_KINDS: dict[str, Callable[[dict[str, Any], _Arrays, str], Scorer]] = {
    "knn": _knn,
    "ridge": _ridge,
    "text-odds": _text_odds,
    "boosted": _boosted,
}


class TierModel:
    """A trained tier model, ready to score prompts (``gain``); ``info`` says what it is."""

    def __init__(self, path: Path, meta: dict[str, Any], members: list[Any]) -> None:
        self.path = path
        self.meta = meta
        self._members = members  # (weight, mean, std, scorer)
        calibration = meta["calibration"]
        self._intercept = float(calibration["intercept"])
        self._slope = float(calibration["slope"])
        self.embedder = str(meta["embedder"]["name"])
        self.dim = int(meta["embedder"]["dim"])
        self.size = int(meta["training"]["prompts"])

    @classmethod
    def load(cls, path: Path, embedder: str | None = None, dim: int | None = None) -> TierModel:
        """Read ``path``; ``TierModelError`` if it is not a usable tier model, or (given) its
        prompts were embedded by another model than ``embedder`` or at another width."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError as exc:
            raise TierModelError(f"tier model {path}: no such file") from exc
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise TierModelError(f"tier model {path}: not a readable .npz file: {exc}") from exc
        try:
            meta = orjson.loads(arrays[META].tobytes())
        except (KeyError, orjson.JSONDecodeError) as exc:
            raise TierModelError(f"tier model {path}: no {META} (not a tier model)") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TierModelError(f"tier model {path}: not a {FORMAT} file")
        if meta.get("version") not in READABLE:
            raise TierModelError(
                f"tier model {path}: format version {meta.get('version')!r}; this gateway "
                f"reads versions {', '.join(map(str, READABLE))} and writes {VERSION} (train it "
                "again with `gateway router train`)"
            )
        try:
            model_embedder = meta["embedder"]
            if embedder is not None and model_embedder["name"] != embedder:
                raise TierModelError(
                    f"tier model {path}: trained on {model_embedder['name']} embeddings; this "
                    f"gateway embeds with {embedder} (train it again with this embedder)"
                )
            if dim is not None and int(model_embedder["dim"]) != dim:
                raise TierModelError(
                    f"tier model {path}: trained on {model_embedder['dim']}-wide embeddings; "
                    f"this gateway's are {dim} wide"
                )
            if len(meta["training"].get("features", FEATURE_NAMES)) != len(FEATURE_NAMES):
                raise TierModelError(
                    f"tier model {path}: trained on other text features than this gateway's "
                    "(train it again)"
                )
            found = _Arrays(arrays)
            members = [
                (
                    float(m["weight"]),
                    float(m["mean"]),
                    float(m["std"]),
                    _KINDS[m["kind"]](m, found, f"s{i}"),
                )
                for i, m in enumerate(meta["members"])
            ]
            model = cls(path, meta, members)
        except TierModelError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise TierModelError(f"tier model {path}: malformed: {exc}") from exc
        # One score end to end: a file that loads but cannot score fails here, not at a request.
        probe = np.zeros(model.dim, dtype=np.float32)
        probe[0] = 1.0
        try:
            value = model.score("probe", probe, np.zeros(len(FEATURE_NAMES)))
        except (ValueError, IndexError) as exc:
            raise TierModelError(f"tier model {path}: cannot score a prompt: {exc}") from exc
        if not math.isfinite(value):
            raise TierModelError(f"tier model {path}: scores are not finite")
        return model

    def score(self, text: str, embedding: Vector, features: Array) -> float:
        """The stack's score of one prompt (weighted z-scores; higher: the frontier is more
        worth it)."""
        query, total = Query(text, embedding, features), 0.0
        for weight, mean, std, scorer in self._members:
            total += weight * (scorer(query) - mean) / std
        return total

    def gain(self, text: str, embedding: Vector, features: Array) -> float:
        """The expected quality gain of the frontier over the cheap tier on one prompt."""
        return float(self._intercept + self._slope * self.score(text, embedding, features))

    @property
    def cheap_quality(self) -> float:
        """The cheap tier's mean quality on the training prompts."""
        return float(self.meta["training"]["quality"]["cheap"])

    def info(self) -> dict[str, Any]:
        """What ``GET /admin/tiering`` shows of the model."""
        return {
            "path": str(self.path),
            "name": self.meta["name"],
            "version": self.meta["version"],
            "embedder": self.meta["embedder"],
            "trained_at": self.meta["trained_at"],
            "training_prompts": self.size,
            "training_file": self.meta["training"].get("file"),
        }


def load_route_models(
    policy: Policy, base: Path, embedder: str | None = None, dim: int | None = None
) -> dict[str, TierModel]:
    """The tier model of every route whose ``tiering`` names one (a relative path is read from
    ``base``, the policy file's folder); a ``TierModelError`` (a ``PolicyError``) names the
    route and the file when one cannot be used. One file named by several routes loads once."""
    loaded: dict[Path, TierModel] = {}
    models: dict[str, TierModel] = {}
    for route in policy.routes:
        if route.tiering is None or route.tiering.model is None:
            continue
        path = Path(route.tiering.model).expanduser()
        path = path if path.is_absolute() else base / path
        if path not in loaded:
            try:
                loaded[path] = TierModel.load(path, embedder, dim)
            except TierModelError as exc:
                raise TierModelError(f"route {route.name!r}: {exc}") from exc
        models[route.name] = loaded[path]
    return models


def route_models(
    settings: Any, policy: Policy, embedder: Any | None = None
) -> dict[str, TierModel]:
    """``load_route_models`` for a gateway with these ``settings`` (relative paths from the
    policy file's folder; the embedder named by ``GATEWAY_EMBEDDER``, or the loaded
    ``embedder``'s name and width when there is one)."""
    if not any(r.tiering and r.tiering.model for r in policy.routes):
        return {}
    name, dim = gateway_embedder(settings.embedder), None
    if embedder is not None:
        name, dim = embedder.name, embedder.dim
    return load_route_models(policy, Path(settings.config).resolve().parent, name, dim)


def gateway_embedder(backend: str) -> str:
    """The embedder name the gateway reports for a ``GATEWAY_EMBEDDER`` backend (int8 vectors
    differ from float ones: a model trained on one is refused on the other)."""
    from cache.embedder import BUNDLED_MODEL_NAME

    return BUNDLED_MODEL_NAME + ("-int8" if backend == "onnx-int8" else "")
