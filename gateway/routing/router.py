"""Choosing and ordering a route's candidates before any call.

Filtering, in this order, each with a reason in the decision record:
residency (the team's regions, narrowed never widened by ``x-gateway-regions``), capability
(context estimate, tools, JSON mode, streaming), breakers (provider and model), Retry-After
embargoes. Ordering by the route's strategy: ``priority`` (as listed), ``latency`` (EWMA per
provider), ``cost`` (price of the estimated tokens), ``composite`` (weighted quality, latency,
cost).

Panic routing (Envoy's panic threshold): health never takes away a request's last candidates.
When every candidate that residency and capability allow is held back by a breaker or an
embargo, the plan keeps them all, ordered by how likely each is to have recovered, and says so
(``Plan.panic``); otherwise those candidates wait in ``Plan.resting`` for the attempt loop, which
falls back to them only after every healthy candidate failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.core.decision import CandidateVerdict
from gateway.core.errors import InvalidRequest, NoEligibleProvider
from gateway.policy.catalog import Candidate, Route
from gateway.policy.model import RoutingConfig, TeamConfig
from providers.schema import ChatRequest, content_text

from .breakers import BreakerBoard
from .hedging import FirstByteLatency, HedgeBudget

NEUTRAL_QUALITY = 0.5
DEFAULT_OUTPUT_TOKENS = 256


class QualityScores(Protocol):
    """Quality of a model for a task type, 0..1; ``None`` when nothing is known yet."""

    def score(self, model: str, task_type: str) -> float | None: ...


class Demotions(Protocol):
    """Models demoted for a task type after a quality regression (gateway/quality/monitor.py)."""

    def demoted(self, route: str, model: str, task_type: str) -> str | None:
        """Why ``model`` must be skipped for ``task_type`` on ``route``; ``None`` to keep it."""
        ...


@dataclass(slots=True)
class Plan:
    """The candidates to try, in order, and the verdict on every candidate of the route."""

    ordered: list[Candidate]
    verdicts: list[CandidateVerdict]
    strategy: str
    # Allowed candidates held back by a breaker or an embargo, most likely recovered first.
    resting: list[Candidate] = field(default_factory=list)
    panic: bool = False  # ``ordered`` is made of resting candidates: no healthy one was left


def estimate_tokens(chat: ChatRequest) -> tuple[int, int]:
    """(prompt, output) token estimates: ~4 characters a token, the client's output limit."""
    chars = sum(len(content_text(m.content)) + 16 for m in chat.messages)
    if chat.tools:
        chars += sum(
            len(t.function.name) + len(str(t.function.parameters or "")) for t in chat.tools
        )
    return chars // 4 + 1, chat.output_limit or DEFAULT_OUTPUT_TOKENS


def breaker_keys(candidate: Candidate) -> tuple[str, str]:
    return f"provider:{candidate.provider.name}", f"model:{candidate.model.name}"


class Router:
    """Plans each request's attempts; keeps the latency EWMA that the ``latency`` strategy reads."""

    def __init__(
        self,
        config: RoutingConfig,
        board: BreakerBoard,
        quality: QualityScores | None = None,
        demotions: Demotions | None = None,
    ) -> None:
        self.config = config
        self.board = board
        self.quality = quality
        self.demotions = demotions
        self._latency: dict[str, float] = {}
        self.first_byte = FirstByteLatency()  # per model, for percentile hedging
        self.hedges = HedgeBudget(config.hedge_max_share)

    def observe_latency(self, provider: str, seconds: float) -> None:
        previous = self._latency.get(provider)
        alpha = self.config.latency_alpha
        self._latency[provider] = (
            seconds if previous is None else alpha * seconds + (1 - alpha) * previous
        )

    def latency_of(self, provider: str) -> float | None:
        return self._latency.get(provider)

    def plan(
        self,
        route: Route,
        team: TeamConfig,
        chat: ChatRequest,
        *,
        task_type: str,
        regions: Sequence[str] | None = None,
        strategy: str = "priority",
    ) -> Plan:
        allowed = allowed_regions(team.regions, regions)
        prompt_tokens, output_tokens = estimate_tokens(chat)
        verdicts: list[CandidateVerdict] = []
        kept: list[Candidate] = []
        resting: list[Candidate] = []
        for candidate in route.candidates:
            reason = self._drop_reason(candidate, chat, allowed, prompt_tokens + output_tokens)
            health = None if reason is not None else self.health_reason(candidate)
            verdicts.append(
                CandidateVerdict(
                    model=candidate.model.name,
                    provider=candidate.provider.name,
                    region=candidate.region,
                    kept=reason is None and health is None,
                    reason=reason or health or "eligible",
                )
            )
            if reason is None:
                (kept if health is None else resting).append(candidate)
        resting = self.by_recovery(resting)
        by_model = {v.model: v for v in verdicts}
        demoted_kept: set[str] = set()
        if self.demotions is not None and kept:
            kept, demoted_kept = self._demote(route, task_type, kept, verdicts)
        if not kept and resting:
            for rank, candidate in enumerate(resting, start=1):
                verdict = by_model[candidate.model.name]
                verdict.kept = True
                verdict.reason = f"panic rank {rank} (most likely recovered first): " + (
                    verdict.reason
                )
            return Plan(ordered=resting, verdicts=verdicts, strategy=strategy, panic=True)
        if not kept:
            _refuse_oversized(route, chat, prompt_tokens, output_tokens, verdicts)
            refused = NoEligibleProvider(_nothing_left(route, verdicts, allowed))
            refused.verdicts = verdicts  # for the decision record and the failure log line
            raise refused
        ordered = self._order(kept, strategy, route, task_type, prompt_tokens, output_tokens)
        for rank, (candidate, score) in enumerate(ordered, start=1):
            verdict = by_model[candidate.model.name]
            verdict.score = score
            verdict.reason = f"rank {rank} by {strategy}"
            if candidate.model.name in demoted_kept:
                verdict.reason += "; demoted but kept: no other candidate is eligible"
        return Plan(
            ordered=[c for c, _ in ordered], verdicts=verdicts, strategy=strategy, resting=resting
        )

    def health_reason(self, candidate: Candidate) -> str | None:
        """Why a breaker or an embargo holds ``candidate`` back now, or ``None``."""
        for key in breaker_keys(candidate):
            if blocked := self.board.blocked(key):
                return blocked
        if (left := self.board.embargoed_for(candidate.provider.name)) is not None:
            return f"embargo: {candidate.provider.name} asked to wait {left:.1f} s (Retry-After)"
        return None

    def by_recovery(self, candidates: list[Candidate]) -> list[Candidate]:
        """Most likely recovered first (stable: ties keep the route's order)."""
        board = self.board
        return sorted(candidates, key=lambda c: board.recovery_s(breaker_keys(c), c.provider.name))

    def _demote(
        self,
        route: Route,
        task_type: str,
        kept: list[Candidate],
        verdicts: list[CandidateVerdict],
    ) -> tuple[list[Candidate], set[str]]:
        """Drop candidates demoted for this task type, unless that would leave none."""
        assert self.demotions is not None
        reasons = {
            c.model.name: reason
            for c in kept
            if (reason := self.demotions.demoted(route.name, c.model.name, task_type))
        }
        if not reasons:
            return kept, set()
        remaining = [c for c in kept if c.model.name not in reasons]
        if not remaining:
            return kept, set(reasons)
        for verdict in verdicts:
            if verdict.model in reasons:
                verdict.kept, verdict.reason = False, reasons[verdict.model]
        return remaining, set()

    def _drop_reason(
        self,
        candidate: Candidate,
        chat: ChatRequest,
        allowed: frozenset[str] | None,
        tokens: int,
    ) -> str | None:
        model = candidate.model
        if allowed is not None and candidate.region not in allowed:
            return (
                f"residency: region {candidate.region} not allowed ({', '.join(sorted(allowed))})"
            )
        if tokens > model.context_window:
            return f"capability: ~{tokens} tokens exceed the {model.context_window}-token window"
        if chat.tools and not model.supports_tools:
            return "capability: no tool calling"
        if chat.wants_json and not model.supports_json:
            return "capability: no JSON mode"
        if chat.stream and not model.supports_streaming:
            return "capability: no streaming"
        return None

    def _order(
        self,
        kept: list[Candidate],
        strategy: str,
        route: Route,
        task_type: str,
        prompt_tokens: int,
        output_tokens: int,
    ) -> list[tuple[Candidate, float | None]]:
        if strategy == "priority" or len(kept) == 1:
            return [(c, None) for c in kept]
        costs = [
            (prompt_tokens * c.model.price.input + output_tokens * c.model.price.output) / 1e6
            for c in kept
        ]
        known = [v for c in kept if (v := self._latency.get(c.provider.name)) is not None]
        # Unmeasured providers are assumed as fast as the best measured one, so they get tried.
        floor = min(known) if known else 0.0
        latencies = [self._latency.get(c.provider.name, floor) for c in kept]
        if strategy == "latency":
            scores = [-lat for lat in latencies]
        elif strategy == "cost":
            scores = [-cost for cost in costs]
        else:
            weights = route.weights
            top_latency = max(latencies) or 1.0
            top_cost = max(costs) or 1.0
            scores = [
                weights.quality * self._quality(c, task_type)
                + weights.latency * (1 - lat / top_latency)
                + weights.cost * (1 - cost / top_cost)
                for c, lat, cost in zip(kept, latencies, costs, strict=True)
            ]
        # Stable: ties keep the listed order.
        ranked = sorted(zip(kept, scores, strict=True), key=lambda pair: -pair[1])
        return [(c, round(s, 6)) for c, s in ranked]

    def _quality(self, candidate: Candidate, task_type: str) -> float:
        if self.quality is None:
            return NEUTRAL_QUALITY
        score = self.quality.score(candidate.model.name, task_type)
        return NEUTRAL_QUALITY if score is None else score


def allowed_regions(
    team_regions: list[str] | None, requested: Sequence[str] | None
) -> frozenset[str] | None:
    """The team's regions, narrowed (never widened) by the request's header."""
    if requested is None:
        return None if team_regions is None else frozenset(team_regions)
    narrowed = frozenset(requested)
    return narrowed if team_regions is None else narrowed & frozenset(team_regions)


def _refuse_oversized(
    route: Route,
    chat: ChatRequest,
    prompt_tokens: int,
    output_tokens: int,
    verdicts: list[CandidateVerdict],
) -> None:
    """A request no candidate's context window can hold breaks a limit of its own: a 400 that
    names the field at fault (the prompt, or the output it asks for), not a 503."""
    if not all(v.reason.startswith("capability: ~") for v in verdicts):
        return
    largest = max(c.model.context_window for c in route.candidates)
    if prompt_tokens <= largest and chat.output_limit is not None:
        field = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
        raise InvalidRequest(
            f"{field}={output_tokens} with a prompt of ~{prompt_tokens} tokens exceeds the "
            f"largest context window of model {route.name!r} ({largest} tokens).",
            param=field,
            code="context_length_exceeded",
        )
    raise InvalidRequest(
        f"The prompt (~{prompt_tokens} tokens) exceeds the largest context window of model "
        f"{route.name!r} ({largest} tokens).",
        param="messages",
        code="context_length_exceeded",
    )


def _nothing_left(
    route: Route, verdicts: list[CandidateVerdict], allowed: frozenset[str] | None
) -> str:
    """The caller's message: its own candidates by name; the ones outside its allowed regions only
    counted (another scope's providers and regions are not its business)."""
    own = [v for v in verdicts if not v.reason.startswith("residency")]
    outside = len(verdicts) - len(own)
    parts = [f"{v.model}: {v.reason}" for v in own]
    if outside:
        parts.append(f"{outside} candidate(s) outside the allowed regions (residency)")
    prefix = f"No candidate of route {route.name!r} can take this request"
    if allowed is not None and not own:
        prefix += f" within the allowed regions ({', '.join(sorted(allowed)) or 'none'})"
    return f"{prefix}: {'; '.join(parts)}"
