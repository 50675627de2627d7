"""State shared across gateway replicas: breaker records, Retry-After embargoes, probe locks.

Redis when ``GATEWAY_REDIS_URL`` is set, an in-process store with the same interface otherwise.
Nothing on the request path waits on Redis: replicas write transitions as they happen and read
everyone's state in a background sync (``BreakerBoard.sync``). A Redis outage degrades to
per-replica state, with a log line, and heals by itself when Redis returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """A breaker's shared state. ``changed_at`` (wall clock) orders updates across replicas."""

    state: str  # "closed" | "open"
    open_until: float
    changed_at: float
    opened_count: int = 0
    reason: str = ""


class SharedState(Protocol):
    """What replicas share; every method fails open (logs, returns a neutral answer)."""

    async def put_breaker(self, key: str, record: BreakerRecord, ttl_s: float) -> None: ...

    async def get_breakers(self, keys: list[str]) -> dict[str, BreakerRecord]: ...

    async def put_embargo(self, provider: str, until: float) -> None: ...

    async def get_embargoes(self, providers: list[str]) -> dict[str, float]: ...

    async def acquire_probe(self, key: str, ttl_s: float) -> bool:
        """True for exactly one caller per ``ttl_s`` across replicas."""
        ...

    async def close(self) -> None: ...


class LocalState:
    """One process's state, for a gateway without Redis (and for tests of the logic)."""

    def __init__(self) -> None:
        self._breakers: dict[str, BreakerRecord] = {}
        self._embargoes: dict[str, float] = {}
        self._probes: dict[str, float] = {}

    async def put_breaker(self, key: str, record: BreakerRecord, ttl_s: float) -> None:
        self._breakers[key] = record

    async def get_breakers(self, keys: list[str]) -> dict[str, BreakerRecord]:
        return {k: self._breakers[k] for k in keys if k in self._breakers}

    async def put_embargo(self, provider: str, until: float) -> None:
        self._embargoes[provider] = max(until, self._embargoes.get(provider, 0.0))

    async def get_embargoes(self, providers: list[str]) -> dict[str, float]:
        return {p: self._embargoes[p] for p in providers if p in self._embargoes}

    async def acquire_probe(self, key: str, ttl_s: float) -> bool:
        now = time.time()
        if self._probes.get(key, 0.0) > now:
            return False
        self._probes[key] = now + ttl_s
        return True

    async def close(self) -> None:
        return None


class RedisState:
    """Shared state in Redis: ``gw:breaker:<key>`` JSON, ``gw:embargo:<provider>``, probe locks."""

    def __init__(self, url: str, *, prefix: str = "gw", timeout_s: float = 0.25) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._prefix = prefix
        self._healthy = True

    def _failed(self, operation: str, exc: Exception) -> None:
        if self._healthy:
            log.warning("redis unavailable (%s: %s); using per-replica state", operation, exc)
        self._healthy = False

    def _ok(self) -> None:
        if not self._healthy:
            log.info("redis is back; shared state resumes")
        self._healthy = True

    @property
    def healthy(self) -> bool:
        return self._healthy

    async def ping(self) -> bool:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            self._failed("ping", exc)
            return False
        self._ok()
        return True

    async def put_breaker(self, key: str, record: BreakerRecord, ttl_s: float) -> None:
        try:
            await self._redis.set(
                f"{self._prefix}:breaker:{key}", orjson.dumps(asdict(record)), px=int(ttl_s * 1000)
            )
        except (RedisError, OSError) as exc:
            self._failed("put_breaker", exc)
        else:
            self._ok()

    async def get_breakers(self, keys: list[str]) -> dict[str, BreakerRecord]:
        if not keys:
            return {}
        try:
            values = await self._redis.mget([f"{self._prefix}:breaker:{k}" for k in keys])
        except (RedisError, OSError) as exc:
            self._failed("get_breakers", exc)
            return {}
        self._ok()
        records = {}
        for key, value in zip(keys, values, strict=True):
            if value:
                try:
                    records[key] = BreakerRecord(**orjson.loads(value))
                except (orjson.JSONDecodeError, TypeError):
                    log.warning("ignoring a malformed breaker record for %s", key)
        return records

    async def put_embargo(self, provider: str, until: float) -> None:
        ttl_ms = int((until - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        try:
            await self._redis.set(f"{self._prefix}:embargo:{provider}", repr(until), px=ttl_ms)
        except (RedisError, OSError) as exc:
            self._failed("put_embargo", exc)
        else:
            self._ok()

    async def get_embargoes(self, providers: list[str]) -> dict[str, float]:
        if not providers:
            return {}
        try:
            values = await self._redis.mget([f"{self._prefix}:embargo:{p}" for p in providers])
        except (RedisError, OSError) as exc:
            self._failed("get_embargoes", exc)
            return {}
        self._ok()
        return {p: float(v) for p, v in zip(providers, values, strict=True) if v}

    async def acquire_probe(self, key: str, ttl_s: float) -> bool:
        try:
            acquired = await self._redis.set(
                f"{self._prefix}:probe:{key}", b"1", nx=True, px=int(ttl_s * 1000)
            )
        except (RedisError, OSError) as exc:
            self._failed("acquire_probe", exc)
            return True  # fail open: this replica probes on its own judgement
        self._ok()
        return bool(acquired)

    async def close(self) -> None:
        await self._redis.aclose()
