"""One tiered route's state in the tier router: its knobs, outcomes, recent decisions and
trained model, and the reasons a tier is chosen (``gateway.tiering.router`` decides with it)."""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from gateway.policy.model import TieringConfig

from .deployed import TierModel
from .memory import CHEAP, FRONTIER, Memory, RollingQuantile

# Why a tier was chosen: a stable code (metrics, ``GET /admin/tiering``) and its sentence.
REASONS = {
    "only_tier": "only tier allowed",
    "no_gain": "no predicted gain",
    "share_cap": "frontier share at the {share:.0%} cap",
    "top_share": "predicted gain in the top share",
    "below_threshold": "predicted gain below the share's threshold",
    "exploration": "exploration",
}


@dataclass(frozen=True, slots=True)
class TierDecision:
    tier: str
    predicted_gain: float
    threshold: float
    explored: bool
    code: str  # a key of REASONS
    reason: str
    # The trained model's share of the predicted gain (None: the route has no model).
    model_share: float | None = None

    def record(self) -> dict[str, Any]:
        out = {
            "tier": self.tier,
            "predicted_gain": round(self.predicted_gain, 4),
            "threshold": round(self.threshold, 4),
            "explored": self.explored,
            "code": self.code,
            "reason": self.reason,
        }
        if self.model_share is not None:
            out["model_share"] = round(self.model_share, 4)
        return out


# The knob is a budget: while the frontier's share of the recent decisions is under it the
# threshold's quantile goes down by this many times the shortfall (and up when over it), so the
# route spends what it may instead of landing a few points under the knob (bench.router_live's
# in-process loop, 100 seeds: GSM8K 52.3 -> 53.1 % of prompts at knob 0.55, quality +0.3 points;
# 1 gave half of that, 3 and 5 no more). Not before this many decisions: their share is noise.
BUDGET_CATCH_UP = 2.0
BUDGET_MIN_DECISIONS = 20

_EPOCHS = itertools.count()


class RouteState:
    """A tiered route: config, memory of outcomes, recent gains and choices, trained model."""

    def __init__(self, config: TieringConfig, model: TierModel | None = None) -> None:
        self.epoch = next(_EPOCHS)  # a new state, a new number: what it learnt starts here
        self.config = config
        self.model = model  # a trained prior (``tiering.model``), swapped at a reload
        self.model_shares: deque[float] = deque(maxlen=config.window)  # of recent decisions
        self.memory = Memory(config.memory)
        self.gains = RollingQuantile(config.window)
        self.choices: deque[bool] = deque(maxlen=config.window)  # True: frontier
        self.decided: dict[str, int] = dict.fromkeys(REASONS, 0)  # decisions by code
        self.shared = 0  # outcomes learnt from other replicas
        # Other replicas' outcomes here (``TierRouter.apply``): key -> serial in memory, the
        # newest ``memory`` of them (older ones have left the ring anyway).
        self.remote: OrderedDict[str, int] = OrderedDict()

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /admin/tiering`` shows of one route."""
        memory, config = self.memory, self.config
        recent = self.gains.values()
        return {
            "config": config.model_dump(),
            "outcomes": {
                "remembered": min(memory.count, memory.size),
                "cheap": memory.filled[False],
                "frontier": memory.filled[True],
                "learnt": memory.count,
                "from_other_replicas": self.shared,
            },
            "feature_models": {
                CHEAP: memory.models[False] is not None,
                FRONTIER: memory.models[True] is not None,
            },
            "recent": {
                "decisions": len(self.choices),
                "frontier_share": round(sum(self.choices) / len(self.choices), 4)
                if self.choices
                else None,
                "threshold": round(self.threshold(0.0), 4) if recent else None,
                "predicted_gain": {
                    f"p{int(q * 100)}": round(self.gains.quantile(q), 4) for q in (0.1, 0.5, 0.9)
                }
                if recent
                else None,
            },
            "decisions": dict(self.decided),
            "model": self._model_snapshot(),
        }

    def threshold(self, gain: float) -> float:
        """The gain a request needs for the frontier: the ``1 - max_frontier_share`` quantile of
        the recent gains, that quantile lowered while the frontier's share of the recent
        decisions is under the knob and raised while it is over (``BUDGET_CATCH_UP`` times the
        gap). ``gain``: this request's, the threshold when there are no recent gains."""
        if not len(self.gains):
            return gain
        share = self.config.max_frontier_share
        q = 1.0 - share
        if len(self.choices) >= BUDGET_MIN_DECISIONS:
            recent = sum(self.choices) / len(self.choices)
            q = min(1.0, max(0.0, q - BUDGET_CATCH_UP * (share - recent)))
        return self.gains.quantile(q)

    def model_weight(self) -> float:
        """The outcomes the trained model's prediction counts for (``tiering.model_weight``,
        by default as many prompts as it was trained on)."""
        if self.model is None:
            return 0.0
        weight = self.config.model_weight
        return float(self.model.size if weight is None else weight)

    def model_share(self) -> float:
        """The trained model's share of a decision now: its weight against the evidence of
        the outcomes the route remembers (each counts its signal's weight: a graded outcome 1,
        a heuristic one 0.2)."""
        weight = self.model_weight()
        memory = self.memory
        live = float(memory.weight[: min(memory.count, memory.size)].sum())
        return float(weight / (weight + live)) if weight + live > 0 else 0.0

    def _model_snapshot(self) -> dict[str, Any] | None:
        if self.model is None:
            return None
        recent = self.model_shares
        return {
            **self.model.info(),
            "weight": self.model_weight(),
            "share_now": round(self.model_share(), 4),
            "share_recent_decisions": round(sum(recent) / len(recent), 4) if recent else None,
        }

    def reconfigure(self, config: TieringConfig) -> dict[int, int] | None:
        """Apply a reloaded route's ``tiering``; the outcomes and recent decisions stay (the
        newest of them when ``memory`` or ``window`` shrank). When the memory was rebuilt:
        each kept outcome's old serial -> its new one."""
        kept = None
        if config.memory != self.config.memory:
            self.memory, kept = self.memory.resized(config.memory)
        if config.window != self.config.window:
            gains = RollingQuantile(config.window)
            for gain in self.gains.values()[-config.window :]:
                gains.append(gain)
            self.gains = gains
            self.choices = deque(self.choices, maxlen=config.window)
            self.model_shares = deque(self.model_shares, maxlen=config.window)
        self.config = config
        return kept
