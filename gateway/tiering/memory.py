"""A tiered route's memory of outcomes, and a tier's expected quality from it.

The outcomes (embedding, text features, tier served, quality 0..1 and the signal's weight) sit in a
fixed-size ring (``Memory``). A tier's expected quality for a prompt is half its feature model
(``Linear``: a ridge of the tier's quality on the standardised text features, fitted from running
sums, ``Moments``) and half its neighbourhood (the softmax-weighted quality of its nearest
outcomes), outcomes of the same prompt outweighing both (``Memory.estimate``).
``gateway.tiering.router`` turns two such estimates into a tier choice; ``RollingQuantile`` keeps
its recent predicted gains.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .features import FEATURE_NAMES

Vector = npt.NDArray[np.float32]
Array = npt.NDArray[np.float64]

PRIOR_WEIGHT = 2.0  # pseudo-outcomes the prior counts for
# Neighbours weigh exp((sim - best sim) / scale). A broad neighbourhood (128 outcomes, scale 0.2)
# where the replay's kNN, which learns from both tiers' grades of every prompt, is sharp (0.05):
# with one tier graded per prompt, a sharp one averages a handful of noisy outcomes.
SIMILARITY_SCALE = 0.2
SAME_PROMPT = 0.97  # cosine similarity at which an outcome counts as the same prompt's
FEATURE_SHARE = 0.5  # the feature model's share of a tier's expected quality, once fitted
FEATURE_ALPHA = 100.0  # the feature model's ridge penalty (features standardised)
MIN_FIT = 32  # a tier's outcomes before its feature model is fitted
REFIT_EVERY = 64  # outcomes (new or regraded) between refits
CHEAP, FRONTIER = "cheap", "frontier"


@dataclass(frozen=True, slots=True)
class Linear:
    """A tier's feature model: quality ~ standardised features (ridge, weighted by signal)."""

    mean: Array
    scale: Array
    coef: Array
    intercept: float

    def predict(self, features: Array) -> float:
        value = float(np.dot((features - self.mean) / self.scale, self.coef)) + self.intercept
        return min(1.0, max(0.0, value))


class Moments:
    """One tier's weighted sums over its featured, graded outcomes: the ridge's sufficient
    statistics, updated as outcomes come, are graded again or leave the ring. A refit is then a
    31 x 31 solve (~0.5 ms, measured under load) instead of a pass over the ring (~3-18 ms for
    4,096 rows), so it can run on the event loop when a request ends."""

    def __init__(self, dim: int) -> None:
        self.rows = 0
        self.w, self.y = 0.0, 0.0
        self.x, self.xy = np.zeros(dim), np.zeros(dim)
        self.xx = np.zeros((dim, dim))

    def update(self, x: Array, y: float, w: float, sign: float) -> None:
        """Add (``sign`` 1) or remove (-1) one outcome."""
        if w <= 0:
            return
        self.rows += int(sign)
        ws = sign * w
        self.w += ws
        self.y += ws * y
        self.x += ws * x
        self.xy += ws * y * x
        self.xx += ws * np.outer(x, x)

    def update_many(self, x: Array, y: Array, w: Array) -> None:
        """Add several outcomes (rows of ``x``) at once."""
        keep = w > 0
        x, y, w = x[keep], y[keep], w[keep]
        self.rows += len(w)
        self.w += float(w.sum())
        self.y += float(w @ y)
        self.x += w @ x
        self.xy += (w * y) @ x
        self.xx += (x * w[:, None]).T @ x

    def fit(self, alpha: float) -> Linear | None:
        """The ridge of quality on the standardised features; ``None`` under ``MIN_FIT``."""
        if self.rows < MIN_FIT or self.w <= 0:
            return None
        mean = self.x / self.w
        y_mean = self.y / self.w
        cov = self.xx / self.w - np.outer(mean, mean)
        scale = np.sqrt(np.clip(np.diag(cov), 0.0, None)) + 1e-9
        gram = self.w * cov / np.outer(scale, scale) + alpha * np.eye(len(mean))
        rhs = (self.xy - self.w * y_mean * mean) / scale
        coef = np.linalg.solve(gram, rhs).astype(np.float64)
        return Linear(mean, scale, coef, y_mean)


class Memory:
    """A route's recent outcomes, a fixed-size ring of rows, and each tier's feature model."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.vectors: Vector | None = None
        self.features = np.zeros((size, len(FEATURE_NAMES)), dtype=np.float64)
        self.featured = np.zeros(size, dtype=bool)  # the row's features are known
        self.frontier = np.zeros(size, dtype=bool)
        # Each tier's rows, kept as outcomes come and go, so a decision reads them instead of
        # filtering the ring: ``rows[tier][:filled[tier]]``, a row's place there in ``place``.
        self.rows = {tier: np.zeros(size, dtype=np.intp) for tier in (False, True)}
        self.filled = {False: 0, True: 0}
        self.place = np.zeros(size, dtype=np.intp)
        self.quality = np.zeros(size, dtype=np.float64)
        self.weight = np.zeros(size, dtype=np.float64)
        self.count = 0
        self.moments = {tier: Moments(len(FEATURE_NAMES)) for tier in (False, True)}
        self.models: dict[bool, Linear | None] = {False: None, True: None}  # by is_frontier
        self._changes = 0

    def add(
        self, vector: Vector, features: Array | None, tier: str, quality: float, weight: float
    ) -> int:
        """Remember one outcome; its serial number (for ``regrade``)."""
        if self.vectors is None:
            self.vectors = np.zeros((self.size, len(vector)), dtype=np.float32)
        row = self.count % self.size
        if self.count >= self.size:
            self._moments(row, -1.0)  # the outcome this one replaces leaves the sums
            self._leave(row)
        self.vectors[row] = vector
        self.featured[row] = features is not None
        if features is not None:
            self.features[row] = features
        self.frontier[row] = is_frontier = tier == FRONTIER
        self.rows[is_frontier][self.filled[is_frontier]] = row
        self.place[row] = self.filled[is_frontier]
        self.filled[is_frontier] += 1
        self.quality[row] = quality
        self.weight[row] = weight
        self._moments(row, 1.0)
        self.count += 1
        self._changed()
        return self.count - 1

    def _leave(self, row: int) -> None:
        """Take a ring row out of its tier's rows (the last one takes its place)."""
        is_frontier = bool(self.frontier[row])
        rows = self.rows[is_frontier]
        self.filled[is_frontier] -= 1
        last = rows[self.filled[is_frontier]]
        rows[self.place[row]] = last
        self.place[last] = self.place[row]

    def resized(self, size: int) -> tuple[Memory, dict[int, int]]:
        """A memory of ``size`` holding this one's newest outcomes, in their order, with the
        feature models refitted; and each kept outcome's serial here -> its serial there."""
        new = Memory(size)
        serials = np.arange(max(0, self.count - min(self.size, size)), self.count)
        if self.vectors is None or len(serials) == 0:
            return new, {}
        old = serials % self.size  # their rows here, oldest first; there they fill rows 0..n-1
        n = len(old)
        new.vectors = np.zeros((size, self.vectors.shape[1]), dtype=np.float32)
        for mine, theirs in (
            (self.vectors, new.vectors),
            (self.features, new.features),
            (self.featured, new.featured),
            (self.frontier, new.frontier),
            (self.quality, new.quality),
            (self.weight, new.weight),
        ):
            theirs[:n] = mine[old]
        for is_frontier in (False, True):
            rows = np.flatnonzero(new.frontier[:n] == is_frontier)
            new.rows[is_frontier][: len(rows)] = rows
            new.place[rows] = np.arange(len(rows))
            new.filled[is_frontier] = len(rows)
            rows = rows[new.featured[rows]]
            new.moments[is_frontier].update_many(
                new.features[rows], new.quality[rows], new.weight[rows]
            )
        new.count = n
        new.refit()
        return new, dict(zip(serials.tolist(), range(n), strict=True))

    def regrade(self, serial: int, quality: float, weight: float) -> None:
        """A better signal for an outcome still in the ring (feedback after heuristics)."""
        if self.count - serial <= self.size:
            row = serial % self.size
            self._moments(row, -1.0)
            self.quality[row] = quality
            self.weight[row] = weight
            self._moments(row, 1.0)
            self._changed()

    def _moments(self, row: int, sign: float) -> None:
        if self.featured[row]:
            self.moments[bool(self.frontier[row])].update(
                self.features[row], float(self.quality[row]), float(self.weight[row]), sign
            )

    def _changed(self) -> None:
        self._changes += 1
        if self._changes >= REFIT_EVERY:
            self._changes = 0
            self.refit()

    def refit(self) -> None:
        """Each tier's feature model from its sums (at most once per ``REFIT_EVERY`` outcomes,
        when a request ends, never while deciding)."""
        for tier, moments in self.moments.items():
            self.models[tier] = moments.fit(FEATURE_ALPHA)

    def estimate(
        self, vector: Vector, features: Array | None, k: int, priors: tuple[float, float]
    ) -> tuple[float, float]:
        """Expected (cheap, frontier) quality of a prompt with this embedding and features."""
        bases = []
        for is_frontier, prior in zip((False, True), priors, strict=True):
            model = self.models[is_frontier]
            if model is None or features is None:
                bases.append((prior, False))
            else:
                bases.append((model.predict(features), True))
        n = min(self.count, self.size)
        if self.vectors is None or n == 0:
            return bases[0][0], bases[1][0]
        # A BLAS matrix-vector product on the one BLAS thread that ``gateway serve`` keeps
        # (background.single_thread_blas): 0.19 ms for 4,096 rows against einsum's 0.50 on a
        # loaded host. Elsewhere (tests, bench.router) BLAS may fan out: the same values.
        sims = self.vectors[:n] @ vector
        out = []
        for is_frontier, (base, fitted) in zip((False, True), bases, strict=True):
            rows = self.rows[is_frontier][: self.filled[is_frontier]]
            if len(rows) > k:
                rows = rows[np.argpartition(sims[rows], len(rows) - k)[len(rows) - k :]]
            if len(rows) == 0:
                out.append(base)
                continue
            near = sims[rows].astype(np.float64)
            graded = self.weight[rows]
            weights = np.exp((near - near.max()) / SIMILARITY_SCALE) * graded
            local = float(weights @ self.quality[rows]) / float(weights.sum())
            evidence = float(graded.sum())
            trust = evidence / (evidence + PRIOR_WEIGHT)
            neighbourhood = trust * local + (1 - trust) * base
            broad = (
                FEATURE_SHARE * base + (1 - FEATURE_SHARE) * neighbourhood
                if fitted
                else neighbourhood
            )
            # Outcomes of the same prompt (a repeat, a near-copy) outweigh everything else.
            same = near >= SAME_PROMPT
            if same.any():
                repeats = float(graded[same].sum())
                mean = float(graded[same] @ self.quality[rows][same]) / repeats
                broad += repeats / (repeats + PRIOR_WEIGHT) * (mean - broad)
            out.append(broad)
        return out[0], out[1]


class RollingQuantile:
    """Quantiles of the last ``size`` values: a sorted copy kept beside them in arrival order, so
    a quantile is two lookups (``np.quantile`` over a 500-value window took ~0.15 ms a decision).
    Linear interpolation between order statistics, as ``np.quantile``'s default."""

    def __init__(self, size: int) -> None:
        self._order: deque[float] = deque()
        self._sorted: list[float] = []
        self._size = size

    def __len__(self) -> int:
        return len(self._order)

    def values(self) -> list[float]:
        """The values, oldest first."""
        return list(self._order)

    def append(self, value: float) -> None:
        if len(self._order) == self._size:
            del self._sorted[bisect.bisect_left(self._sorted, self._order.popleft())]
        self._order.append(value)
        bisect.insort(self._sorted, value)

    def rank(self, value: float) -> float:
        """The share (0..1) of the values below ``value``, ties counting half."""
        if not self._sorted:
            return 0.5
        low = bisect.bisect_left(self._sorted, value)
        high = bisect.bisect_right(self._sorted, value)
        return (low + high) / 2 / len(self._sorted)

    def quantile(self, q: float) -> float:
        position = min(max(q, 0.0), 1.0) * (len(self._sorted) - 1)
        low = math.floor(position)
        high = min(low + 1, len(self._sorted) - 1)
        return self._sorted[low] + (self._sorted[high] - self._sorted[low]) * (position - low)
