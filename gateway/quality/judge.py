"""An optional judge model that grades a sample of answers against a rubric, in the background.

Configured per task type (``quality.task_types.<task>.judge``: model alias, rubric, sample share).
A sampled answer is graded after the client has it: the judge never delays a request. Grading is
bounded (``quality.judge_concurrency`` calls at once, ``quality.judge_queue`` waiting; beyond that
answers are not graded), and a failed grading is logged, never raised. The judge only sees
prompts the team's residency allows it to: a judge outside the request's allowed regions is not
asked. Its grade (0..1) is the ``judge`` signal of the quality statistics.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from gateway.core.background import TaskSet
from gateway.policy.quality_config import JudgeConfig, QualityConfig
from gateway.telemetry.metrics import Metrics
from providers.errors import ProviderError

from .grading import grade

if TYPE_CHECKING:
    from gateway.core.context import RequestContext
    from gateway.core.decision import Decision
    from gateway.policy.catalog import Candidate
    from providers.base import Usage
    from providers.pool import ProviderPool

log = logging.getLogger(__name__)

GradeSink = Callable[["Decision", str, str, float], None]


class Judge:
    """Samples answers and grades them with the configured judge model."""

    def __init__(
        self,
        config: Callable[[], QualityConfig],
        pool: Callable[[], ProviderPool],
        candidates: Callable[[], Mapping[str, Candidate]],
        record: GradeSink,
        *,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        task_label: Callable[[str], str] | None = None,
    ) -> None:
        self._metrics = metrics
        self._task_label = task_label or str  # bounds the task label (the policy's, or other)
        self._config = config
        self._pool = pool
        self._candidates = candidates
        self._record = record
        self._rng = rng or random.Random()
        self._semaphore = asyncio.Semaphore(config().judge_concurrency)
        self._tasks = TaskSet()
        self.graded = 0
        self.failed = 0

    def consider(self, ctx: RequestContext, model: str, version: str, answer: str) -> None:
        """Maybe grade this answer (sampled); returns at once."""
        quality = self._config()
        config = quality.judge_for(ctx.task_type)
        if config is None or self._rng.random() >= config.sample:
            return
        judge = self._candidates().get(config.model)
        if judge is None:
            return
        decision = ctx.decision
        if ctx.allowed_regions is not None and judge.region not in ctx.allowed_regions:
            decision.quality["judge"] = {"skipped": "residency"}
            return
        if len(self._tasks) >= quality.judge_queue:
            decision.quality["judge"] = {"skipped": "queue full"}
            return
        grading = self._grade(config, judge, ctx.query_text, answer, decision, model, version)
        self._tasks.spawn(self._guarded(grading, decision), name="judge")

    async def _guarded(self, grading: Awaitable[None], decision: Decision) -> None:
        try:
            await grading
        except Exception:  # a background task: log, never raise into the void
            self.failed += 1
            log.exception("judge failed for %s", decision.request_id)

    async def _grade(
        self,
        config: JudgeConfig,
        judge: Candidate,
        question: str,
        answer: str,
        decision: Decision,
        model: str,
        version: str,
    ) -> None:
        async with self._semaphore:
            try:
                async with asyncio.timeout(config.timeout_s):
                    graded = await grade(self._pool(), judge, config.rubric, question, answer)
            except (ProviderError, TimeoutError) as exc:
                self.failed += 1
                code = getattr(exc, "code", "timeout")
                log.warning(
                    "judge %s failed for %s: %s", judge.model.name, decision.request_id, code
                )
                decision.quality["judge"] = {"error": code}
                return
        self._charge(decision, judge, graded.usage, graded.cost_usd)
        if graded.score is None:
            self.failed += 1
            log.warning("judge %s gave no 0..1 score for %s", judge.model.name, decision.request_id)
            decision.quality["judge"] = {"error": "no_score", "model": judge.model.name}
            return
        self.graded += 1
        self._record(decision, model, version, graded.score)
        decision.quality["judge"] = {
            "score": graded.score,
            "model": judge.model.name,
            "cost_usd": graded.cost_usd,
        }

    def _charge(self, decision: Decision, judge: Candidate, usage: Usage, cost: float) -> None:
        """Count what grading cost in the team's token and USD metrics under the judge's alias
        (the answer's own cost on its decision record stays the answer's)."""
        metrics = self._metrics
        if metrics is not None:
            labels = (decision.team, self._task_label(decision.task_type), judge.model.name)
            metrics.child(metrics.tokens, *labels, "prompt").inc(usage.prompt_tokens)
            metrics.child(metrics.tokens, *labels, "completion").inc(usage.completion_tokens)
            metrics.child(metrics.cost, *labels).inc(cost)

    @property
    def pending(self) -> int:
        """Gradings queued or in flight."""
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for the gradings in flight (tests, and a clean shutdown)."""
        await self._tasks.drain()

    async def close(self) -> None:
        await self._tasks.cancel()
