"""RouteLLM's router metrics on a scored set of prompts.

Route the top-``c`` share of prompts, by the router's score, to the strong (frontier) model and
the rest to the weak (cheap) one. ``PGR(c) = (quality(c) - weak) / (strong - weak)``, where
``weak`` and ``strong`` are the mean qualities of always-weak and always-strong. ``APGR`` is the
area under PGR over ``c`` in [0, 1] (trapezoids over every prompt count); ``CPT(x)`` is the
smallest strong-call share whose PGR reaches ``x``.

Tied scores are routed as a random router would route them: a tied group's gain is spread
evenly over its members, so a constant score has APGR 0.5 exactly, whatever the input order.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]


def _tie_spread(scores: Array, values: Array) -> Array:
    """``values`` in descending score order, each tied group's values replaced by their mean
    (what a random tie-break gives in expectation)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    ordered = np.asarray(values, dtype=np.float64)[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sums = np.add.reduceat(ordered, starts)
    sizes = np.diff(np.r_[starts, len(ordered)])
    spread: Array = np.repeat(sums / sizes, sizes)
    return spread


def quality_curve(scores: Array, weak: Array, strong: Array) -> Array:
    """Mean quality when the ``k`` best-scored prompts go to the strong model, k = 0..n."""
    n = len(scores)
    if n == 0:
        return np.zeros(1)
    gain = _tie_spread(scores, np.asarray(strong, dtype=np.float64) - np.asarray(weak))
    curve: Array = (float(np.sum(weak)) + np.r_[0.0, np.cumsum(gain)]) / n
    return curve


def pgr_curve(scores: Array, weak: Array, strong: Array) -> Array:
    """PGR at each strong-call count k = 0..n (NaN when both models are equally good)."""
    curve = quality_curve(scores, weak, strong)
    low, high = float(np.mean(weak)), float(np.mean(strong))
    if len(scores) == 0 or math.isclose(low, high):
        return np.full_like(curve, math.nan)
    out: Array = (curve - low) / (high - low)
    return out


def apgr(scores: Array, weak: Array, strong: Array) -> float:
    pgr = pgr_curve(scores, weak, strong)
    if len(pgr) < 2 or np.isnan(pgr).any():
        return math.nan
    return float(np.sum((pgr[1:] + pgr[:-1]) / 2) / (len(pgr) - 1))


def cpt(scores: Array, weak: Array, strong: Array, target: float) -> float:
    """The smallest share of strong calls with PGR >= ``target`` (NaN if never)."""
    pgr = pgr_curve(scores, weak, strong)
    hits = np.flatnonzero(pgr >= target - 1e-12)
    return math.nan if len(hits) == 0 else float(hits[0] / (len(pgr) - 1))


def random_figures(weak: Array, strong: Array) -> tuple[float, float, float]:
    """(APGR, CPT(50 %), CPT(80 %)) of a random router, in expectation over every order: the
    same as one constant score (its PGR curve is the straight line, APGR 0.5)."""
    constant = np.zeros(len(weak))
    return (
        apgr(constant, weak, strong),
        cpt(constant, weak, strong, 0.5),
        cpt(constant, weak, strong, 0.8),
    )


def cost_to_reach(
    scores: Array,
    weak: Array,
    strong: Array,
    weak_cost: Array,
    strong_cost: Array,
    target_quality: float,
) -> tuple[float, float]:
    """(total cost, strong share) of the cheapest top-k routing whose mean quality reaches
    ``target_quality``; (NaN, NaN) if none does."""
    n = len(scores)
    curve = quality_curve(scores, weak, strong)
    extra = np.r_[0.0, np.cumsum(_tie_spread(scores, strong_cost - weak_cost))]
    costs = float(np.sum(weak_cost)) + extra
    ok = np.flatnonzero(curve >= target_quality - 1e-12)
    if len(ok) == 0:
        return math.nan, math.nan
    best = ok[np.argmin(costs[ok])]
    return float(costs[best]), float(best / n)
