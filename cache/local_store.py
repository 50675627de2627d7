"""The in-process store: the same interface as ``RedisStore`` for a gateway without Redis."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from typing import Any

from .store import Entry, Event, Put


class LocalStore:
    """Entries in dicts, LRU per scope, TTL checked on read. One process only."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Entry, float]] = {}
        self._exact: dict[str, tuple[int, float]] = {}
        self._scopes: dict[str, OrderedDict[int, None]] = {}
        self._config: dict[str, dict[str, Any]] = {}
        self.generation = 0  # moves on every removal or invalidation (see Store)

    def _live(self, entry_id: int) -> Entry | None:
        found = self._entries.get(entry_id)
        if found is None:
            return None
        entry, expires = found
        if expires < time.time():
            self._drop(entry)
            return None
        return entry

    def _drop(self, entry: Entry) -> None:
        self._entries.pop(entry.id, None)
        scope = self._scopes.get(entry.scope)
        if scope is not None:
            scope.pop(entry.id, None)

    async def exact(self, key: str) -> Entry | None:
        found = self._exact.get(key)
        if found is None or found[1] < time.time():
            return None
        return self._live(found[0])

    async def get(self, entry_id: int) -> Entry | None:
        return self._live(entry_id)

    async def put(self, entry: Entry, exact_key: str, ttl_s: float, cap: int) -> list[int]:
        expires = time.time() + ttl_s
        self._entries[entry.id] = (entry, expires)
        self._exact[exact_key] = (entry.id, expires)
        scope = self._scopes.setdefault(entry.scope, OrderedDict())
        scope[entry.id] = None
        scope.move_to_end(entry.id)
        evicted = []
        while len(scope) > cap:
            old, _ = scope.popitem(last=False)
            self._entries.pop(old, None)
            evicted.append(old)
        return evicted

    async def get_many(self, entry_ids: list[int]) -> list[Entry | None]:
        return [self._live(entry_id) for entry_id in entry_ids]

    async def existing(self, entry_ids: list[int]) -> list[bool]:
        return [self._live(entry_id) is not None for entry_id in entry_ids]

    async def put_many(self, puts: list[Put]) -> list[int]:
        evicted: list[int] = []
        for put in puts:
            evicted += await self.put(put.entry, put.exact_key, put.ttl_s, put.cap)
        return evicted

    async def touch(self, entry: Entry) -> None:
        await self.touch_many({(entry.id, entry.scope): 1})

    async def touch_many(self, hits: dict[tuple[int, str], int]) -> None:
        for (entry_id, scope_name), count in hits.items():
            found = self._entries.get(entry_id)
            if found is not None:
                found[0].hits += count
            scope = self._scopes.get(scope_name)
            if scope is not None and entry_id in scope:
                scope.move_to_end(entry_id)

    async def save_state(self, entry_id: int, state: bytes) -> None:
        await self.save_states({entry_id: state})

    async def save_states(self, states: dict[int, bytes]) -> None:
        for entry_id, state in states.items():
            entry = self._live(entry_id)
            if entry is not None:
                entry.state = state

    async def remove(self, entry_id: int, scope: str) -> bool:
        self.generation += 1
        entry = self._live(entry_id)
        if entry is None or entry.scope != scope:
            return False
        self._drop(entry)
        return True

    async def invalidate(
        self,
        *,
        team: str | None = None,
        route: str | None = None,
        chunks: Iterable[str] | None = None,
    ) -> int:
        self.generation += 1
        wanted = set(chunks) if chunks is not None else None
        doomed = [
            entry
            for entry, _ in list(self._entries.values())
            if (team is None or entry.team == team)
            and (route is None or entry.route == route)
            and (wanted is None or any(fp.partition(":")[0] in wanted for fp in entry.fingerprint))
        ]
        for entry in doomed:
            self._drop(entry)
        return len(doomed)

    async def entries(self) -> AsyncIterator[Entry]:
        for entry_id in list(self._entries):
            entry = self._live(entry_id)
            if entry is not None:
                yield entry

    async def events(self, after: str, block_ms: int) -> tuple[str, list[Event]]:
        await asyncio.sleep(block_ms / 1000)  # one process: nobody else writes
        return after, []

    async def latest_event(self) -> str:
        return "0-0"

    async def get_config(self) -> dict[str, dict[str, Any]]:
        return dict(self._config)

    async def set_config(self, key: str, values: dict[str, Any] | None) -> None:
        if values is None:
            self._config.pop(key, None)
        else:
            self._config[key] = values

    async def close(self) -> None:
        return None
