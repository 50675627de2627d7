"""Predicting the frontier tier's quality gain over the cheap tier from a prompt.

A prompt is its text, its sentence embedding (unit-norm, MiniLM) and the cheap text features of
``prompt_features``. The score ranks prompts by how much the frontier model is worth on them.

The predictors (numpy, and scikit-learn for the text and tree models):

- ``KnnGain``: the softmax-weighted mean gain ``frontier - cheap`` of the ``k`` most similar
  training prompts. It carries what per-prompt text cannot: how hard the *neighbourhood*
  (subject, task family) is for the cheap model.
- ``RidgeGain``: a ridge regression of the gain on the embedding and the standardised
  features, or on the features alone.
- ``TextOddsGain``: ``P(frontier good) - P(cheap good)`` from two logistic regressions on
  TF-IDF n-grams; unlike the gain's regressions it also learns where the frontier fails.
- ``BoostedGain``: gradient-boosted trees on the features and the embedding's principal
  directions, of the gain or of the two tiers' odds: the interactions the linear models miss.
- ``StackedGain``: several of these, z-scored and weighted; the weights maximise the APGR of
  their out-of-fold predictions on the training prompts.

``select_gain_model`` stacks ``base_models()`` so, from the training prompts only; the test
prompts never influence it. (It replaced a choice of the single best of a 20-model grid by
cross-validated APGR: on held-out halves the stack scored as well or better on 8 of 10
datasets and splits, and fits fewer models.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .features import feature_matrix
from .metrics import apgr

Array = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Prompts:
    """Prompts as the models see them: text, embedding rows and ``feature_matrix`` rows."""

    texts: Sequence[str]
    emb: Matrix
    feats: Array

    @classmethod
    def of(cls, texts: Sequence[str], emb: Matrix) -> Prompts:
        return cls(list(texts), emb, feature_matrix(texts))

    def take(self, rows: npt.NDArray[np.intp]) -> Prompts:
        return Prompts([self.texts[i] for i in rows], self.emb[rows], self.feats[rows])


class GainModel(Protocol):
    """Fits on training prompts' qualities per tier; scores new prompts (higher: the frontier
    is more worth it)."""

    name: str

    def fit(self, x: Prompts, cheap: Array, frontier: Array) -> GainModel: ...

    def predict(self, x: Prompts) -> Array: ...


def knn_predict(
    query: Matrix,
    keys: Matrix,
    values: Array,
    k: int,
    temperature: float,
    prior: float,
    counts: Array | None = None,
) -> Array:
    """Softmax(similarity / temperature)-weighted mean of the ``k`` nearest ``values``; with
    ``counts`` (prototypes), each key's weight is also multiplied by the prompts it stands for."""
    if len(keys) == 0:
        return np.full(len(query), prior)
    k = min(k, len(keys))
    sims = query @ keys.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    top_sims = np.take_along_axis(sims, top, axis=1).astype(np.float64)
    weights = np.exp((top_sims - top_sims.max(axis=1, keepdims=True)) / temperature)
    if counts is not None:
        weights *= counts[top]
    out: Array = (weights * values[top]).sum(axis=1) / weights.sum(axis=1)
    return out


def prototypes(
    emb: Matrix, values: Array, n: int, *, rounds: int = 4, seed: int = 0
) -> tuple[Matrix, Array, Array]:
    """``n`` prototypes of the unit-norm rows ``emb``: spherical k-means (``rounds`` Lloyd steps
    from a seeded random sample of rows). Returns their unit-norm centres, the mean of
    ``values`` over each one's rows, and how many rows each stands for (empty ones dropped).
    Deterministic for the same rows and seed, so two kNN members share one set of keys."""
    from scipy import sparse  # type: ignore[import-untyped]

    rows = len(emb)
    centres = emb[np.random.default_rng(seed).choice(rows, n, replace=False)]
    for step in range(rounds + 1):
        assign = np.argmax(emb @ centres.T, axis=1)
        members = sparse.csr_matrix(
            (np.ones(rows, dtype=np.float32), (assign, np.arange(rows))), shape=(len(centres), rows)
        )
        counts = np.asarray(members.sum(axis=1)).ravel()
        keep = counts > 0
        if step < rounds:  # a Lloyd step: each centre to its rows' mean direction
            sums = np.asarray(members @ emb)[keep]
            centres = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
    means = np.asarray(members @ values).ravel()[keep] / counts[keep]
    return centres[keep], means.astype(np.float64), counts[keep].astype(np.float64)


@dataclass
class KnnGain:
    """The softmax-weighted mean gain of the ``k`` nearest training prompts. With ``max_keys``
    and more training prompts than that, the keys are ``prototypes`` of them (each weighted by
    the prompts it stands for, ``k`` scaled down in proportion): what a deployed model scans
    for every request stays bounded whatever the training set's size."""

    k: int = 32
    temperature: float = 0.05
    max_keys: int | None = None

    def __post_init__(self) -> None:
        self.name = f"knn(k={self.k}{f', keys<={self.max_keys}' if self.max_keys else ''})"
        self._keys: Matrix = np.zeros((0, 0), dtype=np.float32)
        self._gain: Array = np.zeros(0)
        self._counts: Array | None = None
        self._k = self.k
        self._prior = 0.0

    def fit(self, x: Prompts, cheap: Array, frontier: Array) -> KnnGain:
        gain = frontier - cheap
        self._keys, self._gain, self._counts, self._k = x.emb, gain, None, self.k
        if self.max_keys and len(gain) > self.max_keys:
            self._keys, self._gain, self._counts = prototypes(x.emb, gain, self.max_keys)
            self._k = max(1, round(self.k * len(self._keys) / len(gain)))
        self._prior = float(gain.mean()) if len(gain) else 0.0
        return self

    def predict(self, x: Prompts) -> Array:
        return knn_predict(
            x.emb, self._keys, self._gain, self._k, self.temperature, self._prior, self._counts
        )


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

    def fit(self, prompts: Prompts, cheap: Array, frontier: Array) -> RidgeGain:
        gain = frontier - cheap
        self._mean = prompts.feats.mean(axis=0)
        self._scale = prompts.feats.std(axis=0) + 1e-9
        x = self._design(prompts.emb, prompts.feats)
        x_mean = x.mean(axis=0)
        xc = x - x_mean
        y_mean = float(gain.mean())
        gram = xc.T @ xc + self.alpha * np.eye(x.shape[1])
        self._coef = np.linalg.solve(gram, xc.T @ (gain - y_mean))
        self._intercept = y_mean - float(x_mean @ self._coef)
        return self

    def predict(self, x: Prompts) -> Array:
        out: Array = self._design(x.emb, x.feats) @ self._coef + self._intercept
        return out


@dataclass
class TextOddsGain:
    """``P(frontier good) - P(cheap good)`` from two logistic regressions on TF-IDF word
    (1-2)-grams (and character 2-5-grams with ``chars``). Qualities in 0..1 are soft labels:
    each prompt counts as good with weight ``q`` and bad with ``1 - q``. It reads what the
    embedding blurs (option wording, negations, quantities) and, unlike the gain's regressions,
    sees the prompts the frontier itself gets wrong."""

    c: float = 1.0
    chars: bool = False

    def __post_init__(self) -> None:
        self.name = f"text-odds(C={self.c:g}{', chars' if self.chars else ''})"
        self._vectorizers: list[Any] = []
        self._models: list[Any] = []

    def _matrix(self, texts: Sequence[str], fit: bool) -> Any:
        from scipy import sparse

        if fit:
            return sparse.hstack([v.fit_transform(texts) for v in self._vectorizers]).tocsr()
        return sparse.hstack([v.transform(texts) for v in self._vectorizers]).tocsr()

    def fit(self, x: Prompts, cheap: Array, frontier: Array) -> TextOddsGain:
        from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

        min_df = 2 if len(x.texts) >= 50 else 1
        self._vectorizers = [
            TfidfVectorizer(
                ngram_range=(1, 2), min_df=min_df, sublinear_tf=True, max_features=50000
            )
        ]
        if self.chars:
            self._vectorizers.append(
                TfidfVectorizer(
                    analyzer="char_wb",
                    ngram_range=(2, 5),
                    min_df=min_df,
                    sublinear_tf=True,
                    max_features=80000,
                )
            )
        try:
            matrix = self._matrix(x.texts, fit=True)
        except ValueError:  # no terms at all (e.g. only empty prompts)
            matrix, self._vectorizers = None, []
        from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

        self._models = [
            fit_good(lambda: LogisticRegression(C=self.c, max_iter=1000), matrix, q)
            for q in (np.clip(frontier, 0.0, 1.0), np.clip(cheap, 0.0, 1.0))
        ]
        return self

    def predict(self, x: Prompts) -> Array:
        matrix = self._matrix(x.texts, fit=False) if self._vectorizers else None
        return tier_odds(self._models, matrix, len(x.texts))


def fit_good(make: Callable[[], Any], matrix: Any, quality: Array) -> Any:
    """A classifier of P(good) fitted on ``matrix`` (dense or sparse rows) with soft labels:
    each row counts as good with weight ``q`` and bad with ``1 - q``; the mean quality instead
    when there is nothing to learn (no matrix, or one quality for all)."""
    from scipy import sparse

    if matrix is None or np.all(quality == quality[0]):
        return float(quality.mean()) if len(quality) else 0.5
    n = len(quality)
    labels = np.r_[np.ones(n), np.zeros(n)]
    weights = np.r_[quality, 1.0 - quality]
    keep = weights > 0
    if sparse.issparse(matrix):
        stacked = sparse.vstack([matrix, matrix]).tocsr()[keep]
    else:
        stacked = np.vstack([matrix, matrix])[keep]
    if np.all(weights[keep] == 1.0):
        # 0/1 qualities: each row once, unweighted. The same model, and for the trees 5-10x
        # faster: given weights, scikit-learn bins each input by weighted percentiles (~90 % of
        # a fit's time on MMLU-sized data).
        return make().fit(stacked, labels[keep])
    return make().fit(stacked, labels[keep], sample_weight=weights[keep])


def tier_odds(models: Sequence[Any], matrix: Any, n: int) -> Array:
    """``P(frontier good) - P(cheap good)`` for ``n`` rows of ``matrix``, from the two
    ``fit_good`` models (frontier first)."""
    frontier, cheap = (
        np.full(n, m) if isinstance(m, float) else m.predict_proba(matrix)[:, 1] for m in models
    )
    out: Array = frontier - cheap
    return out


# Each ensemble of ``BoostedGain``: 200 trees of 15 leaves, at least 40 prompts a leaf, each split
# choosing among a random half of the inputs (the bag's members differ by their random state).
_TREES: dict[str, Any] = {
    "learning_rate": 0.05,
    "max_iter": 200,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
    "max_features": 0.5,
    "early_stopping": False,
}


@dataclass
class BoostedGain:
    """Gradient-boosted trees (scikit-learn's histogram GBM) on the text features and the
    embedding's top ``components`` principal directions. Trees find what the linear models
    cannot: interactions, such as a feature that marks a hard question in one subject and not
    in another. ``odds``: ``P(frontier good) - P(cheap good)`` from two classifiers with soft
    labels, as ``TextOddsGain``; otherwise a regression of the gain. A bag of ``members``
    ensembles, each split choosing among a random half of the inputs, averaged: on MMLU, the
    stack with one ensemble of each scored 0.002-0.006 APGR lower, held out."""

    components: int = 32
    odds: bool = False
    members: int = 5

    def __post_init__(self) -> None:
        self.name = f"boosted({'odds' if self.odds else 'gain'}, pcs={self.components})"
        self._centre: Matrix = np.zeros(0, dtype=np.float32)
        self._basis: Matrix = np.zeros((0, 0), dtype=np.float32)
        self._members: list[list[Any]] = []  # each: [regressor] or [frontier, cheap] classifiers

    def _design(self, x: Prompts) -> Array:
        return np.hstack([x.feats, (x.emb - self._centre) @ self._basis])

    def fit(self, x: Prompts, cheap: Array, frontier: Array) -> BoostedGain:
        from sklearn.ensemble import (  # type: ignore[import-untyped]
            HistGradientBoostingClassifier,
            HistGradientBoostingRegressor,
        )

        self._centre = x.emb.mean(axis=0)
        _, _, directions = np.linalg.svd(x.emb - self._centre, full_matrices=False)
        self._basis = directions[: self.components].T
        design = self._design(x)

        qualities = (np.clip(frontier, 0.0, 1.0), np.clip(cheap, 0.0, 1.0))
        self._members = []
        for seed in range(self.members):
            if self.odds:
                make = partial(HistGradientBoostingClassifier, **_TREES, random_state=seed)
                self._members.append([fit_good(make, design, q) for q in qualities])
            else:
                trees = HistGradientBoostingRegressor(**_TREES, random_state=seed)
                self._members.append([trees.fit(design, frontier - cheap)])
        return self

    def predict(self, x: Prompts) -> Array:
        design = self._design(x)
        out: Array = np.mean(
            [
                tier_odds(models, design, len(design)) if self.odds else models[0].predict(design)
                for models in self._members
            ],
            axis=0,
        )
        return out


class StackedGain:
    """Several models' predictions, z-scored and weighted (stacked generalisation): each model's
    out-of-fold predictions on the training prompts give its z-score statistics, and the weights
    (non-negative, summing to 1) are the ones whose weighted out-of-fold score has the best APGR,
    found by coordinate ascent from equal weights. Models weighted 0 are not refitted; the others
    are refitted on every training prompt."""

    def __init__(
        self, makers: Sequence[Callable[[], GainModel]], *, folds: int = 5, seed: int = 0
    ) -> None:
        self.makers = list(makers)
        self.folds, self.seed = folds, seed
        self.names = [make().name for make in self.makers]
        self.name = f"stack({', '.join(self.names)})"
        self.weights = np.zeros(len(self.makers))
        self.oof_apgr: dict[str, float] = {}
        # The stack's score of each training prompt from models that did not see it (in-sample
        # below ``2 * folds`` prompts): what ``gateway router train`` calibrates into a gain.
        self.oof_score: Array = np.zeros(0)
        self._fitted: list[tuple[float, GainModel, float, float]] = []  # weight, model, z stats

    def fit(self, x: Prompts, cheap: Array, frontier: Array) -> StackedGain:
        n = len(cheap)
        if n < 2 * self.folds:  # too few for folds: the first model alone
            model = self.makers[0]().fit(x, cheap, frontier)
            train = model.predict(x)
            self.weights = np.eye(len(self.makers))[0]
            self._fitted = [(1.0, model, float(train.mean()), float(train.std()) + 1e-9)]
            self.oof_score = (train - self._fitted[0][2]) / self._fitted[0][3]
            self.name = f"stack({self.names[0]} 1.00)"
            return self
        order = np.random.default_rng(self.seed).permutation(n)
        parts = np.array_split(order, self.folds)
        oof = np.zeros((len(self.makers), n))
        for row, make in zip(oof, self.makers, strict=True):
            for held in parts:
                train_rows = np.setdiff1d(order, held)
                model = make().fit(x.take(train_rows), cheap[train_rows], frontier[train_rows])
                row[held] = model.predict(x.take(held))
        means, stds = oof.mean(axis=1), oof.std(axis=1) + 1e-9
        z = (oof - means[:, None]) / stds[:, None]
        self.weights, best = _ascend(z, cheap, frontier)
        self.oof_score = self.weights @ z
        self.oof_apgr = {
            name: apgr(row, cheap, frontier) for name, row in zip(self.names, oof, strict=True)
        }
        self.oof_apgr["stack (weights chosen on these)"] = best
        self._fitted = [
            (float(w), make().fit(x, cheap, frontier), float(mean), float(std))
            for w, make, mean, std in zip(self.weights, self.makers, means, stds, strict=True)
            if w > 0
        ]
        weighted = (
            f"{name} {w:.2f}" for name, w in zip(self.names, self.weights, strict=True) if w > 0
        )
        self.name = f"stack({', '.join(weighted)})"
        return self

    @property
    def fitted(self) -> list[tuple[float, GainModel, float, float]]:
        """The refitted models: (weight, model, mean and sd of its out-of-fold scores)."""
        return list(self._fitted)

    def predict(self, x: Prompts) -> Array:
        out: Array = np.zeros(len(x.texts))
        for weight, model, mean, std in self._fitted:
            out += weight * (model.predict(x) - mean) / std
        return out


def _ascend(z: Array, cheap: Array, frontier: Array, sweeps: int = 4) -> tuple[Array, float]:
    """Simplex weights over the rows of ``z`` maximising the APGR of ``weights @ z``: coordinate
    ascent from equal weights, each step moving one weight by a share of the mean weight."""
    k = len(z)
    weights = np.full(k, 1.0 / k)
    best = apgr(weights @ z, cheap, frontier)
    for _ in range(sweeps):
        improved = False
        for j in range(k):
            for step in (0.5, 0.25, 0.1, -0.1, -0.25, -0.5):
                trial = weights.copy()
                trial[j] = max(0.0, trial[j] + step / k)
                if trial.sum() == 0:
                    continue
                trial /= trial.sum()
                value = apgr(trial @ z, cheap, frontier)
                if value > best + 1e-4:
                    best, weights, improved = value, trial, True
        if not improved:
            break
    return weights, best


def base_models() -> list[Callable[[], GainModel]]:
    """What ``select_gain_model`` stacks: the neighbourhood (kNN, narrow and wide), the
    embedding and the features (ridge), the features alone, and the words and characters."""
    return [
        lambda: KnnGain(k=64),
        lambda: KnnGain(k=1024),
        lambda: RidgeGain(alpha=3000.0),
        lambda: RidgeGain(alpha=10000.0),
        lambda: RidgeGain(alpha=100.0, use_embedding=False),
        lambda: TextOddsGain(c=0.3),
        lambda: TextOddsGain(c=0.3, chars=True),
        lambda: BoostedGain(),
        lambda: BoostedGain(odds=True),
    ]


def serving_models(max_keys: int | None = 2048) -> list[Callable[[], GainModel]]:
    """What ``gateway router train`` stacks for a deployed model: ``base_models()`` without
    what costs a request most to score. The kNN members scan at most ``max_keys`` prototypes
    (one shared similarity pass), the TF-IDF odds read words only (a prompt's character
    n-grams took ~1-2 ms to build in Python), and each boosted model bags 2 ensembles, not 5.
    Measured on MMLU in bench/README.md (``python -m bench.tier_model``)."""
    return [
        lambda: KnnGain(k=64, max_keys=max_keys),
        lambda: KnnGain(k=1024, max_keys=max_keys),
        lambda: RidgeGain(alpha=3000.0),
        lambda: RidgeGain(alpha=10000.0),
        lambda: RidgeGain(alpha=100.0, use_embedding=False),
        lambda: TextOddsGain(c=0.3),
        lambda: BoostedGain(members=2),
        lambda: BoostedGain(odds=True, members=2),
    ]


@dataclass(frozen=True)
class Selection:
    model: GainModel
    cv: dict[str, float]  # model name -> APGR of its out-of-fold predictions on TRAIN


def select_gain_model(
    x: Prompts,
    cheap: Array,
    frontier: Array,
    *,
    folds: int = 5,
    seed: int = 0,
    bases: Sequence[Callable[[], GainModel]] | None = None,
) -> Selection:
    """``bases`` (default ``base_models()``) stacked by their ``folds``-fold out-of-fold APGR on
    the training prompts, then refitted on all of them; the test prompts never influence it."""
    stack = StackedGain(bases or base_models(), folds=folds, seed=seed).fit(x, cheap, frontier)
    return Selection(stack, stack.oof_apgr)
