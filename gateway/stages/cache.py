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
import functools
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cache.embedder import Embedder, Vector
from cache.guard import conflict
from cache.hits import NEIGHBOURS, EntryState, HitPolicy, ScopeState
from cache.hot import HotEntries
from cache.index import ScopedIndexes
from cache.scope import exact_key
from cache.store import CacheUnavailable, Entry, Store
from gateway.core.context import RequestContext
from gateway.policy.cache_config import CacheConfig, CacheSettings, effective
from gateway.telemetry.metrics import Metrics
from providers.base import Completion, Usage, new_completion_id

from .cache_learning import Comparison
from .cache_quality import degraded, ttl_s, unfit_to_store
from .cache_rules import (
    answer_text,
    bypass_reason,
    same_answer,
    semantic_skip_reason,
)
from .cache_scope import scope_of
from .cache_writes import StoreWriter, Write
from .knowledge import knowledge_off

log = logging.getLogger(__name__)


# Stores wait in a bounded queue for the one writer task, which sends up to WRITE_BATCH of them
# in one Redis transaction; past WRITE_QUEUE waiting, an answer is not stored (counted).
WRITE_QUEUE = 4096
WRITE_BATCH = 64
# Hits are counted in memory and sent (LRU order, hit counts) in one pipeline this often.
HIT_FLUSH_S = 0.05
# The index's int8 similarities are within ~0.015 of the exact float32 cosine (measured over
# BANKING77 queries: -0.015 to +0.008); below the lowest similarity anything is done with
# (served, verified or compared) by more than this, a lookup does not read its candidates.
INDEX_SLACK = 0.05


class CacheStage(StoreWriter):
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
        # Settings per (team, route), for this config and these run-time overrides.
        self._settings: dict[tuple[str, str], CacheSettings] = {}
        self._settings_of: tuple[CacheConfig, dict[str, dict[str, Any]]] | None = None
        # Off the request path: stores queue for one writer task; hits are counted here and
        # flushed in batches (see WRITE_QUEUE, HIT_FLUSH_S).
        self._writes: asyncio.Queue[Write] = asyncio.Queue(maxsize=WRITE_QUEUE)
        self._writer: asyncio.Task[None] | None = None
        self._hits: dict[tuple[int, str], int] = {}
        # Recent exact hits in process (cache/hot.py), and the ids this replica stored whose
        # ``add`` events need no read-back (the entry is indexed already).
        self.hot = HotEntries()
        self._reading: dict[str, asyncio.Future[Entry | None]] = {}
        self._own: set[int] = set()
        self._hit_flush: asyncio.Task[None] | None = None
        # One thread adds this replica's new entries to the indexes (``_store``).
        self._index_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-index")

    # -- the request path -----------------------------------------------------------------
    def settings_for(self, ctx: RequestContext) -> CacheSettings:
        """The request's settings; validated once per team and route until the config or the
        run-time overrides change (a pydantic validation costs more than an exact hit)."""
        if self._settings_of is None or (
            self._settings_of[0] is not self.config or self._settings_of[1] is not self.runtime
        ):
            self._settings = {}
            self._settings_of = (self.config, self.runtime)
        key = (ctx.team.name, ctx.route.name)
        found = self._settings.get(key)
        if found is None:
            found = self._settings[key] = effective(
                self.config, self.runtime, team=key[0], route=key[1]
            )
        return found

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
            knowledge_off=knowledge_off(ctx.request_headers),  # no passages: another answer
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
            self.unavailable("lookup", exc)
            return None
        if answer is None:
            self._count("miss")
        return answer

    async def _lookup(
        self, ctx: RequestContext, scope: str, settings: CacheSettings
    ) -> Completion | None:
        query = ctx.query_text
        key = exact_key(scope, query)
        generation, now = self.store.generation, time.monotonic()
        if self.hot.generation != generation:  # an entry was removed here: start afresh
            self.hot.clear()
            self.hot.generation = generation
        entry = self.hot.get(key, now)
        semantic: asyncio.Future[str | tuple[Vector, list[tuple[int, float]]] | None] | None = None
        if entry is None:
            # Not in memory: the semantic side (window check, embedding, index search) starts
            # while Redis answers the exact read, and an exact hit drops it. A miss then waits
            # for one of the two, not for both in turn.
            semantic = asyncio.ensure_future(self._semantic(ctx, scope))
            semantic.add_done_callback(_retrieved)
            try:
                entry = await self._read_exact(key)
            except asyncio.CancelledError:
                semantic.cancel()
                raise
            except Exception:
                # The request goes on uncached; its vector (the knowledge lookup's too) is
                # being computed: let it land before the next stage asks for it.
                await asyncio.gather(semantic, return_exceptions=True)
                raise
            if entry is not None and entry.scope == scope and self.store.generation == generation:
                self.hot.put(key, entry, now, entry.created + settings.ttl_s - time.time())
        if entry is not None and entry.scope == scope:
            if semantic is not None:
                semantic.cancel()  # an embedding not started yet is skipped (BatchingEmbedder)
            return self._serve(ctx, entry, 1.0, "exact")
        outcome = await (semantic or self._semantic(ctx, scope))
        if isinstance(outcome, str):
            ctx.decision.events.append({"type": "cache_semantic_skipped", "reason": outcome})
            self._count("semantic_skipped")
            log.debug("no semantic lookup for %s: %s", ctx.request_id, outcome)
            return None
        if outcome is None:
            return None
        vector, found = outcome
        if found and found[0][1] < self._floor(settings) - INDEX_SLACK:
            # Nothing this far can be served, verified or compared: the candidates' round trip
            # and decode would buy a miss (most misses: a new question has no near neighbour).
            found = []
        neighbours = await self._neighbours(scope, vector, found)
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
            ctx.notes["cache_compare"] = Comparison(
                neighbours, assessment, reason, agreement, verified=verdict == "verify"
            )
            if verdict == "verify":
                self._count("verify")
        return None

    def _floor(self, settings: CacheSettings) -> float:
        """The lowest similarity at which a lookup may do anything with a candidate."""
        if settings.static_threshold is not None:
            return settings.static_threshold
        return min(self.policy.min_similarity, self.policy.compare_floor)

    async def _semantic(
        self, ctx: RequestContext, scope: str
    ) -> str | tuple[Vector, list[tuple[int, float]]] | None:
        """The query's vector and its index candidates in ``scope``; the reason when the query
        may not be looked up by similarity; ``None`` without a vector. The index search runs
        on the embedder's thread right after the vector (``query_embedding_then``)."""
        if skipped := await semantic_skip_reason(ctx):
            return skipped
        search = functools.partial(self.indexes.nearest, scope, count=1 + NEIGHBOURS)
        return await ctx.query_embedding_then(search)

    async def _read_exact(self, key: str) -> Entry | None:
        """The exact key's entry from the store, one read per key at a time: when a popular
        question's copy in memory lapses, its concurrent repeats share one round trip instead of
        each taking a connection. Shielded: a caller cut off by its budget leaves it running."""
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(self.store.exact(key))
            reading.add_done_callback(lambda done: self._read_done(key, done))
        return await asyncio.shield(reading)

    def _read_done(self, key: str, done: asyncio.Future[Entry | None]) -> None:
        self._reading.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here too: every waiter may have given up

    async def _neighbours(
        self, scope: str, vector: Vector, found: list[tuple[int, float]]
    ) -> list[tuple[Entry, float]]:
        """The nearest entry and its runners-up, all of this scope, best first.

        The index found the candidates (``found``) by approximate (int8) similarity; each is
        re-scored by the exact cosine of its stored float32 vector, which is what hit decisions
        use.
        """
        entries = await self.store.get_many([key for key, _ in found])  # one round trip
        neighbours = []
        for (key, _), entry in zip(found, entries, strict=True):
            if entry is None:  # expired or evicted elsewhere
                self.indexes.remove(key)
            elif entry.scope == scope and self.comparable(entry):  # never across scopes
                assert entry.vector is not None
                neighbours.append((entry, float(np.dot(entry.vector, vector))))
        neighbours.sort(key=lambda found: found[1], reverse=True)
        return neighbours

    def own_write(self, entry_id: int) -> bool:
        """Whether this replica stored the entry (and indexed it already); consumed once."""
        if entry_id in self._own:
            self._own.discard(entry_id)
            return True
        return False

    def comparable(self, entry: Entry) -> bool:
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
        self._hit(entry)
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
        event: dict[str, Any] = {"type": "cache_store", "entry": entry_id, "scope": scope}
        if why := degraded(ctx):  # kept briefly: see gateway/stages/cache_quality.py
            event |= {"ttl_s": ttl_s(ctx, settings.ttl_s), "degraded": why}
        ctx.decision.events.append(event)
        comparison = ctx.notes.get("cache_compare")
        write = Write(ctx, entry_id, scope, settings, completion, text, comparison)
        self._storing.add(entry_id)  # feedback before the write lands keeps it out (``forget``)
        try:
            self._writes.put_nowait(write)
        except asyncio.QueueFull:  # Redis is far behind: this answer is not cached
            self._storing.discard(entry_id)
            self.metrics.child(self.metrics.cache_errors, "store_queue_full").inc()
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_loop())

    async def _write_loop(self) -> None:
        """The writer: takes what is queued (up to WRITE_BATCH) and stores it in one go."""
        while True:
            batch = [await self._writes.get()]
            while len(batch) < WRITE_BATCH and not self._writes.empty():
                batch.append(self._writes.get_nowait())
            try:
                await self._store(batch)
            except CacheUnavailable as exc:
                self.unavailable("store", exc)
            except Exception:  # the writer outlives a bad entry; the others are stored
                log.exception("cache store failed for %d answers", len(batch))
            finally:
                for write in batch:
                    self._storing.discard(write.entry_id)
                    self._forgotten.discard(write.entry_id)
                    self._writes.task_done()

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
            self.unavailable("forget", exc)
            return False
        if removed:
            self.indexes.remove(entry_id)
            self.hot.drop_id(entry_id)
        return removed or pending

    def _hit(self, entry: Entry) -> None:
        """Count the hit; the counts (LRU order, hit counts) go to the store in one pipeline
        per HIT_FLUSH_S, not one round trip per hit."""
        key = (entry.id, entry.scope)
        self._hits[key] = self._hits.get(key, 0) + 1
        if self._hit_flush is None or self._hit_flush.done():
            self._hit_flush = asyncio.ensure_future(self._flush_hits_soon())

    async def _flush_hits_soon(self) -> None:
        await asyncio.sleep(HIT_FLUSH_S)
        await self._flush_hits()

    async def _flush_hits(self) -> None:
        """Send the hits counted so far; a failure is a cache error, never an unretrieved
        task exception."""
        hits, self._hits = self._hits, {}
        try:
            await self.store.touch_many(hits)
        except CacheUnavailable as exc:
            self.unavailable("touch", exc)

    async def drain(self) -> None:
        """Wait until every queued store is written and every hit counted in the store."""
        await self._writes.join()
        if self._hit_flush is not None and not self._hit_flush.done():
            self._hit_flush.cancel()
            await asyncio.gather(self._hit_flush, return_exceptions=True)
        await self._flush_hits()

    async def close(self, drain_s: float = 5.0) -> None:
        """Drain (at most ``drain_s``: a stop ends even when Redis hangs), then stop the writer."""
        try:
            async with asyncio.timeout(drain_s):
                await self.drain()
        except TimeoutError:
            log.warning(
                "cache: stopping with %d store(s) unwritten (Redis did not take them in %.0f s)",
                self._writes.qsize(),
                drain_s,
            )
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        self._index_thread.shutdown(wait=False)

    def _count(self, result: str) -> None:
        self.metrics.child(self.metrics.cache_lookups, result).inc()

    def unavailable(self, operation: str, exc: Exception) -> None:
        self.metrics.child(self.metrics.cache_errors, operation).inc()
        if self.healthy:
            log.warning("cache store unavailable (%s: %s); answering uncached", operation, exc)
        self.healthy = False

    def recovered(self) -> None:
        if not self.healthy:
            log.info("cache store is back")
        self.healthy = True


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a dropped semantic lookup's failure as seen (an exact hit no longer needs it)."""
    if not task.cancelled():
        task.exception()
