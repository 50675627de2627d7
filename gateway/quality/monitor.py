"""Quality per (model alias, served version, task type): signals in, scores and regressions out.

Three signals feed the same statistics, each counted as events, passes and a score sum:
``heuristic`` (every provider answer, gateway/quality/heuristics.py), ``feedback`` (``POST
/v1/feedback``) and ``judge`` (a sampled grading, gateway/quality/judge.py). Each (model, version,
task type, signal) has a ``PassRateDetector`` (gateway/quality/regression.py); when one fires, an
alert names the model, version, task type, signal, the size of the drop and the evidence, and the
(model, task type) is marked regressed. Where the policy says ``on_regression: demote`` for a route
or task type, the router skips a regressed model for that task type until ``POST
/admin/quality/promote``.

Replicas share counts and verdicts through Redis (gateway/quality/store.py) in a background sync;
detection runs on each replica's own traffic. Without Redis everything stays in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from gateway.core.background import stop_tasks
from gateway.core.decision import Decision
from gateway.policy.quality_config import QualityConfig
from gateway.policy.settings import Settings
from gateway.telemetry.alerts import Alerts
from gateway.telemetry.metrics import Metrics
from providers.base import Completion

from .heuristics import HeuristicResult, score_heuristics
from .regression import Evidence, FallbackWatch, PassRateDetector
from .store import Counts, QualityStoreError, RedisQualityStore, StatKey

if TYPE_CHECKING:
    from gateway.core.context import RequestContext
    from gateway.policy.catalog import Candidate, Catalog
    from providers.pool import ProviderPool

    from .judge import Judge

log = logging.getLogger(__name__)

SIGNALS = ("heuristic", "feedback", "judge")
# Explicit grades weigh more than heuristics; each signal's weight grows with its evidence,
# n / (n + CONFIDENCE_N), so five feedback events do not outvote a thousand heuristic ones.
SIGNAL_WEIGHTS = {"heuristic": 1.0, "feedback": 2.0, "judge": 2.0}
CONFIDENCE_N = 5.0
FEEDBACK_PASS_AT = 0.5
# Task types come from a client header: past this many distinct ones, new ones count as "other".
MAX_TASK_TYPES = 100


class QualityMonitor:
    """The quality statistics, detectors and verdicts of one gateway process."""

    def __init__(
        self,
        config: QualityConfig | None = None,
        *,
        alerts: Alerts | None = None,
        metrics: Metrics | None = None,
        store: RedisQualityStore | None = None,
    ) -> None:
        self.config = config or QualityConfig()
        self.alerts = alerts or Alerts()
        self.metrics = metrics or Metrics()
        self.store = store
        self.judge: Judge | None = None  # set by the app: grades a sample in the background
        self._totals: dict[StatKey, Counts] = {}
        self._pending: dict[StatKey, Counts] = {}  # not yet pushed to Redis
        self._detectors: dict[StatKey, PassRateDetector] = {}
        self._latest: dict[tuple[str, str], str] = {}  # (model, task) -> last served version
        self._regressed: dict[tuple[str, str], dict[str, Any]] = {}
        self._unpushed: list[tuple[str, str, dict[str, Any]]] = []
        self._generation = 0  # bumped by promote: a sync pull started before it is stale
        self._tasks: set[str] = set()
        self._catalog: Callable[[], Catalog] | None = None  # the policy's task types, once running
        self._fallbacks = FallbackWatch(self.config.fallback_alert)

    def configure(self, config: QualityConfig) -> None:
        """Apply a reloaded ``quality:`` section. Actions, judges and thresholds apply at once;
        running detectors keep their windows under the new detector settings."""
        if config.detector != self.config.detector:
            for detector in self._detectors.values():
                detector.configure(config.detector)
        self._fallbacks.config = config.fallback_alert
        self.config = config

    # -- signals in ------------------------------------------------------------------------
    def observe_completion(
        self, ctx: RequestContext, candidate: Candidate, completion: Completion
    ) -> HeuristicResult:
        """A non-streamed provider answer (the pipeline's hook)."""
        choices = completion.body.get("choices") or [{}]
        message = choices[0].get("message") or {}
        content = message.get("content")
        return self.observe_text(
            ctx,
            candidate,
            text=content if isinstance(content, str) else None,
            finish_reason=completion.finish_reason,
            tool_calls=bool(message.get("tool_calls")),
            refusal=message.get("refusal") or None,
        )

    def observe_text(
        self,
        ctx: RequestContext,
        candidate: Candidate,
        *,
        text: str | None,
        finish_reason: str | None,
        tool_calls: bool = False,
        refusal: str | None = None,
        stream_error: bool = False,
    ) -> HeuristicResult:
        """Score an answer's text with the heuristics, count it, offer it to the judge."""
        chat = ctx.chat
        wants_json = chat.wants_json
        schema = None
        if wants_json and chat.response_format is not None and chat.response_format.json_schema:
            schema = chat.response_format.json_schema.schema_
        result = score_heuristics(
            text,
            finish_reason=finish_reason,
            wants_json=wants_json,
            json_schema=schema,
            tool_calls=tool_calls,
            refusal=refusal,
            stream_error=stream_error,
        )
        version = ctx.decision.served_model or candidate.model.id
        self.observe_answer(
            ctx.decision, model=candidate.model.name, version=version, result=result
        )
        if self.judge is not None and text and not stream_error:
            self.judge.consider(ctx, candidate.model.name, version, text)
        return result

    def observe_answer(
        self,
        decision: Decision,
        *,
        model: str,
        version: str,
        result: HeuristicResult,
    ) -> None:
        """A provider's answer, scored by the heuristics (non-streamed or streamed)."""
        decision.quality["heuristic"] = result.to_dict()
        task = self._task(decision.task_type)
        metrics = self.metrics
        for flag in result.flags:
            metrics.child(metrics.quality_flags, model, self._label(task), flag).inc()
        self._observe(model, version, task, "heuristic", result.score, result.passed, decision)

    def observe_feedback(self, decision: Decision, score: float) -> bool:
        """A client's grade of one of its answers; only the first per request is counted."""
        if decision.served_by is None or decision.source != "provider":
            return False  # cache and knowledge answers have their own feedback loop
        previous = decision.quality.get("feedback")
        decision.quality["feedback"] = {"score": score}
        if previous is not None:
            return False
        version = decision.served_model or "unknown"
        task = self._task(decision.task_type)
        self._observe(
            decision.served_by,
            version,
            task,
            "feedback",
            score,
            score >= FEEDBACK_PASS_AT,
            decision,
        )
        return True

    def observe_judge(self, decision: Decision, model: str, version: str, score: float) -> None:
        """A judge model's grade of a sampled answer."""
        decision.quality["judge"] = {"score": score}
        task = self._task(decision.task_type)
        self._observe(model, version, task, "judge", score, score >= FEEDBACK_PASS_AT, decision)

    def _judged(self, decision: Decision, model: str, version: str, score: float) -> None:
        self.observe_judge(decision, model, version, score)

    def observe_request(self, decision: Decision) -> None:
        """Every request that reached a provider: the fallback-rate alert."""
        if not decision.attempts:
            return
        alert = self._fallbacks.observe(decision.route, decision.fallbacks > 0)
        if alert is not None:
            self.metrics.child(self.metrics.fallback_rate_alerts, decision.route).inc()
            self.alerts.emit(
                "fallback_rate",
                f"route {decision.route}: {alert['rate']:.0%} of the last {alert['requests']} "
                f"requests needed a fallback (threshold {alert['threshold']:.0%})",
                **alert,
            )

    def _label(self, task: str) -> str:
        """A task type as a metric label: one the policy defines, else ``other``, so a client's
        x-gateway-task names add no series (the statistics keep the name, ``_task``)."""
        return task if self._catalog is None else self._catalog().task_label(task)

    def _task(self, task_type: str) -> str:
        if task_type in self._tasks:
            return task_type
        if len(self._tasks) >= MAX_TASK_TYPES:
            return "other"
        self._tasks.add(task_type)
        return task_type

    def _observe(
        self,
        model: str,
        version: str,
        task: str,
        signal: str,
        score: float,
        passed: bool,
        decision: Decision,
    ) -> None:
        key = (model, version, task, signal)
        for table in (self._totals, self._pending) if self.store else (self._totals,):
            counts = table.get(key)
            if counts is None:
                counts = table[key] = [0.0, 0.0, 0.0]
            counts[0] += 1
            counts[1] += passed
            counts[2] += score
        previous = self._latest.get((model, task))
        self._latest[(model, task)] = version
        metrics = self.metrics
        verdict = "pass" if passed else "fail"
        metrics.child(metrics.quality_events, model, self._label(task), signal, verdict).inc()
        detector = self._detectors.get(key)
        if detector is None:
            detector = self._detectors[key] = PassRateDetector(self.config.detector)
            # A version the model had not served before starts from the old version's baseline:
            # a new release that is worse is caught from its first answers, not after 200.
            if previous is not None and previous != version:
                older = self._detectors.get((model, previous, task, signal))
                if older is not None:
                    detector.inherit(older, previous)
        evidence = detector.add(passed)
        if evidence is not None:
            self._fire(model, version, task, signal, evidence, decision.route)

    def _fire(
        self, model: str, version: str, task: str, signal: str, evidence: Evidence, route: str
    ) -> None:
        action = self.config.action_for(route, task)
        record = {
            "model": model,
            "version": version,
            "task_type": task,
            "signal": signal,
            "drop": round(evidence.drop, 4),
            "evidence": evidence.to_dict(),
            "on_regression": action,
            "route": route,
            "at": time.time(),
        }
        against = (
            f", against {evidence.baseline_version}'s baseline" if evidence.baseline_version else ""
        )
        self._regressed[(model, task)] = record
        self._unpushed.append((model, task, record))
        self.metrics.child(self.metrics.quality_regressions, model, self._label(task), signal).inc()
        self.alerts.emit(
            "quality_regression",
            f"{model} ({version}) on task {task}: {signal} pass rate fell from "
            f"{evidence.baseline_rate:.0%} to {evidence.recent_rate:.0%} "
            f"(-{evidence.drop:.0%}; CUSUM {evidence.cusum:.1f} > {evidence.threshold:g}, "
            f"z={evidence.z:.2f}; {evidence.recent_n} suspect vs {evidence.baseline_n} baseline "
            f"answers{against}); on_regression: {action}",
            **record,
        )

    # -- what the router and the admin API read --------------------------------------------
    def score(self, model: str, task_type: str) -> float | None:
        """The combined 0..1 quality of ``model``'s latest served version on ``task_type``
        (``None`` before any signal): the router's ``QualityScores``."""
        version = self._latest.get((model, task_type))
        return None if version is None else self.combined(model, version, task_type)

    def combined(self, model: str, version: str, task_type: str) -> float | None:
        weighted = weights = 0.0
        for signal in SIGNALS:
            counts = self._totals.get((model, version, task_type, signal))
            if not counts or counts[0] <= 0:
                continue
            n, _, total = counts
            weight = SIGNAL_WEIGHTS[signal] * n / (n + CONFIDENCE_N)
            weighted += weight * total / n
            weights += weight
        return weighted / weights if weights else None

    def demoted(self, route: str, model: str, task_type: str) -> str | None:
        """Why the router must skip ``model`` for ``task_type`` on ``route`` (``None``: keep)."""
        if not self._regressed:
            return None
        record = self._regressed.get((model, task_type))
        if record is None or self.config.action_for(route, task_type) != "demote":
            return None
        return (
            f"demoted: {record['signal']} quality regression of {model} ({record['version']}) "
            f"on task {task_type}, -{record['drop']:.0%}; POST /admin/quality/promote restores it"
        )

    def regressions(self) -> list[dict[str, Any]]:
        return list(self._regressed.values())

    async def promote(self, model: str, task_type: str) -> bool:
        """Clear a regression verdict (every replica, through Redis); whether there was one."""
        self._generation += 1
        found = self._regressed.pop((model, task_type), None) is not None
        self._unpushed = [u for u in self._unpushed if (u[0], u[1]) != (model, task_type)]
        for key in [k for k in self._detectors if k[0] == model and k[2] == task_type]:
            self._detectors[key].reset()
        if self.store is not None:
            try:
                await self.store.clear_regression(model, task_type)
            except QualityStoreError as exc:
                log.warning("quality store unavailable for promote (%s); local only", exc)
        return found

    def snapshot(self) -> dict[str, Any]:
        """Stats, detector states and verdicts: ``GET /admin/quality`` and the dashboard."""
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for (model, version, task, signal), (n, passes, total) in sorted(self._totals.items()):
            row = rows.setdefault(
                (model, version, task),
                {"model": model, "version": version, "task_type": task, "signals": {}},
            )
            detector = self._detectors.get((model, version, task, signal))
            row["signals"][signal] = {
                "n": int(n),
                "passes": int(passes),
                "pass_rate": round(passes / n, 4) if n else None,
                "mean": round(total / n, 4) if n else None,
                "detector": detector.state() if detector is not None else None,
            }
        for (model, version, task), row in rows.items():
            combined = self.combined(model, version, task)
            row["score"] = None if combined is None else round(combined, 4)
            row["latest"] = self._latest.get((model, task)) == version
            row["regressed"] = (model, task) in self._regressed
        return {
            "stats": list(rows.values()),
            "regressions": self.regressions(),
            "fallback_rates": {r: round(v, 4) for r, v in self._fallbacks.rates().items()},
        }

    # -- replicas --------------------------------------------------------------------------
    async def sync(self) -> None:
        """Push this replica's counts and verdicts, pull everyone's; refresh the gauges."""
        if self.store is not None:
            await self._sync_store(self.store)
        gauge = self.metrics.quality_score
        for (model, task), version in list(self._latest.items()):
            value = self.combined(model, version, task)
            # A task the policy does not define has no gauge: "other" would hold any of them.
            if value is not None and self._label(task) == task:
                self.metrics.child(gauge, model, task).set(value)

    async def _sync_store(self, store: RedisQualityStore) -> None:
        batch, self._pending = self._pending, {}
        unpushed, self._unpushed = self._unpushed, []
        generation = self._generation
        try:
            await store.push(batch)
            batch = {}
            for model, task, record in unpushed:
                await store.set_regression(model, task, record)
            unpushed = []
            totals = await store.pull()
            regressed = await store.regressions()
        except QualityStoreError as exc:
            log.warning("quality store unavailable (%s); keeping per-replica stats", exc)
            for key, counts in batch.items():
                pending = self._pending.setdefault(key, [0.0, 0.0, 0.0])
                for i, value in enumerate(counts):
                    pending[i] += value
            self._unpushed[:0] = unpushed
            return
        for key, counts in self._pending.items():  # observed while the sync was awaiting
            shared = totals.setdefault(key, [0.0, 0.0, 0.0])
            for i, value in enumerate(counts):
                shared[i] += value
        self._totals = totals
        for model, version, task, _ in totals:
            self._latest.setdefault((model, task), version)
        if generation == self._generation:
            regressed.update({(m, t): r for m, t, r in self._unpushed})
            self._regressed = regressed

    @contextlib.asynccontextmanager
    async def running(
        self, pool: Callable[[], ProviderPool], catalog: Callable[[], Catalog]
    ) -> AsyncIterator[QualityMonitor]:
        """The background sync (and the judge, when one is configured) for the app's
        lifetime; a final push on the way out."""
        from .judge import Judge

        self._catalog = catalog
        # Always there: it reads the current config, so a reload can add a judge.
        self.judge = Judge(
            lambda: self.config,
            pool,
            lambda: catalog().by_alias,
            self._judged,
            metrics=self.metrics,
            task_label=lambda task: catalog().task_label(task),
        )
        task = asyncio.create_task(self._sync_loop(), name="quality-sync")
        try:
            yield self
        finally:
            await stop_tasks([task])
            if self.judge is not None:
                await self.judge.close()
                self.judge = None
            if self.store is not None:
                with contextlib.suppress(QualityStoreError):
                    await self.store.push(self._pending)
                await self.store.close()

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sync_interval_s)
            try:
                await self.sync()
            except Exception:  # the loop must outlive any one bad sync
                log.exception("quality sync failed")


def quality_store(settings: Settings) -> RedisQualityStore | None:
    """The shared store for ``settings`` (``None`` without Redis: per-process statistics)."""
    if not settings.redis_url:
        return None
    return RedisQualityStore(settings.redis_url, prefix=settings.redis_prefix)
