"""Predicting the frontier tier's quality gain over the cheap tier from a prompt.

A prompt is its text, its sentence embedding (unit-norm, MiniLM) and cheap text features
(length, digits, math and code markers, negations, answer options, and the structure of word
problems: how many and how large the numbers, sentences, step and unit words, names). The
score ranks prompts by how much the frontier model is worth on them.

The predictors (numpy, and scikit-learn for the text model):

- ``KnnGain``: the softmax-weighted mean gain ``frontier - cheap`` of the ``k`` most similar
  training prompts. It carries what per-prompt text cannot: how hard the *neighbourhood*
  (subject, task family) is for the cheap model.
- ``RidgeGain``: a ridge regression of the gain on the embedding and the standardised
  features, or on the features alone.
- ``TextOddsGain``: ``P(frontier good) - P(cheap good)`` from two logistic regressions on
  TF-IDF n-grams; unlike the gain's regressions it also learns where the frontier fails.
- ``BlendGain``: the mean of several models' z-scored predictions.

``select_gain_model`` picks one of a small grid by k-fold cross-validated APGR on the training
prompts only; the test prompts never influence the choice.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .router_metrics import apgr

Array = npt.NDArray[np.float64]
Matrix = npt.NDArray[np.float32]

_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_QUANTITY = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
_FRACTION = re.compile(r"\b\d+/\d+\b")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
# Words that add a step to a word problem (a ratio, a share, a rate, a remainder).
_STEP_WORDS = re.compile(
    r"(?i)\b(half|halves|twice|double|triple|third|quarter|fourth|fifth|percent|times|each|"
    r"every|per|remaining|rest|left|more than|less than|fewer|total|average|ratio|profit|"
    r"discount|tax|interest|split|share|rate)\b|%"
)
_UNIT = re.compile(
    r"(?i)\b(hours?|minutes?|seconds?|days?|weeks?|months?|years?|miles?|feet|foot|inch(?:es)?|"
    r"pounds?|dollars?|cents?|gallons?|liters?|litres?|meters?|metres?|km|kg|grams?)\b|\$"
)
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]+")
_HOW_MANY = re.compile(r"(?i)\bhow (?:many|much)\b")
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
    "log_distinct_numbers",
    "log_max_number",
    "decimals",
    "fractions",
    "log_sentences",
    "words_per_sentence",
    "log_step_words",
    "log_units",
    "log_unit_kinds",
    "log_names",
    "how_many",
)


def prompt_features(text: str) -> list[float]:
    """Cheap per-prompt features, in ``FEATURE_NAMES`` order (no model, microseconds)."""
    chars = len(text)
    words = _WORD.findall(text)
    letters = sum(c.isalpha() for c in text) or 1
    quantities = _QUANTITY.findall(text)
    numbers = [min(float(n.replace(",", "")), 1e300) for n in quantities]
    sentences = max(1, len(_SENTENCE_END.findall(text)))
    units = [u.lower() for u in _UNIT.findall(text)]
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
        math.log1p(len(set(numbers))),
        math.log1p(max(numbers, default=0.0)),
        float(sum("." in n for n in quantities)),
        float(len(_FRACTION.findall(text))),
        math.log1p(sentences),
        len(words) / sentences,
        math.log1p(len(_STEP_WORDS.findall(text))),
        math.log1p(len(units)),
        math.log1p(len(set(units))),
        math.log1p(len(_NAME.findall(text))),
        float(len(_HOW_MANY.findall(text))),
    ]


def feature_matrix(texts: Sequence[str]) -> Array:
    return np.array([prompt_features(t) for t in texts], dtype=np.float64).reshape(
        len(texts), len(FEATURE_NAMES)
    )


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

    def fit(self, x: Prompts, cheap: Array, frontier: Array) -> KnnGain:
        gain = frontier - cheap
        self._keys, self._gain = x.emb, gain
        self._prior = float(gain.mean()) if len(gain) else 0.0
        return self

    def predict(self, x: Prompts) -> Array:
        return knn_predict(x.emb, self._keys, self._gain, self.k, self.temperature, self._prior)


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
        from scipy import sparse  # type: ignore[import-untyped]

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
        self._models = [self._classifier(matrix, np.clip(q, 0.0, 1.0)) for q in (frontier, cheap)]
        return self

    def _classifier(self, matrix: Any, quality: Array) -> Any:
        """A fitted classifier of P(good), or the mean quality when there is nothing to learn."""
        from scipy import sparse
        from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

        if matrix is None or np.all(quality == quality[0]):
            return float(quality.mean()) if len(quality) else 0.5
        n = len(quality)
        labels = np.r_[np.ones(n), np.zeros(n)]
        weights = np.r_[quality, 1.0 - quality]
        keep = weights > 0
        stacked = sparse.vstack([matrix, matrix]).tocsr()[keep]
        model = LogisticRegression(C=self.c, max_iter=1000)
        return model.fit(stacked, labels[keep], sample_weight=weights[keep])

    def predict(self, x: Prompts) -> Array:
        matrix = self._matrix(x.texts, fit=False) if self._vectorizers else None
        frontier, cheap = (
            np.full(len(x.texts), m) if isinstance(m, float) else m.predict_proba(matrix)[:, 1]
            for m in self._models
        )
        out: Array = frontier - cheap
        return out


class BlendGain:
    """The mean of its models' z-scored predictions (z-scored on the training predictions)."""

    def __init__(self, *models: GainModel) -> None:
        self.models = models
        self.name = f"blend({', '.join(m.name for m in models)})"
        self._stats: list[tuple[float, float]] = []

    def fit(self, x: Prompts, cheap: Array, frontier: Array) -> BlendGain:
        self._stats = []
        for model in self.models:
            train = model.fit(x, cheap, frontier).predict(x)
            self._stats.append((float(train.mean()), float(train.std()) + 1e-9))
        return self

    def predict(self, x: Prompts) -> Array:
        parts = [
            (m.predict(x) - mean) / std
            for m, (mean, std) in zip(self.models, self._stats, strict=True)
        ]
        out: Array = np.mean(parts, axis=0)
        return out


def _knn(k: int) -> Callable[[], GainModel]:
    return lambda: KnnGain(k=k)


def _ridge(alpha: float, use_embedding: bool = True) -> Callable[[], GainModel]:
    return lambda: RidgeGain(alpha=alpha, use_embedding=use_embedding)


def _blend(k: int, alpha: float, features_alpha: float | None = None) -> Callable[[], GainModel]:
    """kNN + ridge on the embedding (+ ridge on the text features alone, if its alpha is given)."""
    if features_alpha is None:
        return lambda: BlendGain(KnnGain(k=k), RidgeGain(alpha=alpha))
    return lambda: BlendGain(
        KnnGain(k=k), RidgeGain(alpha=alpha), RidgeGain(alpha=features_alpha, use_embedding=False)
    )


def _text(c: float) -> Callable[[], GainModel]:
    return lambda: TextOddsGain(c=c)


def _with_text(make: Callable[[], GainModel], c: float) -> Callable[[], GainModel]:
    """``make``'s model(s) blended with ``TextOddsGain(c)``."""

    def build() -> GainModel:
        base = make()
        parts = base.models if isinstance(base, BlendGain) else (base,)
        return BlendGain(*parts, TextOddsGain(c=c))

    return build


def candidate_models() -> list[Callable[[], GainModel]]:
    """The grid ``select_gain_model`` chooses from."""
    return [
        *(_knn(k) for k in (16, 64, 256, 1024)),
        *(_ridge(alpha) for alpha in (30.0, 300.0, 3000.0, 10000.0)),
        *(_ridge(alpha, use_embedding=False) for alpha in (10.0, 100.0)),
        *(_blend(k, alpha) for k, alpha in ((64, 300.0), (256, 3000.0), (1024, 10000.0))),
        *(_blend(k, alpha, 100.0) for k, alpha in ((256, 3000.0), (1024, 10000.0))),
        *(_text(c) for c in (0.3, 1.0)),
        *(_with_text(_blend(k, alpha), 0.3) for k, alpha in ((256, 3000.0), (1024, 10000.0))),
        _with_text(_blend(1024, 10000.0, 100.0), 0.3),
        _with_text(_ridge(100.0, use_embedding=False), 0.3),
    ]


@dataclass(frozen=True)
class Selection:
    model: GainModel
    cv: dict[str, float]  # model name -> mean cross-validated APGR


def select_gain_model(
    x: Prompts,
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
    n = len(cheap)
    if n < 2 * folds:
        return Selection(grid[0]().fit(x, cheap, frontier), {})
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    cv: dict[str, float] = {}
    best: tuple[float, Callable[[], GainModel]] | None = None
    for make in grid:
        scores = []
        name = make().name
        for held in parts:
            train = np.setdiff1d(order, held)
            model = make().fit(x.take(train), cheap[train], frontier[train])
            predicted = model.predict(x.take(held))
            value = apgr(predicted, cheap[held], frontier[held])
            if not math.isnan(value):
                scores.append(value)
        cv[name] = float(np.mean(scores)) if scores else math.nan
        if best is None or cv[name] > best[0]:
            best = (cv[name], make)
    assert best is not None
    return Selection(best[1]().fit(x, cheap, frontier), cv)
