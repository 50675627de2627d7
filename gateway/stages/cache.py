"""The semantic cache as a pipeline stage: exact path, then the request's scope index.

``before`` answers from the cache or lets the request go on; ``after`` stores the provider's
answer (in the background: the client never waits on Redis) and records verification outcomes.
Isolation is structural: a lookup only ever searches the request's own scope (see cache/scope.py),
and a fetched entry whose scope differs is never served. A final user turn longer than the
embedder's window takes the exact path only (cache_rules.semantic_skip_reason). Redis or the
embedder failing means "miss" plus a log line and a metric: the request is still answered
(fail-open).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from cache.embedder import Embedder, Vector
from cache.guard import conflict
from cache.hits import NEIGHBOURS, Assessment, EntryState, HitPolicy, ScopeState
from cache.index import ScopedIndexes
from cache.local_store import LocalStore
from cache.scope import exact_key
from cache.store import CacheUnavailable, Entry, RedisStore, Store
from gateway.core.context import RequestContext
from gateway.policy.cache_config import CacheConfig, CacheSettings, effective
from gateway.policy.settings import Settings
from gateway.telemetry.metrics import Metrics
from providers.base import Completion, Usage, new_completion_id

from .cache_quality import unfit_to_store
from .cache_rules import (
    answer_text,
    bypass_reason,
    same_answer,
    semantic_skip_reason,
)
from .cache_scope import scope_of

log = logging.getLogger(__name__)

LOAD_BATCH = 1024  # entries per multi-threaded index add at start (bounds a lookup's wait)


@dataclass(frozen=True, slots=True)
class _Comparison:
    """A lookup whose fresh answer will be compared with the cached ones."""

    neighbours: list[tuple[Entry, float]]
    assessment: Assessment
    conflict: str | None
    agreement: int
    verified: bool


class CacheStage:
    """Interceptor: exact and semantic lookups in the request's isolation scope."""

    def __init__(
        self,
        config: CacheConfig,
        store: Store,
        embedder: Embedder,
        metrics: Metrics,
        policy: HitPolicy | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.policy = policy or HitPolicy()
        self.metrics = metrics
        # Learned per scope on this replica (counts, additive); entries' states live in the store.
        self._scopes: dict[str, ScopeState] = {}
        self._rng = random.Random()
        # Entries are tagged with the embedder that made their vector; only this embedder's are
        # indexed or compared (another model's vectors live in another space: even the int8 copy
        # of the same model moves similarities by ~0.01, enough to shift learned thresholds).
        self.embedder_name = embedder.name
        self.indexes = ScopedIndexes(embedder.dim)
        self.runtime: dict[str, dict[str, Any]] = {}
        # Entries being stored in the background, and those of them flagged wrong meanwhile
        # (a client quick with its feedback): those are not kept.
        self._storing: set[int] = set()
        self._forgotten: set[int] = set()
        self.healthy = True
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- the request path -----------------------------------------------------------------
    def settings_for(self, ctx: RequestContext) -> CacheSettings:
        return effective(self.config, self.runtime, team=ctx.team.name, route=ctx.route.name)

    async def before(self, ctx: RequestContext) -> Completion | None:
        settings = self.settings_for(ctx)
        mode = (ctx.request_headers.get("x-gateway-cache") or "").strip().lower()
        if reason := bypass_reason(ctx, settings, mode):
            ctx.notes["cache"] = "bypass"
            ctx.headers["x-gateway-cache"] = "bypass"
            self._count("bypass")
            log.debug("cache bypass for %s: %s", ctx.request_id, reason)
            return None
        scope = scope_of(
            team=ctx.team.name,
            route=ctx.route.name,
            chat=ctx.chat,
            regions=ctx.allowed_regions,
        )
        ctx.notes["cache_scope"] = scope
        ctx.notes["cache_settings"] = settings
        ctx.headers["x-gateway-cache"] = "miss"
        if mode == "refresh":
            ctx.headers["x-gateway-cache"] = "refresh"
            self._count("refresh")
            return None
        try:
            answer = await self._lookup(ctx, scope, settings)
        except CacheUnavailable as exc:
            self._unavailable("lookup", exc)
            return None
        if answer is None:
            self._count("miss")
        return answer

    async def _lookup(
        self, ctx: RequestContext, scope: str, settings: CacheSettings
    ) -> Completion | None:
        query = ctx.query_text
        entry = await self.store.exact(exact_key(scope, query))
        if entry is not None and entry.scope == scope:
            return self._serve(ctx, entry, 1.0, "exact")
        if skipped := await semantic_skip_reason(ctx):
            ctx.decision.events.append({"type": "cache_semantic_skipped", "reason": skipped})
            self._count("semantic_skipped")
            log.debug("no semantic lookup for %s: %s", ctx.request_id, skipped)
            return None
        vector = await ctx.query_embedding()
        if vector is None:
            return None
        neighbours = await self._neighbours(scope, vector)
        if not neighbours:
            if settings.static_threshold is None:
                self.policy.record(self._scope_state(scope), None)
            return None
        entry, similarity = neighbours[0]
        reason = conflict(query, entry.query)
        if reason:
            ctx.decision.events.append({"type": "cache_guard", "reason": reason})
        if settings.static_threshold is not None:  # one fixed threshold, nothing learned
            if reason is None and similarity >= settings.static_threshold:
                return self._serve(ctx, entry, similarity, "semantic")
            return None
        cached = answer_text(entry.answer)
        agreement = sum(same_answer(answer_text(r.answer), cached) for r, _ in neighbours[1:])
        state = self._scope_state(scope)
        assessment = self.policy.assess(
            similarity,
            EntryState.from_bytes(entry.state),
            state,
            settings.max_error_rate,
            conflict=reason,
            agreement=agreement,
        )
        self.policy.record(state, assessment)
        verdict = assessment.decision(self._rng)
        if verdict == "hit":
            return self._serve(ctx, entry, similarity, "semantic")
        if verdict == "verify" or self.policy.compare_on_miss(similarity):
            # The fresh answer is fetched anyway: compare it with the cached ones (learning).
            ctx.notes["cache_compare"] = _Comparison(
                neighbours, assessment, reason, agreement, verified=verdict == "verify"
            )
            if verdict == "verify":
                self._count("verify")
        return None

    async def _neighbours(self, scope: str, vector: Vector) -> list[tuple[Entry, float]]:
        """The nearest entry and its runners-up, all of this scope, best first.

        The index finds candidates by approximate (int8) similarity; each is re-scored by the
        exact cosine of its stored float32 vector, which is what hit decisions use.
        """
        found = self.indexes.nearest(scope, vector, 1 + NEIGHBOURS)
        entries = await asyncio.gather(*(self.store.get(key) for key, _ in found))
        neighbours = []
        for (key, _), entry in zip(found, entries, strict=True):
            if entry is None:  # expired or evicted elsewhere
                self.indexes.remove(key)
            elif entry.scope == scope and self._comparable(entry):  # never across scopes
                assert entry.vector is not None
                neighbours.append((entry, float(np.dot(entry.vector, vector))))
        neighbours.sort(key=lambda found: found[1], reverse=True)
        return neighbours

    def _comparable(self, entry: Entry) -> bool:
        """Whether the entry's vector was made by this stage's embedder."""
        return (
            entry.vector is not None
            and entry.embedder == self.embedder_name
            and len(entry.vector) == self.indexes.dim
        )

    def _scope_state(self, scope: str) -> ScopeState:
        state = self._scopes.get(scope)
        if state is None:
            state = self._scopes[scope] = ScopeState()
        return state

    def _serve(self, ctx: RequestContext, entry: Entry, similarity: float, kind: str) -> Completion:
        body = dict(entry.answer)
        body["id"] = new_completion_id()
        body["created"] = int(time.time())
        body["usage"] = Usage().to_openai()  # no tokens were spent
        ctx.headers["x-gateway-cache"] = "hit"
        ctx.headers["x-gateway-cache-similarity"] = f"{similarity:.4f}"
        ctx.headers["x-gateway-source"] = "cache"
        ctx.notes["cache"] = kind
        ctx.decision.events.append(
            {
                "type": "cache_hit",
                "kind": kind,
                "similarity": round(similarity, 4),
                "entry": entry.id,
                "scope": entry.scope,
            }
        )
        self._count(f"hit_{kind}")
        self._spawn(self._touch(entry))
        served = str(body.get("model") or "cache")
        choices = body.get("choices") or [{}]
        return Completion(
            body=body,
            served_model=served,
            usage=Usage(),
            finish_reason=choices[0].get("finish_reason"),
        )

    async def after(self, ctx: RequestContext, completion: Completion) -> None:
        scope = ctx.notes.get("cache_scope")
        settings = ctx.notes.get("cache_settings")
        if (
            scope is None
            or not isinstance(settings, CacheSettings)
            or ctx.notes.get("cache") == "bypass"
        ):
            return
        text = answer_text(completion.body)
        if text is None:
            return
        if unfit := unfit_to_store(ctx, completion, text):  # replayed to every repeat: not stored
            ctx.decision.events.append({"type": "cache_not_stored", "reason": unfit})
            return
        # The entry's id is drawn now so the decision record names it: feedback saying this
        # answer was wrong removes it (``forget``).
        entry_id = random.getrandbits(63)
        ctx.decision.events.append({"type": "cache_store", "entry": entry_id, "scope": scope})
        comparison = ctx.notes.get("cache_compare")
        self._storing.add(entry_id)
        self._spawn(self._store(ctx, entry_id, scope, settings, completion, text, comparison))

    async def _store(
        self,
        ctx: RequestContext,
        entry_id: int,
        scope: str,
        settings: CacheSettings,
        completion: Completion,
        text: str,
        comparison: _Comparison | None,
    ) -> None:
        try:
            new_state = EntryState.from_bytes(b"")
            if comparison is not None:
                await self._learn(ctx, scope, text, comparison, new_state)
            # No vector for a turn past the embedder's window: an exact-only entry.
            vector = None if await semantic_skip_reason(ctx) else await ctx.query_embedding()
            new = Entry(
                id=entry_id,
                scope=scope,
                team=ctx.team.name,
                route=ctx.route.name,
                query=ctx.query_text,
                answer=completion.body,
                vector=vector,
                embedder=self.embedder_name,
                fingerprint=list(ctx.notes.get("knowledge_fingerprint") or ()),
                state=new_state.to_bytes(),
            )
            if entry_id in self._forgotten:
                return
            evicted = await self.store.put(
                new, exact_key(scope, new.query), settings.ttl_s, settings.max_entries_per_scope
            )
            if entry_id in self._forgotten:  # flagged while it was being written
                await self.store.remove(entry_id, scope)
                return
            if vector is not None:
                self.indexes.add(scope, new.id, vector)
            for old in evicted:
                self.indexes.remove(old)
        except CacheUnavailable as exc:
            self._unavailable("store", exc)
        finally:
            self._storing.discard(entry_id)
            self._forgotten.discard(entry_id)

    async def _learn(
        self,
        ctx: RequestContext,
        scope: str,
        fresh: str,
        comparison: _Comparison,
        new_state: EntryState,
    ) -> None:
        """Compare the fresh answer with the nearest cached ones and learn from it."""
        state = self._scope_state(scope)
        (entry, similarity), *runners = comparison.neighbours
        correct = same_answer(fresh, answer_text(entry.answer))
        entry_state = EntryState.from_bytes(entry.state)
        self.policy.observe(
            entry_state,
            state,
            similarity,
            correct,
            assessment=comparison.assessment,
            verified=comparison.verified,
            conflict=comparison.conflict,
            agreement=comparison.agreement,
        )
        self.policy.learn(new_state, state, similarity, correct)
        await self.store.save_state(entry.id, entry_state.to_bytes())
        for runner, runner_similarity in runners:
            same = same_answer(fresh, answer_text(runner.answer))
            runner_state = EntryState.from_bytes(runner.state)
            self.policy.learn(runner_state, state, runner_similarity, same)
            self.policy.learn(new_state, state, runner_similarity, same)
            await self.store.save_state(runner.id, runner_state.to_bytes())
        ctx.decision.events.append(
            {"type": "cache_compared", "correct": correct, "verified": comparison.verified}
        )
        if comparison.verified:
            self._count("verified_correct" if correct else "verified_wrong")

    async def feedback(self, entry_id: int, scope: str, similarity: float) -> bool:
        """A client says a cached answer was wrong: the entry stops hitting at that similarity."""
        entry = await self.store.get(entry_id)
        if entry is None or entry.scope != scope:
            return False
        entry_state = EntryState.from_bytes(entry.state)
        self.policy.observe(entry_state, self._scope_state(scope), similarity, False, feedback=True)
        await self.store.save_state(entry.id, entry_state.to_bytes())
        return True

    async def forget(self, entry_id: int, scope: str) -> bool:
        """A client says the cached answer to its own question was wrong (an exact hit, or the
        answer its request stored): the entry is removed, here and on every replica."""
        pending = entry_id in self._storing
        if pending:  # still on its way to the store: it will not be kept
            self._forgotten.add(entry_id)
        try:
            removed = await self.store.remove(entry_id, scope)
        except CacheUnavailable as exc:
            self._unavailable("forget", exc)
            return False
        if removed:
            self.indexes.remove(entry_id)
        return removed or pending

    # -- background work ------------------------------------------------------------------
    async def load(self) -> int:
        """Build the indexes from the store (at start; requests miss until an entry is in).

        Entries are added in batches, per scope, by several threads at once, off the event
        loop; only entries whose vector this stage's embedder made are indexed."""
        loaded = 0
        batch: list[Entry] = []
        adding: asyncio.Task[int] | None = None  # the previous batch, added while we read on
        async for entry in self.store.entries():
            if self._comparable(entry):
                batch.append(entry)
            if len(batch) >= LOAD_BATCH:
                loaded += await adding if adding is not None else 0
                adding = asyncio.ensure_future(self._index_batch(batch))
                batch = []
        loaded += await adding if adding is not None else 0
        return loaded + await self._index_batch(batch)

    async def _index_batch(self, batch: list[Entry]) -> int:
        by_scope: dict[str, list[Entry]] = {}
        for entry in batch:
            by_scope.setdefault(entry.scope, []).append(entry)

        def add() -> None:
            for scope, entries in by_scope.items():
                self.indexes.add_many(
                    scope,
                    [e.id for e in entries],
                    [e.vector for e in entries if e.vector is not None],
                )

        await asyncio.to_thread(add)
        return len(batch)

    async def follow(self, stop: asyncio.Event) -> None:
        """Keep the indexes in sync with the other replicas; survive Redis outages."""
        last = "$"
        while not stop.is_set():
            try:
                if last == "$":
                    last = await self.store.latest_event()
                    await self.load()
                last, events = await self.store.events(last, block_ms=1000)
                for event in events:
                    await self._apply(event.op, event.id, event.scope)
                self._recovered()
            except CacheUnavailable as exc:
                self._unavailable("sync", exc)
                last = "$"  # reload once Redis is back: we may have missed events
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)

    async def _apply(self, op: str, entry_id: int, scope: str) -> None:
        if op == "add":
            entry = await self.store.get(entry_id)
            if entry is not None and entry.vector is not None and self._comparable(entry):
                self.indexes.add(entry.scope, entry.id, entry.vector)
        elif op == "del":
            self.indexes.remove(entry_id)
        elif op == "scope":
            self.indexes.drop_scope(scope)

    async def refresh_config(self, stop: asyncio.Event, every_s: float = 2.0) -> None:
        """Pick up run-time overrides set by ops on any replica."""
        while not stop.is_set():
            try:
                self.runtime = await self.store.get_config()
            except CacheUnavailable as exc:
                self._unavailable("config", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every_s)

    async def _touch(self, entry: Entry) -> None:
        """Record the hit (LRU order, hit count) in the background; a failure is a cache error,
        never an unretrieved task exception."""
        try:
            await self.store.touch(entry)
        except CacheUnavailable as exc:
            self._unavailable("touch", exc)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _count(self, result: str) -> None:
        self.metrics.child(self.metrics.cache_lookups, result).inc()

    def _unavailable(self, operation: str, exc: Exception) -> None:
        self.metrics.child(self.metrics.cache_errors, operation).inc()
        if self.healthy:
            log.warning("cache store unavailable (%s: %s); answering uncached", operation, exc)
        self.healthy = False

    def _recovered(self) -> None:
        if not self.healthy:
            log.info("cache store is back")
        self.healthy = True


@contextlib.asynccontextmanager
async def running_cache(
    config: CacheConfig,
    settings: Settings,
    embedder: Embedder,
    metrics: Metrics,
) -> AsyncIterator[CacheStage]:
    """A cache stage with its store and background sync, for the application's lifetime."""
    store: Store = (
        RedisStore(settings.redis_url, prefix=settings.redis_prefix)
        if settings.redis_url
        else LocalStore()
    )
    stage = CacheStage(config, store, embedder, metrics)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(stage.follow(stop), name="cache-index-sync"),
        asyncio.create_task(stage.refresh_config(stop), name="cache-config-sync"),
    ]
    try:
        yield stage
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await stage.drain()
        await store.close()
