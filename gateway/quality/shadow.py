"""Shadow traffic: a share of a task type's live requests also goes to a candidate model.

After the client's answer is complete, ``ShadowTraffic.mirror`` returns at once having at most
scheduled a background call; the client's answer is never delayed or changed, and the
candidate's answer is never returned to anyone. Both answers are scored with the checks
available live — the heuristics of ``gateway.quality.heuristics``, the task type's judge when one is
configured (``quality.task_types.<t>.judge``) and the candidate's agreement with the primary
answer — and kept as comparison statistics per (task type, candidate): ``GET /admin/shadow`` and
the ``gateway_shadow_*`` metrics.

Guarantees, each with its reason:

- **Residency.** The request's allowed regions (the team's, narrowed by ``x-gateway-regions``)
  bound the candidate and the judge exactly as they bound the router: an out-of-region candidate
  is never sent the prompt (counted as ``skipped_residency``).
- **Bounded.** At most ``max_in_flight`` shadow calls at once across all mirrors; a request that
  finds them all busy is not mirrored (``dropped``) rather than queued, so a slow candidate cannot
  build a backlog, and shadow calls hold at most that many of a provider's connections.
- **Isolated.** Shadow calls go straight to the pool: no fallback, no breakers, no cache; a
  failing candidate cannot open a live breaker or poison the cache.

Statistics are per process (each replica reports its own).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.core.background import TaskSet
from gateway.core.context import RequestContext
from gateway.core.percentiles import nearest_rank
from gateway.policy.catalog import Candidate, Catalog
from gateway.policy.quality_config import JudgeConfig
from gateway.policy.shadow_config import ShadowConfig, ShadowMirror
from gateway.telemetry.cost import usage_cost
from providers.base import Completion
from providers.errors import ProviderError
from providers.pool import ProviderPool
from providers.schema import ChatRequest

from .grading import conversation_text, grade
from .heuristics import score_completion_body

if TYPE_CHECKING:
    from gateway.core.runtime import Runtime

log = logging.getLogger(__name__)

MAX_KEYS = 500  # (task type, candidate) pairs kept; task types beyond fold into "other"
_LATENCIES = 1000  # latencies kept per side for p50/p95
_WORD = re.compile(r"\w+")


def agreement(a: str, b: str) -> float:
    """Word-overlap F1 of two answers (1.0: the same words; 0.0: none shared).

    Cheap (linear) and symmetric; two empty answers agree.
    """
    wa, wb = Tally(_WORD.findall(a.casefold())), Tally(_WORD.findall(b.casefold()))
    if not wa and not wb:
        return 1.0
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    precision, recall = common / sum(wa.values()), common / sum(wb.values())
    return 2 * precision * recall / (precision + recall)


def sampled(request_id: str, candidate: str, share: float) -> bool:
    """Whether this request is mirrored to ``candidate``: a stable hash of the pair, so the
    decision is reproducible from the decision record and independent across candidates."""
    digest = hashlib.blake2b(f"{request_id}:{candidate}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


@dataclass(slots=True)
class Side:
    """One model's answers to the mirrored requests."""

    answers: int = 0
    heuristic_passes: int = 0
    heuristic_score_sum: float = 0.0
    judged: int = 0
    judge_score_sum: float = 0.0
    cost_usd: float = 0.0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCIES))

    def to_dict(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "heuristic_pass_rate": _rate(self.heuristic_passes, self.answers),
            "heuristic_score_mean": _rate(self.heuristic_score_sum, self.answers),
            "judged": self.judged,
            "judge_score_mean": _rate(self.judge_score_sum, self.judged),
            "cost_usd": round(self.cost_usd, 8),
            "latency_p50_ms": _percentile(self.latencies_ms, 0.5),
            "latency_p95_ms": _percentile(self.latencies_ms, 0.95),
        }


def _rate(part: float, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _percentile(values: Iterable[float], q: float) -> float | None:
    value = nearest_rank(values, q)
    return None if value is None else round(value, 1)


@dataclass(slots=True)
class ShadowStats:
    """The comparison for one (task type, candidate)."""

    task_type: str
    candidate: str
    considered: int = 0  # provider-answered requests of the task type
    mirrored: int = 0  # sent to the candidate
    skipped_residency: int = 0
    skipped_same_model: int = 0  # the candidate itself answered the client
    dropped: int = 0  # every shadow slot busy
    errors: Tally[str] = field(default_factory=Tally)  # candidate failures by error code
    agreements: int = 0  # compared answers at or above the agreement threshold
    agreement_sum: float = 0.0
    primary: Side = field(default_factory=Side)
    shadow: Side = field(default_factory=Side)

    def to_dict(self) -> dict[str, Any]:
        compared = self.shadow.answers
        return {
            "task_type": self.task_type,
            "candidate": self.candidate,
            "considered": self.considered,
            "mirrored": self.mirrored,
            "skipped_residency": self.skipped_residency,
            "skipped_same_model": self.skipped_same_model,
            "dropped": self.dropped,
            "errors": dict(self.errors),
            "compared": compared,
            "agreement_rate": _rate(self.agreements, compared),
            "agreement_mean": _rate(self.agreement_sum, compared),
            "primary": self.primary.to_dict(),
            "candidate_answers": self.shadow.to_dict(),
        }


class ShadowTraffic:
    """Mirrors sampled requests to candidates in the background and keeps the comparison."""

    def __init__(self, config: ShadowConfig, registry: CollectorRegistry) -> None:
        self.config = config
        self._tasks = TaskSet()
        self._stats: dict[tuple[str, str], ShadowStats] = {}
        self._requests = Counter(
            "gateway_shadow_requests",
            "Shadow mirroring by outcome (mirrored, ok, error, skipped_residency, dropped, ...)",
            ["task_type", "candidate", "outcome"],
            registry=registry,
        )
        self._passes = Counter(
            "gateway_shadow_heuristic_passes",
            "Mirrored requests whose answer passed the heuristics, by side (primary, candidate)",
            ["task_type", "candidate", "side"],
            registry=registry,
        )
        self._agreement = Histogram(
            "gateway_shadow_agreement",
            "Word-overlap F1 of the candidate's answer with the primary answer",
            ["task_type", "candidate"],
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=registry,
        )

    def mirror(
        self,
        ctx: RequestContext,
        primary: Completion,
        served: Candidate,
        catalog: Catalog,
        pool: ProviderPool,
    ) -> None:
        """Maybe send this answered request to its task type's candidates; returns at once.

        ``catalog`` and ``pool``: the request's own (a policy reload may have replaced them).
        """
        calls = _Calls(pool, catalog.by_alias, catalog.policy.quality.judge_for)
        for entry in self.config.mirrors:
            if entry.task_type not in ("*", ctx.task_type):
                continue
            stats = self._stats_for(ctx.task_type, entry.candidate)
            stats.considered += 1
            if not sampled(ctx.request_id, entry.candidate, entry.share):
                continue
            outcome = self._admit(ctx, entry, served, stats, calls)
            ctx.decision.events.append(
                {"type": "shadow", "candidate": entry.candidate, "outcome": outcome}
            )
            self._requests.labels(stats.task_type, entry.candidate, outcome).inc()
            if outcome != "mirrored":
                continue
            self._tasks.spawn(
                self._guarded(self._compare(ctx, entry, primary, served, stats, calls), ctx, stats),
                name="shadow",
            )

    def _admit(
        self,
        ctx: RequestContext,
        entry: ShadowMirror,
        served: Candidate,
        stats: ShadowStats,
        calls: _Calls,
    ) -> str:
        candidate = calls.candidates.get(entry.candidate)
        if candidate is None:  # removed from the policy by a reload
            return "skipped_unknown"
        if candidate.model.name == served.model.name:
            stats.skipped_same_model += 1
            return "skipped_same_model"
        if ctx.allowed_regions is not None and candidate.region not in ctx.allowed_regions:
            stats.skipped_residency += 1
            return "skipped_residency"
        if len(self._tasks) >= self.config.max_in_flight:
            stats.dropped += 1
            return "dropped"
        stats.mirrored += 1
        return "mirrored"

    def _stats_for(self, task_type: str, candidate: str) -> ShadowStats:
        key = (task_type, candidate)
        if key not in self._stats and len(self._stats) >= MAX_KEYS:
            key = ("other", candidate)
        found = self._stats.get(key)
        if found is None:
            found = self._stats[key] = ShadowStats(*key)
        return found

    async def _guarded(
        self, comparison: Awaitable[None], ctx: RequestContext, stats: ShadowStats
    ) -> None:
        try:
            await comparison
        except Exception:  # a background task: log it, never raise into the void
            stats.errors["internal"] += 1
            log.exception("shadow comparison failed for %s", ctx.request_id)

    async def _compare(
        self,
        ctx: RequestContext,
        entry: ShadowMirror,
        primary: Completion,
        served: Candidate,
        stats: ShadowStats,
        calls: _Calls,
    ) -> None:
        candidate = calls.candidates[entry.candidate]
        chat = _unstreamed(ctx.chat)
        primary_ms = primary.wire_s * 1000 or (time.perf_counter() - ctx.started) * 1000
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                answer = await calls.pool.complete(candidate.target, chat)
        except (ProviderError, TimeoutError) as exc:
            code = exc.code if isinstance(exc, ProviderError) else "timeout"
            stats.errors[code] += 1
            self._requests.labels(stats.task_type, entry.candidate, "error").inc()
            return
        shadow_ms = (time.perf_counter() - started) * 1000
        self._requests.labels(stats.task_type, entry.candidate, "ok").inc()
        schema = _schema(chat)
        for side, completion, model, ms, label in (
            (stats.primary, primary, served, primary_ms, "primary"),
            (stats.shadow, answer, candidate, shadow_ms, "candidate"),
        ):
            result = score_completion_body(
                completion.body, wants_json=chat.wants_json, json_schema=schema
            )
            side.answers += 1
            side.heuristic_passes += result.passed
            side.heuristic_score_sum += result.score
            side.cost_usd += usage_cost(model.model, completion.usage)
            side.latencies_ms.append(ms)
            if result.passed:
                self._passes.labels(stats.task_type, entry.candidate, label).inc()
        score = agreement(_answer(primary), _answer(answer))
        stats.agreement_sum += score
        stats.agreements += score >= self.config.agreement_threshold
        self._agreement.labels(stats.task_type, entry.candidate).observe(score)
        if entry.judge:
            await self._judge(ctx, chat, primary, answer, stats, calls)

    async def _judge(
        self,
        ctx: RequestContext,
        chat: ChatRequest,
        primary: Completion,
        answer: Completion,
        stats: ShadowStats,
        calls: _Calls,
    ) -> None:
        config = calls.judge_for(ctx.task_type)
        judge = calls.candidates.get(config.model) if config is not None else None
        if config is None or judge is None:
            return
        if ctx.allowed_regions is not None and judge.region not in ctx.allowed_regions:
            return  # the judge would see the prompt too
        question = conversation_text(chat)
        for side, completion in ((stats.primary, primary), (stats.shadow, answer)):
            try:
                async with asyncio.timeout(config.timeout_s):
                    graded = await grade(
                        calls.pool, judge, config.rubric, question, _answer(completion)
                    )
            except (ProviderError, TimeoutError):
                stats.errors["judge"] += 1
                return
            if graded.score is not None:
                side.judged += 1
                side.judge_score_sum += graded.score

    def report(self) -> list[dict[str, Any]]:
        """The comparison per (task type, candidate), for ``GET /admin/shadow``."""
        return [stats.to_dict() for _, stats in sorted(self._stats.items())]

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for the shadow calls in flight (tests)."""
        await self._tasks.drain()

    async def close(self) -> None:
        await self._tasks.cancel()


@dataclass(frozen=True, slots=True)
class _Calls:
    """Where one request's shadow calls go: its own pool and catalog."""

    pool: ProviderPool
    candidates: Mapping[str, Candidate]
    judge_for: Callable[[str], JudgeConfig | None]


SHADOW = web.AppKey("shadow", ShadowTraffic)


def install_shadow(app: web.Application, config: ShadowConfig, registry: CollectorRegistry) -> None:
    """Mirror traffic as ``config`` says; shadow calls in flight are cancelled at shutdown,
    before the provider pools close."""
    shadow = app[SHADOW] = ShadowTraffic(config, registry)

    async def stop(_: web.Application) -> None:
        await shadow.close()

    app.on_shutdown.append(stop)


def mirror_answer(
    request: web.Request,
    runtime: Runtime,
    ctx: RequestContext,
    answer: Completion,
    served: Candidate,
) -> None:
    """The pipeline's hook, after the client's answer: mirror it if shadow mode is on."""
    shadow = request.app.get(SHADOW)
    if shadow is not None:
        shadow.mirror(ctx, answer, served, runtime.catalog, runtime.pool)


def _unstreamed(chat: ChatRequest) -> ChatRequest:
    """The request as sent to the primary (context attached by the knowledge base included),
    asked for in one piece: the comparison needs the whole answer, not a stream."""
    if not chat.stream:
        return chat
    body = {k: v for k, v in chat.raw.items() if k != "stream_options"}
    body["stream"] = False
    return ChatRequest.from_body(body)


def _schema(chat: ChatRequest) -> dict[str, Any] | None:
    fmt = chat.response_format
    if fmt is not None and fmt.json_schema is not None:
        return fmt.json_schema.schema_
    return None


def _answer(completion: Completion) -> str:
    choices = completion.body.get("choices") or [{}]
    message = choices[0].get("message") or {}
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    functions = [c.get("function") or {} for c in message.get("tool_calls") or [] if c]
    return " ".join(f"{f.get('name', '')} {f.get('arguments', '')}" for f in functions)
