"""The cache's writes: what the writer task stores for a batch of answered misses.

Split from gateway/stages/cache.py (the request path and the writer task): learn from each
answer's comparisons, store the new entries in one transaction, then index them on the stage's
index thread, off the event loop.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cache.embedder import Vector
from cache.guard import remember
from cache.hits import EntryState, HitPolicy, ScopeState
from cache.hot import HotEntries
from cache.index import ScopedIndexes
from cache.scope import exact_key
from cache.store import Entry, Put, Store
from gateway.core.context import RequestContext
from gateway.policy.cache_config import CacheSettings
from providers.base import Completion

from .cache_learning import Comparison, learn_from_answer
from .cache_quality import ttl_s
from .cache_rules import semantic_skip_reason

OWN_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Write:
    """One answer to store, queued by ``after`` for the writer task."""

    ctx: RequestContext
    entry_id: int
    scope: str
    settings: CacheSettings
    completion: Completion
    text: str
    comparison: Comparison | None


class StoreWriter:
    """``CacheStage``'s writes (``_store``); the attributes are the stage's own."""

    store: Store
    policy: HitPolicy
    indexes: ScopedIndexes
    hot: HotEntries
    embedder_name: str
    _forgotten: set[int]
    _own: set[int]
    _index_thread: ThreadPoolExecutor

    def _scope_state(self, scope: str) -> ScopeState:
        raise NotImplementedError

    def _count(self, result: str) -> None:
        raise NotImplementedError

    async def _store(self, batch: list[Write]) -> None:
        """Learn from each answer's comparisons, then store the new entries: one round trip for
        the states learned, one transaction for the entries (what is stored is what one store
        per request stored)."""
        states: dict[int, bytes] = {}
        puts: list[Put] = []
        for write in batch:
            if write.entry_id in self._forgotten:  # feedback came first: never stored
                continue
            ctx = write.ctx
            new_state = EntryState.from_bytes(b"")
            if write.comparison is not None:
                learned, correct = learn_from_answer(
                    self.policy,
                    self._scope_state(write.scope),
                    ctx,
                    write.text,
                    write.comparison,
                    new_state,
                )
                states.update(learned)
                if write.comparison.verified:
                    self._count("verified_correct" if correct else "verified_wrong")
            # No vector for a turn past the embedder's window: an exact-only entry.
            vector = None if await semantic_skip_reason(ctx) else await ctx.query_embedding()
            new = Entry(
                id=write.entry_id,
                scope=write.scope,
                team=ctx.team.name,
                route=ctx.route.name,
                query=ctx.query_text,
                answer=write.completion.body,
                vector=vector,
                embedder=self.embedder_name,
                fingerprint=list(ctx.notes.get("knowledge_fingerprint") or ()),
                state=new_state.to_bytes(),
            )
            key = exact_key(write.scope, new.query)
            ttl = ttl_s(ctx, write.settings.ttl_s)
            puts.append(Put(new, key, ttl, write.settings.max_entries_per_scope))
        await self.store.save_states(states)
        if len(self._own) > OWN_MAX:  # events were missed (an outage): forget the oldest
            self._own.clear()
        self._own.update(put.entry.id for put in puts)
        evicted = await self.store.put_many(puts)
        adds: list[tuple[str, int, Vector]] = []
        for put in puts:
            self.hot.drop_key(put.exact_key)  # a newer answer to the same question
            if put.entry.id in self._forgotten:  # flagged while it was being written
                await self.store.remove(put.entry.id, put.entry.scope)
                continue
            if put.entry.vector is not None:
                adds.append((put.entry.scope, put.entry.id, put.entry.vector))
                remember(put.entry.query)  # its guard features: read now, not by a lookup
        for old in evicted:
            self.hot.drop_id(old)
        # Index adds (~1 ms of graph search each) on the index thread, not the loop's.
        await asyncio.get_running_loop().run_in_executor(
            self._index_thread, self.indexes.apply, adds, evicted
        )
