"""The learned tier router: cheap or frontier, per request, from outcomes of similar prompts.

For a route with ``tiering`` in policy, each request's embedding (the one the cache computes) and
its text features (``prompt_features``: length, numbers, options, ...) are compared with the
route's remembered outcomes: (embedding, features, tier served, quality 0..1). Each tier's
expected quality has two halves:

- its *feature model*: a ridge regression of the tier's quality on the standardised features,
  refitted every ``REFIT_EVERY`` outcomes once the tier has ``MIN_FIT`` of them. It carries
  what holds across the route (long multi-step questions are hard for the cheap tier);
- its *neighbourhood*: the similarity-weighted mean quality of its nearest outcomes (softmax
  weights over cosine similarity), shrunk towards the feature model's prediction. It carries
  what holds for one kind of prompt.

Outcomes of the same prompt (cosine similarity >= ``SAME_PROMPT``: a repeat) then outweigh both:
their mean, shrunk towards the two halves by their weight. Before a tier's feature model exists,
its place is taken by a prior (cold start: the cheap tier at ``PRIOR_QUALITY``, the frontier at
that plus the task type's ``frontier_gain``), and the neighbourhood alone is shrunk towards it.
The predicted gain is the frontier's expected quality minus the cheap tier's.
(``python -m bench.router`` replays this router on public outcome data, each prompt served by
one tier at random: held-out APGR in bench/README.md.)

The frontier is worth its price only when the gain is positive and among the highest of the
route's recent requests: the threshold is the ``1 - max_frontier_share`` quantile of recent
predicted gains, and the frontier's share of recent decisions never goes over the knob. An
``exploration`` share of requests goes to the other tier so both keep being measured.

Outcomes arrive through one seam, ``observe(request_id, quality)``: when a request ends
(``quality_signal`` of its decision record: feedback, judge or heuristic scores from the quality
stage) or later (``POST /v1/feedback``). Each one is also handed to ``on_outcome``, through which
``gateway.tier_sync`` shares it with the other replicas; theirs arrive through ``apply``.
A policy reload reaches the router through ``configure``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .catalog import Candidate
from .context import RequestContext
from .metrics import Metrics
from .policy import Policy, TaskTypeConfig, TieringConfig
from .prompt_features import FEATURE_NAMES, prompt_features
from .router import Plan

Vector = npt.NDArray[np.float32]
Array = npt.NDArray[np.float64]

PRIOR_QUALITY = 0.7
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

    def record(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "predicted_gain": round(self.predicted_gain, 4),
            "threshold": round(self.threshold, 4),
            "explored": self.explored,
            "code": self.code,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class _Linear:
    """A tier's feature model: quality ~ standardised features (ridge, weighted by signal)."""

    mean: Array
    scale: Array
    coef: Array
    intercept: float

    def predict(self, features: Array) -> float:
        value = float(np.dot((features - self.mean) / self.scale, self.coef)) + self.intercept
        return min(1.0, max(0.0, value))


class _Moments:
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

    def fit(self, alpha: float) -> _Linear | None:
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
        return _Linear(mean, scale, coef, y_mean)


class _Memory:
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
        self.moments = {tier: _Moments(len(FEATURE_NAMES)) for tier in (False, True)}
        self.models: dict[bool, _Linear | None] = {False: None, True: None}  # by is_frontier
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

    def resized(self, size: int) -> tuple[_Memory, dict[int, int]]:
        """A memory of ``size`` holding this one's newest outcomes, in their order, with the
        feature models refitted; and each kept outcome's serial here -> its serial there."""
        new = _Memory(size)
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


_EPOCHS = itertools.count()


class _RouteState:
    def __init__(self, config: TieringConfig) -> None:
        self.epoch = next(_EPOCHS)  # a new state, a new number: what it learnt starts here
        self.config = config
        self.memory = _Memory(config.memory)
        self.gains = _RollingQuantile(config.window)
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
        share = config.max_frontier_share
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
                "threshold": round(self.gains.quantile(1 - share), 4) if recent else None,
                "predicted_gain": {
                    f"p{int(q * 100)}": round(self.gains.quantile(q), 4) for q in (0.1, 0.5, 0.9)
                }
                if recent
                else None,
            },
            "decisions": dict(self.decided),
        }

    def reconfigure(self, config: TieringConfig) -> dict[int, int] | None:
        """Apply a reloaded route's ``tiering``; the outcomes and recent decisions stay (the
        newest of them when ``memory`` or ``window`` shrank). When the memory was rebuilt:
        each kept outcome's old serial -> its new one."""
        kept = None
        if config.memory != self.config.memory:
            self.memory, kept = self.memory.resized(config.memory)
        if config.window != self.config.window:
            gains = _RollingQuantile(config.window)
            for gain in self.gains.values()[-config.window :]:
                gains.append(gain)
            self.gains = gains
            self.choices = deque(self.choices, maxlen=config.window)
        self.config = config
        return kept


@dataclass(slots=True)
class _Pending:
    """A request whose outcome is not known yet (or may still be regraded)."""

    route: str
    embedding: Vector
    features: Array | None
    tier: str = ""  # the tier that answered, once known
    serial: int = -1  # its outcome's serial in the route's memory, once graded (GONE: forgotten)


GONE = -2  # a pending request's outcome that a reload dropped from its route's memory


@dataclass(frozen=True, slots=True)
class Outcome:
    """One graded outcome, as replicas share it (``gateway.tier_sync``); a later one with the
    same ``key`` grades the same request again."""

    route: str
    key: str
    embedding: Vector
    features: Array | None
    tier: str
    quality: float
    weight: float


class TierRouter:
    """Per-route tier choices and the outcomes they learn from."""

    def __init__(self, policy: Policy, *, seed: int | None = None) -> None:
        self._routes = {r.name: _RouteState(r.tiering) for r in policy.routes if r.tiering}
        self._tasks: Mapping[str, TaskTypeConfig] = policy.task_types
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # by request id
        self._rng = random.Random(seed)
        # Called with each outcome this replica learns (``gateway.tier_sync`` shares them), and
        # the replica's name in the shared streams (recorded with each choice).
        self.on_outcome: Callable[[Outcome], None] | None = None
        self.replica: str | None = None

    def configure(self, policy: Policy) -> None:
        """Apply a reloaded policy's routes. A route that keeps ``tiering`` keeps what it
        learnt (a smaller ``memory`` keeps the newest outcomes); one that gains it starts cold;
        one that loses it forgets. Task types apply at the next start, with the classifier."""
        routes: dict[str, _RouteState] = {}
        for route in policy.routes:
            if route.tiering is None:
                continue
            state = self._routes.get(route.name)
            if state is None:
                routes[route.name] = _RouteState(route.tiering)
                continue
            kept = state.reconfigure(route.tiering)
            if kept is not None:  # the outcomes were renumbered: so are the ones to regrade
                for entry in self._pending.values():
                    if entry.route == route.name and entry.serial >= 0:
                        entry.serial = kept.get(entry.serial, GONE)
                for key, serial in state.remote.items():
                    state.remote[key] = kept.get(serial, GONE)
            routes[route.name] = state
        for request_id in [r for r, e in self._pending.items() if e.route not in routes]:
            del self._pending[request_id]  # a route that lost tiering: its requests are moot
        self._routes = routes

    def memories(self) -> dict[str, int]:
        """Each tiered route's ``memory`` (how many outcomes it keeps)."""
        return {name: state.config.memory for name, state in self._routes.items()}

    def epochs(self) -> dict[str, int]:
        """Each tiered route's epoch: it changes when the route's state starts afresh (a
        route that lost ``tiering`` and gained it again)."""
        return {name: state.epoch for name, state in self._routes.items()}

    def knows(self, request_id: str, route: str) -> bool:
        """Whether this replica remembers the outcome of its own request ``request_id``."""
        entry = self._pending.get(request_id)
        return entry is not None and entry.route == route and entry.serial >= 0

    def enabled(self, route: str) -> bool:
        return route in self._routes

    def allowed_tiers(self, task_type: str) -> list[str] | None:
        task = self._tasks.get(task_type)
        return None if task is None or task.tiers is None else list(task.tiers)

    def predicted_gain(
        self, route: str, task_type: str, embedding: Vector | None, features: Array | None
    ) -> float:
        """The frontier's expected quality minus the cheap tier's for one prompt (no side
        effects; 0.0 for a route without tiering)."""
        state = self._routes.get(route)
        if state is None:
            return 0.0
        task = self._tasks.get(task_type)
        prior_gain = task.frontier_gain if task is not None else 0.0
        priors = (PRIOR_QUALITY, min(1.0, max(0.0, PRIOR_QUALITY + prior_gain)))
        if embedding is None:
            cheap_q, frontier_q = priors
        else:
            cheap_q, frontier_q = state.memory.estimate(
                embedding, features, state.config.neighbours, priors
            )
        return frontier_q - cheap_q

    def decide(
        self,
        route: str,
        task_type: str,
        embedding: Vector | None,
        tiers: Iterable[str],
        features: Array | None = None,
    ) -> TierDecision | None:
        """The tier for one request among the ``tiers`` its candidates offer; ``None`` when
        the route has no tiering or there is no choice to make. ``features``: the prompt's
        ``prompt_features`` (without them only the neighbourhood and the prior count)."""
        state = self._routes.get(route)
        available = set(tiers)
        if state is None or not available:
            return None
        if len(available) == 1:
            state.decided["only_tier"] += 1
            return TierDecision(available.pop(), 0.0, 0.0, False, "only_tier", REASONS["only_tier"])
        gain = self.predicted_gain(route, task_type, embedding, features)
        share = state.config.max_frontier_share
        threshold = state.gains.quantile(1 - share) if len(state.gains) else gain
        state.gains.append(gain)
        frontier_share = sum(state.choices) / len(state.choices) if state.choices else 0.0
        if gain <= 0:
            tier, code = CHEAP, "no_gain"
        elif share <= 0 or (share < 1 and frontier_share >= share):
            tier, code = CHEAP, "share_cap"
        elif share >= 1 or gain >= threshold:  # a knob of 1: every positive gain, no cap
            tier, code = FRONTIER, "top_share"
        else:
            tier, code = CHEAP, "below_threshold"
        explored = self._rng.random() < state.config.exploration
        if explored:
            tier = FRONTIER if tier == CHEAP else CHEAP
            code = "exploration"
        state.choices.append(tier == FRONTIER)
        state.decided[code] += 1
        reason = REASONS[code].format(share=share)
        return TierDecision(tier, gain, threshold, explored, code, reason)

    def snapshot(self) -> dict[str, Any]:
        """Each tiered route's knobs, outcomes, feature models and recent decisions."""
        return {name: state.snapshot() for name, state in self._routes.items()}

    def remember(
        self,
        request_id: str,
        route: str,
        embedding: Vector | None,
        features: Array | None = None,
    ) -> None:
        """Keep the request's embedding and features until its served tier and quality are
        known."""
        if embedding is None or route not in self._routes:
            return
        self._pending[request_id] = _Pending(route, embedding, features)
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
        entry.tier = tier
        if signal is not None:
            self.observe(request_id, *signal)

    def observe(self, request_id: str, quality: float, weight: float = 1.0) -> bool:
        """A quality score (0..1) for a served request, with the weight of its signal
        (``SIGNALS``); ``False`` if the request is unknown here. A later score (feedback after
        the heuristics) replaces the earlier one."""
        entry = self._pending.get(request_id)
        state = None if entry is None else self._routes.get(entry.route)
        if entry is None or state is None or not entry.tier:
            return False  # unknown, not served yet, or its route no longer has tiering
        if entry.serial >= 0:
            state.memory.regrade(entry.serial, quality, weight)
        elif entry.serial != GONE:
            entry.serial = state.memory.add(
                entry.embedding, entry.features, entry.tier, quality, weight
            )
        if self.on_outcome is not None:
            self.on_outcome(
                Outcome(
                    entry.route,
                    request_id,
                    entry.embedding,
                    entry.features,
                    entry.tier,
                    quality,
                    weight,
                )
            )
        return True

    def apply(self, outcome: Outcome) -> bool:
        """Learn another replica's outcome (or its new grade, by ``key``); ``False`` when its
        route has no tiering here or its embedding or features do not fit this route's."""
        state = self._routes.get(outcome.route)
        if state is None or outcome.tier not in (CHEAP, FRONTIER):
            return False
        memory = state.memory
        if memory.vectors is not None and outcome.embedding.shape != memory.vectors.shape[1:]:
            return False  # another embedding model's
        features = outcome.features
        if features is not None and features.shape != (len(FEATURE_NAMES),):
            features = None  # another version's text features: the neighbourhood still counts
        known = state.remote.get(outcome.key)
        if known is not None:
            if known >= 0:
                memory.regrade(known, outcome.quality, outcome.weight)
            return True
        serial = memory.add(
            outcome.embedding, features, outcome.tier, outcome.quality, outcome.weight
        )
        state.shared += 1
        state.remote[outcome.key] = serial
        while len(state.remote) > state.config.memory:
            state.remote.popitem(last=False)
        return True

    def regrade_shared(self, route: str, key: str, quality: float, weight: float) -> bool:
        """A new grade of another replica's outcome ``key`` this one remembers (a grade relayed
        through the stream: its own replica may be gone); ``False`` if it is not here."""
        state = self._routes.get(route)
        serial = None if state is None else state.remote.get(key)
        if state is None or serial is None or serial < 0:
            return False
        state.memory.regrade(serial, quality, weight)
        return True

    def outcomes(self, route: str) -> int:
        state = self._routes.get(route)
        return 0 if state is None else state.memory.count


class _RollingQuantile:
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

    def quantile(self, q: float) -> float:
        position = min(max(q, 0.0), 1.0) * (len(self._sorted) - 1)
        low = math.floor(position)
        high = min(low + 1, len(self._sorted) - 1)
        return self._sorted[low] + (self._sorted[high] - self._sorted[low]) * (position - low)


def order_by_tier(
    candidates: list[Candidate], tier: str, allowed: list[str] | None
) -> list[Candidate]:
    """The chosen tier's candidates first (in their order), then the rest as fallback; tiers
    the task type does not allow are dropped unless nothing would be left."""
    kept = [c for c in candidates if allowed is None or c.model.tier in allowed] or candidates
    first = [c for c in kept if tier_of(c) == tier]
    return first + [c for c in kept if tier_of(c) != tier]


async def apply_tier(
    tiers: TierRouter | None, ctx: RequestContext, plan: Plan, metrics: Metrics | None = None
) -> Plan:
    """Reorder ``plan`` so the chosen tier is tried first; record the choice (decision record,
    ``x-gateway-tier``, ``gateway_tier_decisions_total``). A route without tiering keeps its
    plan untouched."""
    if tiers is None or not tiers.enabled(ctx.route.name):
        return plan
    allowed = tiers.allowed_tiers(ctx.task_type)
    candidates = [c for c in plan.ordered if allowed is None or c.model.tier in allowed]
    candidates = candidates or plan.ordered
    embedding = await ctx.query_embedding()
    offered = {tier_of(c) for c in candidates}
    # The text features only where there is a choice to make (~50-250 us a prompt).
    features = np.array(prompt_features(ctx.query_text)) if len(offered) > 1 else None
    decision = tiers.decide(ctx.route.name, ctx.task_type, embedding, offered, features)
    if decision is None:
        return plan
    tiers.remember(ctx.request_id, ctx.route.name, embedding, features)
    ctx.notes["tier_of_model"] = {c.model.name: tier_of(c) for c in plan.ordered}
    ctx.decision.tiering = decision.record()
    if tiers.replica is not None:  # where its outcome lives (a grade sent elsewhere goes there)
        ctx.decision.tiering["replica"] = tiers.replica
    ctx.headers["x-gateway-tier"] = decision.tier
    if metrics is not None:
        route = ctx.route.name
        metrics.child(metrics.tier_decisions, route, decision.tier, decision.code).inc()
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
