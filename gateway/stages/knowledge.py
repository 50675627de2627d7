"""The knowledge base as a pipeline stage: curated answers and reference material.

``before`` embeds nothing itself (it uses the request's one embedding), runs one search with the
caller's ACL filter inside Qdrant (retrieval/search.py) and then:

1. the nearest curated FAQ entry is the answer when the calibrated decision says so
   (knowledge_answer.py: lexical guard, margin over the runner-up, score bands set by
   ``max_error_rate``, a yes/no verification by the cheapest allowed model in the uncertain band,
   entries withdrawn by feedback): an OpenAI ``chat.completion`` with the answer and its
   citation, served as ``knowledge:<kb>``, with no provider call other than the verification
   (only for a plain question: no tools, no JSON mode, first user turn, and a turn the embedder
   sees whole: past its window the similarity is that of the turn's beginning, whatever it asks
   after);
2. otherwise the passages at or above ``context_threshold`` are attached as one system message
   of delimited ``<source>`` blocks, marked as data and not instructions, and the request goes
   on with it (``ctx.chat`` is replaced);
3. otherwise the request goes on unchanged.

Fail-open: a store that is down, slow (``timeout_s``) or broken means "go on without it", with a
log line and ``knowledge_errors``; lookups are then skipped for ``retry_after_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from cache.embedder import Embedder
from gateway.core.context import KNOWLEDGE_UNAVAILABLE, QUERY_EXCEEDS_WINDOW, RequestContext
from gateway.policy.knowledge_config import (
    KnowledgeCalibration,
    KnowledgeConfig,
    KnowledgeSettings,
)
from gateway.policy.model import Policy
from gateway.policy.settings import Settings
from gateway.telemetry.metrics import Metrics
from providers.base import Completion
from retrieval.search import Access, Retrieved, access_filter, retrieve
from retrieval.store import Condition, KnowledgeStore, StoreUnavailable
from retrieval.stores import open_store

from .knowledge_answer import (
    DEFAULT_CALIBRATION,
    AnswerDecision,
    Bands,
    RecentAnswers,
    Served,
    Withdrawals,
    bands_for,
    decide,
)
from .knowledge_context import (
    KNOWLEDGE_HEADER,
    attach_context,
    direct_answer,
)
from .knowledge_verify import Verification, Verifier

log = logging.getLogger(__name__)

MISSING_RECHECK_S = 30.0  # an absent collection is looked for again after this long


def knowledge_off(headers: Mapping[str, str]) -> bool:
    """Whether the request asks for no knowledge lookup (``x-gateway-knowledge: off``); the cache
    scope keeps such requests apart (gateway/stages/cache_scope.py)."""
    return (headers.get(KNOWLEDGE_HEADER) or "").strip().lower() == "off"


class KnowledgeStage:
    """Interceptor: answers from curated FAQs, or attaches reference passages, per the
    ``knowledge:`` policy section; never fails a request (fail-open)."""

    def __init__(
        self,
        config: KnowledgeConfig,
        store: KnowledgeStore,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        verifier: Verifier | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.verifier = verifier  # None: no verified band (nothing to ask)
        self.errors = 0  # store failures and timeouts (also gateway_knowledge_errors)
        self.hits: Counter[str] = Counter()  # "answer", "context" (also gateway_knowledge_hits)
        # Answer decisions by outcome, verifications by answer, answers withdrawn by feedback
        # (also gateway_knowledge_answer_decisions, _verifications, _withdrawn).
        self.decisions: Counter[str] = Counter()
        self.verifications: Counter[str] = Counter()
        self.withdrawn = 0
        self.withdrawals = Withdrawals()
        self.recent = RecentAnswers()
        self._clock = clock
        self._settings: dict[tuple[str, str], KnowledgeSettings] = {}
        self._filters: dict[Access, Condition] = {}
        self._skip_until = 0.0  # after a failure, or while the collection is absent
        self._skip_failed = False  # whether that skip is a failure's (the cache must not store)
        self.writing = asyncio.Lock()  # one ingestion at a time (gateway/admin/knowledge.py)

    def refresh(self) -> None:
        """Look the store up again from the next request on (after this process wrote to it:
        a collection absent until now exists)."""
        self._skip_until = 0.0

    def settings_for(self, team: str, route: str) -> KnowledgeSettings:
        """The section's settings with the route's then the team's overrides (memoised: the
        policy is immutable)."""
        key = (team, route)
        found = self._settings.get(key)
        if found is None:
            found = self._settings[key] = self.config.settings_for(team, route)
        return found

    def _filter(self, access: Access) -> Condition:
        found = self._filters.get(access)
        if found is None:
            if len(self._filters) > 4096:  # region subsets from headers: bounded anyway
                self._filters.clear()
            found = self._filters[access] = access_filter(access)
        return found

    async def before(self, ctx: RequestContext) -> Completion | None:
        settings = self.settings_for(ctx.team.name, ctx.route.name)
        if not settings.enabled:
            return None
        if knowledge_off(ctx.request_headers):
            ctx.notes["knowledge"] = "off"
            ctx.headers[KNOWLEDGE_HEADER] = "off"
            return None
        if self._clock() < self._skip_until:
            ctx.notes["knowledge"] = "skipped"
            if self._skip_failed:
                ctx.notes[KNOWLEDGE_UNAVAILABLE] = True
            return None
        vector = await ctx.query_embedding()
        if vector is None:
            return None
        access = Access(ctx.team.name, ctx.allowed_regions, tuple(settings.kbs))
        try:
            async with asyncio.timeout(self.config.timeout_s):
                if not await self.store.exists():
                    self._skip_until = self._clock() + MISSING_RECHECK_S
                    self._skip_failed = False
                    ctx.notes["knowledge"] = "empty"
                    return None
                found = await retrieve(
                    self.store,
                    vector.tolist(),
                    self._filter(access),
                    top_k=settings.top_k,
                    context_threshold=settings.context_threshold,
                    direct_answers=settings.direct_answers and await _answerable(ctx),
                )
        except (StoreUnavailable, TimeoutError) as exc:
            self._failed(ctx, exc)
            return None
        except Exception as exc:  # a bug here must not fail the request: log it and go on
            log.exception("knowledge lookup failed for request %s", ctx.request_id)
            self._failed(ctx, exc)
            return None
        if found.faqs:
            answer = await self._decide(ctx, found, settings, vector)
            if answer is not None:
                return answer
        return self._apply(ctx, found, settings)

    async def after(self, ctx: RequestContext, completion: Completion) -> None:
        """Nothing to learn from a provider's answer."""

    async def close(self) -> None:
        """Release the store (the embedded engine's files and lock, or the client's session)."""
        try:
            await self.store.close()
        except StoreUnavailable as exc:
            log.warning("closing the knowledge store: %s", exc)

    # -- outcomes ---------------------------------------------------------------------------
    def _failed(self, ctx: RequestContext, exc: BaseException) -> None:
        self.errors += 1
        if self.metrics is not None:
            self.metrics.knowledge_errors.inc()
        self._skip_until = self._clock() + self.config.retry_after_s
        self._skip_failed = True
        ctx.notes["knowledge"] = "error"
        ctx.notes[KNOWLEDGE_UNAVAILABLE] = True
        reason = str(exc) or type(exc).__name__
        log.warning(
            "knowledge lookup unavailable (%s); request %s goes on without it, next try in %g s",
            reason,
            ctx.request_id,
            self.config.retry_after_s,
        )

    def _hit(self, kind: str) -> None:
        self.hits[kind] += 1
        if self.metrics is not None:
            self.metrics.child(self.metrics.knowledge_hits, kind).inc()

    def bands(self, settings: KnowledgeSettings, kb: str, verifier: str | None) -> Bands:
        """The bands of ``kb`` under ``settings`` (its calibration, else the default) when
        ``verifier`` (a model alias, or None) would be asked."""
        return bands_for(settings, self.calibration(kb), verifier)

    def calibration(self, kb: str) -> KnowledgeCalibration:
        return self.config.calibration.get(kb, DEFAULT_CALIBRATION)

    async def _decide(
        self, ctx: RequestContext, found: Retrieved, settings: KnowledgeSettings, vector: Any
    ) -> Completion | None:
        """The calibrated answer decision for the nearest curated entry; the answer when it
        serves, else ``None`` (the passages are attached as usual)."""
        best = found.faqs[0]
        kb = str(best.payload.get("kb", ""))
        verifier = self.verifier
        candidate = verifier.choose(ctx) if verifier is not None else None
        bands = self.bands(settings, kb, candidate.model.name if candidate is not None else None)
        decision = decide(
            ctx.query_text, found.faqs, bands, withdrawn=self.withdrawals, vector=vector
        )
        record = decision.record(bands)
        outcome = decision.outcome if decision.outcome == "direct" else "no"
        entry = decision.entry
        if decision.outcome == "verify" and verifier and candidate and entry is not None:
            timeout = self.config.verify_timeout_s
            verification = await verifier.verify(ctx, candidate, entry, timeout)
            record["verification"] = verification.record()
            self._verified(verification)
            outcome = "verified" if verification.answer == "yes" else "no"
            if outcome == "no":
                record["reason"] = f"verifier: {verification.answer}"
        label = outcome if outcome != "no" else "no_" + record["reason"].split(":")[0]
        self.decisions[label] += 1
        if self.metrics is not None:
            self.metrics.child(self.metrics.knowledge_answer_decisions, label).inc()
        ctx.decision.events.append({"type": "knowledge_decision", **record})
        if outcome == "no" or decision.entry is None:
            return None
        return self._serve(ctx, decision, vector, verified=outcome == "verified")

    def _serve(
        self, ctx: RequestContext, decision: AnswerDecision, vector: Any, *, verified: bool
    ) -> Completion:
        entry = decision.entry
        assert entry is not None
        self._hit("answer")
        kb = str(entry.payload.get("kb", ""))
        question = str(entry.payload.get("question", ""))
        if vector is not None:
            self.recent.add(ctx.request_id, Served(entry.id, kb, question, vector))
        answer = direct_answer(ctx, entry)
        ctx.headers[KNOWLEDGE_HEADER] = "answer;verified" if verified else "answer"
        return answer

    def _verified(self, verification: Verification) -> None:
        self.verifications[verification.answer] += 1
        if self.metrics is not None:
            self.metrics.child(self.metrics.knowledge_verifications, verification.answer).inc()

    def withdraw(self, request_id: str) -> bool:
        """Negative feedback on a direct answer this replica gave: its entry no longer answers
        that kind of question directly (knowledge_answer.Withdrawals). False when the request
        was not a direct answer here (or is too old to be remembered)."""
        served = self.recent.pop(request_id)
        if served is None:
            return False
        self.withdrawals.add(served.entry, served.kb, served.question, served.vector)
        self.withdrawn += 1
        if self.metrics is not None:
            self.metrics.knowledge_withdrawn.inc()
        log.info("knowledge entry %s withdrawn for a kind of question (feedback)", served.entry)
        return True

    def answer_report(self) -> dict[str, Any]:
        """Bands per kb (the section's own settings, with and without a verifier), decision
        and verification counts, withdrawn entries: the admin API's and dashboard's view."""
        kbs = sorted({*self.config.calibration, *(k for k in self.config.kbs if k != "*")})
        settings = KnowledgeSettings.model_validate(
            {name: getattr(self.config, name) for name in KnowledgeSettings.model_fields}
        )
        bands: dict[str, Any] = {}
        for kb in kbs or [""]:
            calibration = self.calibration(kb)
            row: dict[str, Any] = {
                "calibrated": kb in self.config.calibration,
                "no_verifier": self.bands(settings, kb, None).to_dict(),
                "unmeasured_verifier": self.bands(settings, kb, "").to_dict(),
            }
            for alias in calibration.verifiers:
                row[f"verifier:{alias}"] = self.bands(settings, kb, alias).to_dict()
            bands[kb or "default"] = row
        served = self.decisions["direct"] + self.decisions["verified"]
        total = sum(self.decisions.values())
        return {
            "max_error_rate": self.config.max_error_rate,
            "bands": bands,
            "decisions": dict(self.decisions),
            "direct_rate": served / total if total else None,
            "verifications": dict(self.verifications),
            "withdrawn_total": self.withdrawn,
            "withdrawn": self.withdrawals.listing(),
        }

    def _apply(
        self, ctx: RequestContext, found: Retrieved, settings: KnowledgeSettings
    ) -> Completion | None:
        if not found.passages:
            ctx.notes["knowledge"] = "none"
            return None
        used = attach_context(ctx, found.passages, settings.max_context_chars)
        self._hit("context")
        ctx.decision.events.append({"type": "knowledge_context", "chunks": len(used)})
        return None


async def _answerable(ctx: RequestContext) -> bool:
    """Whether a curated answer may be chosen for the request by similarity; a plain question
    the embedder does not see whole may not (the decision record says why)."""
    if not _plain_question(ctx):
        return False
    if not await ctx.query_fits():
        ctx.decision.events.append(
            {"type": "knowledge_answer_skipped", "reason": QUERY_EXCEEDS_WINDOW}
        )
        return False
    return True


def _plain_question(ctx: RequestContext) -> bool:
    """Whether a curated answer fits the request: a first question, in plain text, with no
    tools and no JSON mode (later turns may depend on the conversation: they get context)."""
    chat = ctx.chat
    if chat.tools or (chat.response_format and chat.response_format.type != "text"):
        return False
    return sum(1 for m in chat.messages if m.role in ("user", "assistant", "tool")) == 1


async def open_knowledge(
    settings: Settings,
    policy: Policy,
    embedder: Embedder | None,
    *,
    metrics: Metrics | None = None,
    store: KnowledgeStore | None = None,
    verifier: Verifier | None = None,
) -> KnowledgeStage | None:
    """The knowledge stage for ``policy``, or ``None`` when the policy has no (enabled)
    ``knowledge:`` section. Never raises for the store: an absent, locked or unreachable store
    is logged and looked up again later. ``store`` replaces the one the settings name."""
    config = policy.knowledge
    if config is None or not _enabled_anywhere(config):
        return None
    if store is None:
        store = open_store(
            collection=config.collection,
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key,
            path=settings.knowledge_path,
            engine=settings.knowledge_engine,
            timeout_s=max(1.0, config.timeout_s),
        )
    stage = KnowledgeStage(config, store, metrics=metrics, verifier=verifier)
    try:
        dim = await store.dim()
    except StoreUnavailable as exc:
        log.warning("knowledge store not available yet (%s); lookups will retry", exc)
        return stage
    if dim is None:
        log.info("knowledge base %s has no collection yet: run `gateway ingest`", store.description)
    elif embedder is not None and dim != embedder.dim:
        log.error(
            "knowledge collection %r holds %d-wide vectors but the embedder makes %d: disabled",
            config.collection,
            dim,
            embedder.dim,
        )
        await stage.close()
        return None
    else:
        log.info("knowledge base: %s, collection %r", store.description, config.collection)
    return stage


def _enabled_anywhere(config: KnowledgeConfig) -> bool:
    overrides = [*config.routes.values(), *config.teams.values()]
    return config.enabled or any(o.enabled for o in overrides)
