"""Predicting the frontier tier's quality gain over the cheap tier from a prompt.

A prompt is its sentence embedding (unit-norm, MiniLM) plus a handful of cheap text features
(length, digits, math and code markers, negations, answer options). The target is the observed
gain ``quality[frontier] - quality[cheap]``; the score ranks prompts by how much the frontier
model is worth on them.

Three predictors, all plain numpy:

- ``KnnGain``: the softmax-weighted mean gain of the ``k`` most similar training prompts. It
  carries what per-prompt text cannot: how hard the *neighbourhood* (subject, task family) is
  for the cheap model.
- ``RidgeGain``: a ridge regression on the embedding and the standardised features.
- ``BlendGain``: the mean of their z-scored predictions.

``select_gain_model`` picks one of a small grid by k-fold cross-validated APGR on the training
prompts only; the test prompts never influence the choice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .router_metrics import apgr

Array = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float32]

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_WORD = re.compile(r"\w+")
_CODE = re.compile(r"```|\bdef |\breturn\b|\bimport |\bfunction\b|[{};]|==|->|\bclass ")
_MATH = re.compile(r"[+\-*/=^%$<>]|\\frac|\bsqrt\b")
_NEGATION = re.compile(r"\b(NOT|EXCEPT|not|never|least|false)\b")
_OPTIONS = re.compile(r"(?m)^\s*\(?[A-D][.)]\s")

FEATURE_NAMES = (
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "log_numbers",
    "math_share",
    "log_code_markers",
    "negations",
    "questions",
    "has_options",
    "mean_word_len",
    "upper_share",
)


def prompt_features(text: str) -> list[float]:
    """Cheap per-prompt features, in ``FEATURE_NAMES`` order (no model, microseconds)."""
    chars = len(text)
    words = _WORD.findall(text)
    letters = sum(c.isalpha() for c in text) or 1
    return [
        math.log1p(chars),
        math.log1p(len(words)),
        math.log1p(text.count("\n")),
        sum(c.isdigit() for c in text) / (chars or 1),
        math.log1p(len(_NUMBER.findall(text))),
        len(_MATH.findall(text)) / (chars or 1) * 100,
        math.log1p(len(_CODE.findall(text))),
        float(len(_NEGATION.findall(text))),
        float(text.count("?")),
        1.0 if _OPTIONS.search(text) else 0.0,
        sum(map(len, words)) / (len(words) or 1),
        sum(c.isupper() for c in text) / letters,
    ]


def feature_matrix(texts: Sequence[str]) -> Array:
    return np.array([prompt_features(t) for t in texts], dtype=np.float64).reshape(
        len(texts), len(FEATURE_NAMES)
    )


class GainModel(Protocol):
    """Fits on training prompts' gains; scores new prompts (higher: frontier more worth it)."""

    name: str

    def fit(self, emb: Matrix, feats: Array, gain: Array) -> GainModel: ...

    def predict(self, emb: Matrix, feats: Array) -> Array: ...


def knn_predict(
    query: Matrix, keys: Matrix, values: Array, k: int, temperature: float, prior: float
) -> Array:
    """Softmax(similarity / temperature)-weighted mean of the ``k`` nearest ``values``."""
    if len(keys) == 0:
        return np.full(len(query), prior)
    k = min(k, len(keys))
    sims = query @ keys.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1).astype(np.float64)
    weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / temperature)
    out: Array = (weights * values[top]).sum(axis=1) / weights.sum(axis=1)
    return out


@dataclass
class KnnGain:
    k: int = 32
    temperature: float = 0.05

    def __post_init__(self) -> None:
        self.name = f"knn(k={self.k})"
        self._keys: Matrix = np.zeros((0, 0), dtype=np.float32)
        self._gain: Array = np.zeros(0)
        self._prior = 0.0

    def fit(self, emb: Matrix, feats: Array, gain: Array) -> KnnGain:
        self._keys, self._gain = emb, gain
        self._prior = float(gain.mean()) if len(gain) else 0.0
        return self

    def predict(self, emb: Matrix, feats: Array) -> Array:
        return knn_predict(emb, self._keys, self._gain, self.k, self.temperature, self._prior)


@dataclass
class RidgeGain:
    alpha: float = 10.0
    use_embedding: bool = True

    def __post_init__(self) -> None:
        self.name = f"ridge(alpha={self.alpha:g}{'' if self.use_embedding else ', features'})"
        self._mean = np.zeros(0)
        self._scale = np.ones(0)
        self._coef = np.zeros(0)
        self._intercept = 0.0

    def _design(self, emb: Matrix, feats: Array) -> Array:
        scaled = (feats - self._mean) / self._scale
        if not self.use_embedding:
            return scaled
        # Features weigh like a handful of embedding dimensions (each unit-norm row spreads ~1
        # over 384 dimensions), so neither block drowns the other under one alpha.
        return np.hstack([emb.astype(np.float64) * math.sqrt(emb.shape[1]), scaled])

    def fit(self, emb: Matrix, feats: Array, gain: Array) -> RidgeGain:
        self._mean = feats.mean(axis=0)
        self._scale = feats.std(axis=0) + 1e-9
        x = self._design(emb, feats)
        x_mean = x.mean(axis=0)
        xc = x - x_mean
        y_mean = float(gain.mean())
        gram = xc.T @ xc + self.alpha * np.eye(x.shape[1])
        self._coef = np.linalg.solve(gram, xc.T @ (gain - y_mean))
        self._intercept = y_mean - float(x_mean @ self._coef)
        return self

    def predict(self, emb: Matrix, feats: Array) -> Array:
        out: Array = self._design(emb, feats) @ self._coef + self._intercept
        return out


@dataclass
class BlendGain:
    """The mean of z-scored kNN and ridge predictions (z-scored on the training predictions)."""

    knn: KnnGain
    ridge: RidgeGain

    def __post_init__(self) -> None:
        self.name = f"blend({self.knn.name}, {self.ridge.name})"
        self._stats: list[tuple[float, float]] = []

    def fit(self, emb: Matrix, feats: Array, gain: Array) -> BlendGain:
        self.knn.fit(emb, feats, gain)
        self.ridge.fit(emb, feats, gain)
        self._stats = []
        models: tuple[GainModel, GainModel] = (self.knn, self.ridge)
        for model in models:
            train = model.predict(emb, feats)
            self._stats.append((float(train.mean()), float(train.std()) + 1e-9))
        return self

    def predict(self, emb: Matrix, feats: Array) -> Array:
        models: tuple[GainModel, GainModel] = (self.knn, self.ridge)
        parts = [
            (m.predict(emb, feats) - mean) / std
            for m, (mean, std) in zip(models, self._stats, strict=True)
        ]
        out: Array = np.mean(parts, axis=0)
        return out


def _knn(k: int) -> Callable[[], GainModel]:
    return lambda: KnnGain(k=k)


def _ridge(alpha: float, use_embedding: bool = True) -> Callable[[], GainModel]:
    return lambda: RidgeGain(alpha=alpha, use_embedding=use_embedding)


def _blend(k: int, alpha: float) -> Callable[[], GainModel]:
    return lambda: BlendGain(KnnGain(k=k), RidgeGain(alpha=alpha))


def candidate_models() -> list[Callable[[], GainModel]]:
    """The grid ``select_gain_model`` chooses from."""
    return [
        *(_knn(k) for k in (16, 64, 256, 1024)),
        *(_ridge(alpha) for alpha in (30.0, 300.0, 3000.0, 10000.0)),
        _ridge(10.0, use_embedding=False),
        *(_blend(k, alpha) for k, alpha in ((64, 300.0), (256, 3000.0), (1024, 10000.0))),
    ]


@dataclass(frozen=True)
class Selection:
    model: GainModel
    cv: dict[str, float]  # model name -> mean cross-validated APGR


def select_gain_model(
    emb: Matrix,
    feats: Array,
    cheap: Array,
    frontier: Array,
    *,
    folds: int = 5,
    seed: int = 0,
    grid: Sequence[Callable[[], GainModel]] | None = None,
) -> Selection:
    """The grid's model with the best mean APGR over ``folds`` cross-validation folds of the
    training data, refitted on all of it. Too little data for folds: the first model."""
    grid = list(grid or candidate_models())
    gain = frontier - cheap
    n = len(gain)
    if n < 2 * folds:
        return Selection(grid[0]().fit(emb, feats, gain), {})
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    cv: dict[str, float] = {}
    best: tuple[float, Callable[[], GainModel]] | None = None
    for make in grid:
        scores = []
        name = make().name
        for held in parts:
            train = np.setdiff1d(order, held)
            model = make().fit(emb[train], feats[train], gain[train])
            predicted = model.predict(emb[held], feats[held])
            value = apgr(predicted, cheap[held], frontier[held])
            if not math.isnan(value):
                scores.append(value)
        cv[name] = float(np.mean(scores)) if scores else math.nan
        if best is None or cv[name] > best[0]:
            best = (cv[name], make)
    assert best is not None
    return Selection(best[1]().fit(emb, feats, gain), cv)
