"""Cache storage: Redis is the source of truth; an in-process store stands in without Redis.

Layout under ``<prefix>:c`` (prefix per deployment):

    e:<id>         hash   scope, team, route, query, answer (JSON), vec (float32), emb (the
                          embedder that made vec), created, hits, fp (knowledge chunks used),
                          state (hit-policy state); expires with the TTL
    x:<exact>      string entry id for the exact fast path; same TTL
    s:<scope>      zset   entry ids by last use: the per-scope LRU cap
    team:<t>, route:<r>   sets of scopes, for invalidation by team or route
    chunk:<id>     set    entries built on a knowledge chunk, for invalidation on re-ingest
    events         stream add / del / scope events that keep every replica's index in sync
    config         hash   run-time settings per team, route and default (JSON)

Every call may raise ``CacheUnavailable``; the cache stage treats that as a miss (fail-open).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .embedder import Vector


class CacheUnavailable(Exception):
    """The store could not be reached; the caller answers uncached."""


@dataclass(slots=True)
class Entry:
    """One cached answer and what it was looked up by."""

    id: int
    scope: str
    team: str
    route: str
    query: str
    answer: dict[str, Any]  # the OpenAI chat.completion body
    vector: Vector | None
    embedder: str = ""  # the name of the embedder that made ``vector``; "" if unknown
    created: float = field(default_factory=time.time)
    hits: int = 0
    fingerprint: list[str] = field(default_factory=list)
    state: bytes = b""


@dataclass(frozen=True, slots=True)
class Event:
    op: str  # "add" | "del" | "scope" | "all"
    id: int = 0
    scope: str = ""


@dataclass(frozen=True, slots=True)
class Put:
    """One entry to store: its exact key, TTL and its scope's cap (``Store.put_many``)."""

    entry: Entry
    exact_key: str
    ttl_s: float
    cap: int


class Store(Protocol):
    # Moves on every removal or invalidation through this object: copies of entries kept in
    # process (cache.hot) are dropped when it does.
    generation: int

    async def exact(self, key: str) -> Entry | None: ...
    async def get(self, entry_id: int) -> Entry | None: ...
    async def get_many(self, entry_ids: list[int]) -> list[Entry | None]: ...
    async def existing(self, entry_ids: list[int]) -> list[bool]: ...
    async def put(self, entry: Entry, exact_key: str, ttl_s: float, cap: int) -> list[int]: ...
    async def put_many(self, puts: list[Put]) -> list[int]: ...
    async def touch(self, entry: Entry) -> None: ...
    async def touch_many(self, hits: dict[tuple[int, str], int]) -> None: ...
    async def save_state(self, entry_id: int, state: bytes) -> None: ...
    async def save_states(self, states: dict[int, bytes]) -> None: ...
    async def remove(self, entry_id: int, scope: str) -> bool: ...
    async def invalidate(
        self, *, team: str | None, route: str | None, chunks: Iterable[str] | None
    ) -> int: ...
    def entries(self) -> AsyncIterator[Entry]: ...
    async def events(self, after: str, block_ms: int) -> tuple[str, list[Event]]: ...
    async def latest_event(self) -> str: ...
    async def get_config(self) -> dict[str, dict[str, Any]]: ...
    async def set_config(self, key: str, values: dict[str, Any] | None) -> None: ...
    async def close(self) -> None: ...


def _encode(entry: Entry) -> dict[str, bytes | str | float | int]:
    return {
        "scope": entry.scope,
        "team": entry.team,
        "route": entry.route,
        "query": entry.query,
        "answer": orjson.dumps(entry.answer),
        "vec": entry.vector.astype(np.float32).tobytes() if entry.vector is not None else b"",
        "emb": entry.embedder,
        "created": entry.created,
        "hits": entry.hits,
        "fp": orjson.dumps(entry.fingerprint),
        "state": entry.state,
    }


def _decode(entry_id: int, raw: dict[bytes, bytes]) -> Entry | None:
    try:
        vec = raw.get(b"vec", b"")
        return Entry(
            id=entry_id,
            scope=raw[b"scope"].decode(),
            team=raw[b"team"].decode(),
            route=raw[b"route"].decode(),
            query=raw[b"query"].decode(),
            answer=orjson.loads(raw[b"answer"]),
            vector=np.frombuffer(vec, dtype=np.float32).copy() if vec else None,
            embedder=raw.get(b"emb", b"").decode(),
            created=float(raw[b"created"]),
            hits=int(raw.get(b"hits", b"0")),
            fingerprint=orjson.loads(raw.get(b"fp", b"[]")),
            state=raw.get(b"state", b""),
        )
    except (KeyError, ValueError, orjson.JSONDecodeError):
        return None  # a half-written or foreign key: treat as absent


# The exact fast path in one round trip: the entry id under x:<key>, then that entry's hash.
# (The entry's key is built in the script, so this needs one Redis, not a cluster.)
_EXACT = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local raw = redis.call('HGETALL', ARGV[1] .. id)
if #raw == 0 then return false end
table.insert(raw, 1, id)
return raw
"""
# Several entries' hit-policy states in one round trip, each only if its entry still exists
# (never resurrect an evicted entry as a stub).
_SAVE_STATES = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'state', ARGV[i]) end
end
return #KEYS
"""


class CountingPool(aioredis.BlockingConnectionPool):
    """A bounded pool that makes a caller wait (up to ``timeout``) for a free connection
    instead of failing with "Too many connections"; ``on_event`` hears of each wait
    ("waited") and each wait that timed out ("timed_out")."""

    on_event: Callable[[str], None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        full = (
            not self._available_connections
            and len(self._in_use_connections) >= self.max_connections
        )
        if full and self.on_event is not None:
            self.on_event("waited")
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisError:
            if self.on_event is not None:
                self.on_event("timed_out")
            raise


class RedisStore:
    """The shared store. Writes that follow a response run in the background of the request.

    One bounded pool of ``max_connections``: a request holds one connection per round trip (its
    lookups are pipelined, its writes batched with others'), so the pool is sized for the
    process's concurrency and a burst beyond it waits up to ``pool_wait_s`` (default: the
    cache stage's default time budget) for a connection, reported to ``on_pool_event``, rather
    than failing.
    Redis serves one command at a time: more connections add no throughput."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gw",
        timeout_s: float = 0.25,
        max_connections: int = 512,
        pool_wait_s: float = 1.0,
        on_pool_event: Callable[[str], None] | None = None,
    ) -> None:
        self._pool = CountingPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_wait_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self._pool.on_event = on_pool_event
        self._redis = aioredis.Redis(connection_pool=self._pool)
        self._reader = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s)
        self._exact = self._redis.register_script(_EXACT)
        self._save_states = self._redis.register_script(_SAVE_STATES)
        self.p = f"{prefix}:c"
        self.generation = 0

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc) or type(exc).__name__) from exc

    async def exact(self, key: str) -> Entry | None:
        found = await self._call(self._exact(keys=[f"{self.p}:x:{key}"], args=[f"{self.p}:e:"]))
        if not found:
            return None
        fields = iter(found[1:])
        return _decode(int(found[0]), dict(zip(fields, fields, strict=True)))

    async def get(self, entry_id: int) -> Entry | None:
        raw = await self._call(self._redis.hgetall(f"{self.p}:e:{entry_id}"))
        return _decode(entry_id, raw) if raw else None

    async def get_many(self, entry_ids: list[int]) -> list[Entry | None]:
        """Several entries in one round trip, ``None`` for each one gone."""
        if not entry_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.hgetall(f"{self.p}:e:{entry_id}")
        found = await self._call(pipe.execute())
        return [_decode(i, raw) if raw else None for i, raw in zip(entry_ids, found, strict=True)]

    async def existing(self, entry_ids: list[int]) -> list[bool]:
        """Whether each entry is still stored (one round trip, no entry read)."""
        if not entry_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.exists(f"{self.p}:e:{entry_id}")
        return [bool(found) for found in await self._call(pipe.execute())]

    async def put(self, entry: Entry, exact_key: str, ttl_s: float, cap: int) -> list[int]:
        return await self.put_many([Put(entry, exact_key, ttl_s, cap)])

    async def put_many(self, puts: list[Put]) -> list[int]:
        """Store entries in one transaction (one round trip); then evict what is over each
        scope's cap, least recently used first. The ids evicted."""
        if not puts:
            return []
        p = self.p
        pipe = self._redis.pipeline(transaction=True)
        for put in puts:
            entry, ttl = put.entry, max(1, int(put.ttl_s))
            pipe.hset(f"{p}:e:{entry.id}", mapping=_encode(entry))  # type: ignore[arg-type]
            pipe.expire(f"{p}:e:{entry.id}", ttl)
            pipe.set(f"{p}:x:{put.exact_key}", entry.id, ex=ttl)
            pipe.zadd(f"{p}:s:{entry.scope}", {str(entry.id): time.time()})
            pipe.sadd(f"{p}:team:{entry.team}", entry.scope)
            pipe.sadd(f"{p}:route:{entry.route}", entry.scope)
            for chunk in entry.fingerprint:
                pipe.sadd(f"{p}:chunk:{chunk.partition(':')[0]}", entry.id)
            pipe.xadd(
                f"{p}:events",
                {"op": "add", "id": entry.id, "scope": entry.scope},
                maxlen=100_000,
                approximate=True,
            )
            pipe.zcard(f"{p}:s:{entry.scope}")
        results = await self._call(pipe.execute())
        # Each entry's commands end with its scope's size; a scope's last one counts.
        over: dict[str, int] = {}
        at = 0
        for put in puts:
            at += 8 + len(put.entry.fingerprint)
            over[put.entry.scope] = int(results[at - 1]) - put.cap
        ids: list[int] = []
        for scope, count in over.items():
            if count <= 0:
                continue
            evicted = await self._call(self._redis.zpopmin(f"{p}:s:{scope}", count))
            popped = [int(member) for member, _ in evicted]
            await self._delete(popped, scope)
            ids += popped
        return ids

    async def _delete(self, ids: list[int], scope: str) -> None:
        if not ids:
            return
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.delete(f"{self.p}:e:{entry_id}")
            pipe.zrem(f"{self.p}:s:{scope}", entry_id)
            pipe.xadd(
                f"{self.p}:events",
                {"op": "del", "id": entry_id, "scope": scope},
                maxlen=100_000,
                approximate=True,
            )
        await self._call(pipe.execute())

    async def touch(self, entry: Entry) -> None:
        await self.touch_many({(entry.id, entry.scope): 1})

    async def touch_many(self, hits: dict[tuple[int, str], int]) -> None:
        """Record hits (LRU order, hit counts) of several entries in one round trip; ``hits``
        maps (entry id, scope) to the number of hits since the last call."""
        if not hits:
            return
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        for (entry_id, scope), count in hits.items():
            pipe.zadd(f"{self.p}:s:{scope}", {str(entry_id): now}, xx=True)
            pipe.hincrby(f"{self.p}:e:{entry_id}", "hits", count)
        await self._call(pipe.execute())

    async def save_state(self, entry_id: int, state: bytes) -> None:
        await self.save_states({entry_id: state})

    async def save_states(self, states: dict[int, bytes]) -> None:
        """Several entries' hit-policy states in one round trip; an entry gone stays gone."""
        if states:
            keys = [f"{self.p}:e:{entry_id}" for entry_id in states]
            await self._call(self._save_states(keys=keys, args=list(states.values())))

    async def remove(self, entry_id: int, scope: str) -> bool:
        """Delete one entry of ``scope`` (every replica drops it from its index); ``False``
        when it is gone already or belongs to another scope."""
        self.generation += 1
        entry = await self.get(entry_id)
        if entry is None or entry.scope != scope:
            return False
        await self._delete([entry_id], scope)
        return True

    async def invalidate(
        self,
        *,
        team: str | None = None,
        route: str | None = None,
        chunks: Iterable[str] | None = None,
    ) -> int:
        p, removed = self.p, 0
        self.generation += 1
        if chunks is not None:
            for chunk in chunks:
                ids = await self._call(self._redis.smembers(f"{p}:chunk:{chunk}"))
                for raw in ids:
                    entry = await self.get(int(raw))
                    if entry is not None:
                        await self._delete([entry.id], entry.scope)
                        removed += 1
                await self._call(self._redis.delete(f"{p}:chunk:{chunk}"))
            return removed
        if team is None and route is None:
            scopes = [key.decode().split(":s:", 1)[1] async for key in self._scan(f"{p}:s:*")]
        else:
            sets = [f"{p}:team:{team}"] if team else []
            sets += [f"{p}:route:{route}"] if route else []
            members = await self._call(self._redis.sinter(sets))
            scopes = [m.decode() for m in members]
        for scope in scopes:
            ids = [int(m) for m in await self._call(self._redis.zrange(f"{p}:s:{scope}", 0, -1))]
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in ids:
                pipe.delete(f"{p}:e:{entry_id}")
            pipe.delete(f"{p}:s:{scope}")
            pipe.xadd(
                f"{p}:events",
                {"op": "scope", "id": 0, "scope": scope},
                maxlen=100_000,
                approximate=True,
            )
            await self._call(pipe.execute())
            removed += len(ids)
        return removed

    async def _scan(self, pattern: str) -> AsyncIterator[bytes]:
        try:
            async for key in self._redis.scan_iter(match=pattern, count=1000):
                yield key
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def entries(self) -> AsyncIterator[Entry]:
        """Every live entry, fetched 500 per round trip (the start-up load of a million)."""
        ids: list[int] = []
        async for key in self._scan(f"{self.p}:e:*"):
            ids.append(int(key.decode().rsplit(":", 1)[1]))
            if len(ids) >= 500:
                for entry in await self._fetch(ids):
                    yield entry
                ids = []
        for entry in await self._fetch(ids):
            yield entry

    async def _fetch(self, ids: list[int]) -> list[Entry]:
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.hgetall(f"{self.p}:e:{entry_id}")
        found = await self._call(pipe.execute())
        decoded = (_decode(i, raw) for i, raw in zip(ids, found, strict=True) if raw)
        return [entry for entry in decoded if entry is not None]

    async def events(self, after: str, block_ms: int) -> tuple[str, list[Event]]:
        try:
            found: Any = await self._reader.xread(
                {f"{self.p}:events": after}, count=1000, block=block_ms
            )
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc
        events, last = [], after
        for _, items in found or []:
            for event_id, fields in items:
                last = event_id.decode()
                events.append(
                    Event(
                        op=fields[b"op"].decode(),
                        id=int(fields.get(b"id", b"0")),
                        scope=fields.get(b"scope", b"").decode(),
                    )
                )
        return last, events

    async def latest_event(self) -> str:
        found = await self._call(self._redis.xrevrange(f"{self.p}:events", count=1))
        return found[0][0].decode() if found else "0-0"

    async def get_config(self) -> dict[str, dict[str, Any]]:
        raw = await self._call(self._redis.hgetall(f"{self.p}:config"))
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    async def set_config(self, key: str, values: dict[str, Any] | None) -> None:
        if values is None:
            await self._call(self._redis.hdel(f"{self.p}:config", key))
        else:
            await self._call(self._redis.hset(f"{self.p}:config", key, orjson.dumps(values)))

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.disconnect()  # a pool passed in is not closed with its client
        await self._reader.aclose()
