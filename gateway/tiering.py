"""The learned tier router: cheap or frontier, per request, from outcomes of similar prompts.

For a route with ``tiering`` in policy, each request's embedding (the one the cache computes) is
compared with the route's remembered outcomes: (embedding, tier served, quality 0..1). The
expected quality of each tier is the similarity-weighted mean quality of its nearest outcomes
(softmax weights, as the offline replay's kNN), shrunk towards a prior (cold start: the cheap
tier at ``PRIOR_QUALITY``, the frontier at that plus the task type's ``frontier_gain``). The
predicted gain is their difference.

The frontier is worth its price only when the gain is positive and among the highest of the
route's recent requests: the threshold is the ``1 - max_frontier_share`` quantile of recent
predicted gains, and the frontier's share of recent decisions never goes over the knob. An
``exploration`` share of requests goes to the other tier so both keep being measured.

Outcomes arrive through one seam, ``observe(request_id, quality)``: when a request ends
(``quality_signal`` of its decision record: feedback, judge or heuristic scores from the quality
stage) or later (``POST /v1/feedback``).
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .catalog import Candidate
from .context import RequestContext
from .policy import Policy, TaskTypeConfig, TieringConfig
from .router import Plan

Vector = npt.NDArray[np.float32]

PRIOR_QUALITY = 0.7
PRIOR_WEIGHT = 2.0  # pseudo-outcomes the prior counts for
# Neighbours weigh exp((sim - best sim) / scale), as the offline replay's kNN (tier_model).
SIMILARITY_SCALE = 0.05
CHEAP, FRONTIER = "cheap", "frontier"
# The quality signals a decision record may carry, most trusted first, with the weight an
# outcome graded by each carries. Heuristics weigh little: a fluent wrong answer passes them
# (in bench/router_savings, counting them fully sent hard prompts to the cheap tier).
SIGNALS = {"feedback": 1.0, "judge": 1.0, "heuristic": 0.2}
_PENDING_MAX = 20_000


def quality_signal(quality: Mapping[str, Any]) -> tuple[float, float] | None:
    """(score 0..1, weight) of the most trusted signal in a decision's quality dict (a number,
    or a dict with a ``score``), ``None`` without one."""
    for name, weight in SIGNALS.items():
        value = quality.get(name)
        if isinstance(value, Mapping):
            value = value.get("score")
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
            return float(value), weight
    return None


def tier_of(candidate: Candidate) -> str:
    """``frontier`` for frontier models; everything else counts as the cheap side."""
    return FRONTIER if candidate.model.tier == FRONTIER else CHEAP


@dataclass(frozen=True, slots=True)
class TierDecision:
    tier: str
    predicted_gain: float
    threshold: float
    explored: bool
    reason: str

    def record(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "predicted_gain": round(self.predicted_gain, 4),
            "threshold": round(self.threshold, 4),
            "explored": self.explored,
            "reason": self.reason,
        }


class _Memory:
    """A route's recent outcomes, a fixed-size ring of rows."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.vectors: Vector | None = None
        self.frontier = np.zeros(size, dtype=bool)
        self.quality = np.zeros(size, dtype=np.float64)
        self.weight = np.zeros(size, dtype=np.float64)
        self.count = 0

    def add(self, vector: Vector, tier: str, quality: float, weight: float) -> int:
        """Remember one outcome; its serial number (for ``regrade``)."""
        if self.vectors is None:
            self.vectors = np.zeros((self.size, len(vector)), dtype=np.float32)
        row = self.count % self.size
        self.vectors[row] = vector
        self.frontier[row] = tier == FRONTIER
        self.quality[row] = quality
        self.weight[row] = weight
        self.count += 1
        return self.count - 1

    def regrade(self, serial: int, quality: float, weight: float) -> None:
        """A better signal for an outcome still in the ring (feedback after heuristics)."""
        if self.count - serial <= self.size:
            self.quality[serial % self.size] = quality
            self.weight[serial % self.size] = weight

    def estimate(self, vector: Vector, k: int, priors: tuple[float, float]) -> tuple[float, float]:
        """Expected (cheap, frontier) quality near ``vector``."""
        n = min(self.count, self.size)
        if self.vectors is None or n == 0:
            return priors
        # einsum, not ``@``: BLAS fans a matrix-vector product out to its threads, which on a
        # busy server costs milliseconds of waiting (p99 8 ms vs 0.3 ms single-threaded).
        sims = np.einsum("ij,j->i", self.vectors[:n], vector)
        out = []
        for is_frontier, prior in zip((False, True), priors, strict=True):
            rows = np.flatnonzero(self.frontier[:n] == is_frontier)
            if len(rows) > k:
                rows = rows[np.argpartition(-sims[rows], k - 1)[:k]]
            if len(rows) == 0:
                out.append(prior)
                continue
            near = sims[rows].astype(np.float64)
            graded = self.weight[rows]
            weights = np.exp((near - near.max()) / SIMILARITY_SCALE) * graded
            local = float(weights @ self.quality[rows]) / float(weights.sum())
            evidence = float(graded.sum())
            trust = evidence / (evidence + PRIOR_WEIGHT)
            out.append(trust * local + (1 - trust) * prior)
        return out[0], out[1]


class _RouteState:
    def __init__(self, config: TieringConfig) -> None:
        self.config = config
        self.memory = _Memory(config.memory)
        self.gains: deque[float] = deque(maxlen=config.window)
        self.choices: deque[bool] = deque(maxlen=config.window)  # True: frontier


class TierRouter:
    """Per-route tier choices and the outcomes they learn from."""

    def __init__(self, policy: Policy, *, seed: int | None = None) -> None:
        self._routes = {r.name: _RouteState(r.tiering) for r in policy.routes if r.tiering}
        self._tasks: Mapping[str, TaskTypeConfig] = policy.task_types
        # request id -> (route, embedding, tier served, serial of its outcome or -1)
        self._pending: OrderedDict[str, tuple[str, Vector, str, int]] = OrderedDict()
        self._rng = random.Random(seed)

    def enabled(self, route: str) -> bool:
        return route in self._routes

    def allowed_tiers(self, task_type: str) -> list[str] | None:
        task = self._tasks.get(task_type)
        return None if task is None or task.tiers is None else list(task.tiers)

    def decide(
        self, route: str, task_type: str, embedding: Vector | None, tiers: Iterable[str]
    ) -> TierDecision | None:
        """The tier for one request among the ``tiers`` its candidates offer; ``None`` when
        the route has no tiering or there is no choice to make."""
        state = self._routes.get(route)
        available = set(tiers)
        if state is None or not available:
            return None
        if len(available) == 1:
            only = available.pop()
            return TierDecision(only, 0.0, 0.0, False, "only tier allowed")
        task = self._tasks.get(task_type)
        prior_gain = task.frontier_gain if task is not None else 0.0
        priors = (PRIOR_QUALITY, min(1.0, max(0.0, PRIOR_QUALITY + prior_gain)))
        if embedding is None:
            cheap_q, frontier_q = priors
        else:
            cheap_q, frontier_q = state.memory.estimate(embedding, state.config.neighbours, priors)
        gain = frontier_q - cheap_q
        share = state.config.max_frontier_share
        threshold = _quantile(state.gains, 1 - share) if state.gains else gain
        state.gains.append(gain)
        frontier_share = sum(state.choices) / len(state.choices) if state.choices else 0.0
        if gain <= 0:
            tier, reason = CHEAP, "no predicted gain"
        elif share <= 0 or frontier_share >= share:
            tier, reason = CHEAP, f"frontier share at the {share:.0%} cap"
        elif gain >= threshold:
            tier, reason = FRONTIER, "predicted gain in the top share"
        else:
            tier, reason = CHEAP, "predicted gain below the share's threshold"
        explored = self._rng.random() < state.config.exploration
        if explored:
            tier = FRONTIER if tier == CHEAP else CHEAP
            reason = "exploration"
        state.choices.append(tier == FRONTIER)
        return TierDecision(tier, gain, threshold, explored, reason)

    def remember(self, request_id: str, route: str, embedding: Vector | None) -> None:
        """Keep the request's embedding until its served tier and quality are known."""
        if embedding is None or route not in self._routes:
            return
        self._pending[request_id] = (route, embedding, "", -1)
        while len(self._pending) > _PENDING_MAX:
            self._pending.popitem(last=False)

    def served(self, request_id: str, tier: str | None, signal: tuple[float, float] | None) -> None:
        """The request ended: which tier answered (``None``: none did), and any quality
        signal (score, weight)."""
        entry = self._pending.get(request_id)
        if entry is None:
            return
        if tier is None:
            del self._pending[request_id]
            return
        self._pending[request_id] = (entry[0], entry[1], tier, -1)
        if signal is not None:
            self.observe(request_id, *signal)

    def observe(self, request_id: str, quality: float, weight: float = 1.0) -> bool:
        """A quality score (0..1) for a served request, with the weight of its signal
        (``SIGNALS``); ``False`` if the request is unknown here. A later score (feedback after
        the heuristics) replaces the earlier one."""
        entry = self._pending.get(request_id)
        if entry is None or not entry[2]:
            return False
        route, embedding, tier, serial = entry
        memory = self._routes[route].memory
        if serial >= 0:
            memory.regrade(serial, quality, weight)
        else:
            self._pending[request_id] = (
                route,
                embedding,
                tier,
                memory.add(embedding, tier, quality, weight),
            )
        return True

    def outcomes(self, route: str) -> int:
        state = self._routes.get(route)
        return 0 if state is None else state.memory.count


def _quantile(values: Iterable[float], q: float) -> float:
    return float(np.quantile(np.fromiter(values, dtype=np.float64), min(max(q, 0.0), 1.0)))


def order_by_tier(
    candidates: list[Candidate], tier: str, allowed: list[str] | None
) -> list[Candidate]:
    """The chosen tier's candidates first (in their order), then the rest as fallback; tiers
    the task type does not allow are dropped unless nothing would be left."""
    kept = [c for c in candidates if allowed is None or c.model.tier in allowed] or candidates
    first = [c for c in kept if tier_of(c) == tier]
    return first + [c for c in kept if tier_of(c) != tier]


async def apply_tier(tiers: TierRouter | None, ctx: RequestContext, plan: Plan) -> Plan:
    """Reorder ``plan`` so the chosen tier is tried first; record the choice (decision record,
    ``x-gateway-tier``). A route without tiering keeps its plan untouched."""
    if tiers is None or not tiers.enabled(ctx.route.name):
        return plan
    allowed = tiers.allowed_tiers(ctx.task_type)
    candidates = [c for c in plan.ordered if allowed is None or c.model.tier in allowed]
    candidates = candidates or plan.ordered
    embedding = await ctx.query_embedding()
    decision = tiers.decide(
        ctx.route.name, ctx.task_type, embedding, {tier_of(c) for c in candidates}
    )
    if decision is None:
        return plan
    tiers.remember(ctx.request_id, ctx.route.name, embedding)
    ctx.notes["tier_of_model"] = {c.model.name: tier_of(c) for c in plan.ordered}
    ctx.decision.tiering = decision.record()
    ctx.headers["x-gateway-tier"] = decision.tier
    plan.ordered = order_by_tier(plan.ordered, decision.tier, allowed)
    return plan


def settle_tier(tiers: TierRouter | None, ctx: RequestContext) -> None:
    """At the end of a request: tell the tier router which tier answered and any quality."""
    if tiers is None or "tier_of_model" not in ctx.notes:
        return
    served = next((a.model for a in reversed(ctx.decision.attempts) if a.outcome == "ok"), None)
    tier = ctx.notes["tier_of_model"].get(served) if served else None
    if ctx.decision.tiering:
        ctx.decision.tiering["served_tier"] = tier
    tiers.served(ctx.request_id, tier, quality_signal(ctx.decision.quality))
