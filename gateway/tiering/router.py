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
The predicted gain is the frontier's expected quality minus the cheap tier's (the estimate and
the outcomes it reads: ``gateway.tiering.memory``).
(``python -m bench.router`` replays this router on public outcome data, each prompt served by
one tier at random: held-out APGR in bench/README.md.)

The frontier is worth its price only when the gain is positive and among the highest of the
route's recent requests: the threshold is the ``1 - max_frontier_share`` quantile of recent
predicted gains, and the frontier's share of recent decisions never goes over the knob. An
``exploration`` share of requests goes to the other tier so both keep being measured.

Outcomes arrive through one seam, ``observe(request_id, quality)``: when a request ends
(``quality_signal`` of its decision record: feedback, judge or heuristic scores from the quality
stage) or later (``POST /v1/feedback``). Each one is also handed to ``on_outcome``, through which
``gateway.tiering.sync`` shares it with the other replicas; theirs arrive through ``apply``.
A policy reload reaches the router through ``configure``.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.context import RequestContext
from gateway.policy.catalog import Candidate
from gateway.policy.model import Policy, TaskTypeConfig
from gateway.routing.router import Plan
from gateway.telemetry.metrics import Metrics

from .deployed import TierModel, load_route_models
from .features import FEATURE_NAMES, prompt_features
from .memory import CHEAP, FRONTIER, Array, Vector
from .route_state import REASONS, RouteState, TierDecision

PRIOR_QUALITY = 0.7
# The quality signals a decision record may carry, most trusted first, with the weight an
# outcome graded by each carries. Heuristics weigh little: a fluent wrong answer passes them
# (in bench/router_savings, counting them fully sent hard prompts to the cheap tier).
SIGNALS = {"feedback": 1.0, "judge": 1.0, "heuristic": 0.2}
_PENDING_MAX = 20_000
# With a trained model, exploration is drawn among the requests whose gain ranks within this
# many quantile points of the threshold (at twice the rate when the band holds half the
# traffic): the model already covers the prompt space, so live outcomes pay most where the
# decision could go either way, and a flipped request there costs least (bench.router_live).
EXPLORE_BAND = 0.25


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
    """One graded outcome, as replicas share it (``gateway.tiering.sync``); a later one with the
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

    def __init__(
        self,
        policy: Policy,
        *,
        seed: int | None = None,
        models: Mapping[str, TierModel] | None = None,
    ) -> None:
        """``models``: each route's trained model (``load_route_models``, which the start and
        a reload call so a bad file is refused there); without them, routes naming a model load
        it here, relative paths from the working directory."""
        models = _models(policy, models)
        self._routes = {
            r.name: RouteState(r.tiering, models.get(r.name)) for r in policy.routes if r.tiering
        }
        self._tasks: Mapping[str, TaskTypeConfig] = policy.task_types
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # by request id
        self._rng = random.Random(seed)
        # Called with each outcome this replica learns (``gateway.tiering.sync`` shares them), and
        # the replica's name in the shared streams (recorded with each choice).
        self.on_outcome: Callable[[Outcome], None] | None = None
        self.replica: str | None = None

    def configure(self, policy: Policy, models: Mapping[str, TierModel] | None = None) -> None:
        """Apply a reloaded policy's routes. A route that keeps ``tiering`` keeps what it
        learnt (a smaller ``memory`` keeps the newest outcomes); one that gains it starts cold;
        one that loses it forgets. Each route's trained model is the one in ``models`` (freshly
        loaded: a reload swaps it). Task types apply at the next start, with the classifier."""
        models = _models(policy, models)
        routes: dict[str, RouteState] = {}
        for route in policy.routes:
            if route.tiering is None:
                continue
            state = self._routes.get(route.name)
            if state is None:
                routes[route.name] = RouteState(route.tiering, models.get(route.name))
                continue
            state.model = models.get(route.name)
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
        self,
        route: str,
        task_type: str,
        embedding: Vector | None,
        features: Array | None,
        text: str = "",
    ) -> float:
        """The frontier's expected quality minus the cheap tier's for one prompt (no side
        effects; 0.0 for a route without tiering). ``text``: the prompt, for a trained model."""
        state = self._routes.get(route)
        return 0.0 if state is None else self._gain(state, task_type, embedding, features, text)[0]

    def _gain(
        self,
        state: RouteState,
        task_type: str,
        embedding: Vector | None,
        features: Array | None,
        text: str,
    ) -> tuple[float, float | None]:
        """(predicted gain, the trained model's share of it or None without one).

        Without a model: the live estimate from the route's outcomes, from the task type's
        prior at a cold start. With one, its gain g_m is that prior (the cheap tier at its mean
        training quality, the frontier g_m above), and the result weighs g_m against the live
        estimate g_l as evidence: (W g_m + n g_l) / (W + n), W the model's weight (its training
        size unless ``model_weight``), n the outcomes the route remembers."""
        model = state.model
        if model is not None and embedding is not None and embedding.shape == (model.dim,):
            feats = features if features is not None else np.array(prompt_features(text))
            model_gain = model.gain(text, embedding, feats)
            cheap = model.cheap_quality
            priors = (cheap, min(1.0, max(0.0, cheap + model_gain)))
            # The live estimate starts from the model's prediction, not from the route's own
            # feature model: that is a ridge on the same features, learnt from one graded tier
            # per prompt where the model saw both on thousands; the neighbourhood and repeats
            # correct the model where live outcomes disagree with it (bench.router_live).
            cheap_q, frontier_q = state.memory.estimate(
                embedding, None, state.config.neighbours, priors
            )
            share = state.model_share()
            return share * model_gain + (1 - share) * (frontier_q - cheap_q), share
        task = self._tasks.get(task_type)
        prior_gain = task.frontier_gain if task is not None else 0.0
        priors = (PRIOR_QUALITY, min(1.0, max(0.0, PRIOR_QUALITY + prior_gain)))
        if embedding is None:
            cheap_q, frontier_q = priors
        else:
            cheap_q, frontier_q = state.memory.estimate(
                embedding, features, state.config.neighbours, priors
            )
        return frontier_q - cheap_q, (0.0 if model is not None else None)

    def decide(
        self,
        route: str,
        task_type: str,
        embedding: Vector | None,
        tiers: Iterable[str],
        features: Array | None = None,
        text: str = "",
    ) -> TierDecision | None:
        """The tier for one request among the ``tiers`` its candidates offer; ``None`` when
        the route has no tiering or there is no choice to make. ``features``: the prompt's
        ``prompt_features`` (without them only the neighbourhood and the prior count);
        ``text``: the prompt (a trained model reads it)."""
        state = self._routes.get(route)
        available = set(tiers)
        if state is None or not available:
            return None
        if len(available) == 1:
            state.decided["only_tier"] += 1
            return TierDecision(available.pop(), 0.0, 0.0, False, "only_tier", REASONS["only_tier"])
        gain, model_share = self._gain(state, task_type, embedding, features, text)
        if model_share is not None:
            state.model_shares.append(model_share)
        share = state.config.max_frontier_share
        threshold = state.threshold(gain)
        chance = state.config.exploration
        if state.model is not None and EXPLORE_BAND > 0 and len(state.gains):
            chance = _band_exploration(state.gains.rank(gain), 1 - share, chance)
        state.gains.append(gain)
        # The budget: of any `window` consecutive decisions, at most share x window go to the
        # frontier. Counted against the whole window from the first request, not against the
        # decisions so far: a cap on the share of the first few (1 of 1 is 100 %) sent top gains
        # to the cheap tier on noise (GSM8K in-process, 100 seeds: +0.2 points of quality).
        spent = sum(state.choices) + 1 > share * state.config.window
        if gain <= 0:
            tier, code = CHEAP, "no_gain"
        elif share <= 0 or (share < 1 and spent):
            tier, code = CHEAP, "share_cap"
            chance = 0.0  # exploring it would spend past the budget
        elif share >= 1 or gain >= threshold:  # a knob of 1: every positive gain, no cap
            tier, code = FRONTIER, "top_share"
        else:
            tier, code = CHEAP, "below_threshold"
        explored = self._rng.random() < chance
        if explored:
            tier = FRONTIER if tier == CHEAP else CHEAP
            code = "exploration"
        state.choices.append(tier == FRONTIER)
        state.decided[code] += 1
        reason = REASONS[code].format(share=share)
        return TierDecision(tier, gain, threshold, explored, code, reason, model_share)

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
        route has no tiering here. The caller checks that the same embedding model made it
        (``gateway.tiering.sync``); features of another width are left out."""
        state = self._routes.get(outcome.route)
        if state is None or outcome.tier not in (CHEAP, FRONTIER):
            return False
        memory = state.memory
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


def _band_exploration(rank: float, threshold: float, exploration: float) -> float:
    """The chance to explore a request whose gain has this ``rank`` (0..1) among the recent
    gains, the threshold's rank at ``threshold``: ``exploration`` spread over the band of
    ``EXPLORE_BAND`` either side of the threshold (clipped to 0..1), so that over the recent
    gains the route explores the same share as with ``exploration`` for every request."""
    low, high = max(0.0, threshold - EXPLORE_BAND), min(1.0, threshold + EXPLORE_BAND)
    if not low <= rank <= high or high <= low:
        return 0.0
    return min(1.0, exploration / (high - low))


def _models(policy: Policy, models: Mapping[str, TierModel] | None) -> Mapping[str, TierModel]:
    if models is not None:
        return models
    if not any(r.tiering and r.tiering.model for r in policy.routes):
        return {}
    return load_route_models(policy, Path.cwd())


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
    decision = tiers.decide(
        ctx.route.name, ctx.task_type, embedding, offered, features, ctx.query_text
    )
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
