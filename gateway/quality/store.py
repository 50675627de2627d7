"""Quality statistics and regression verdicts shared by replicas, in Redis.

Two hashes under the deployment's prefix:

- ``<prefix>:quality:stats``: ``model␟version␟task␟signal␟field`` -> number, where field is
  ``n`` (events), ``passes`` or ``total`` (sum of scores). Replicas add their deltas
  (``HINCRBY``/``HINCRBYFLOAT``), so the hash holds every replica's counts.
- ``<prefix>:quality:regressed``: ``model␟task`` -> the regression record (JSON). Set by the
  replica whose detector fired, deleted by a promote through any replica's admin API.

The request path never touches Redis: the monitor's background sync pushes and pulls. Every
method raises ``QualityStoreError`` on a Redis failure; the caller keeps its local state.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

SEP = "\x1f"
FIELDS = ("n", "passes", "total")

StatKey = tuple[str, str, str, str]  # model, version, task type, signal
Counts = list[float]  # n, passes, total


class QualityStoreError(Exception):
    """Redis could not be reached or answered with an error."""


class RedisQualityStore:
    """The shared side of the quality monitor."""

    def __init__(self, url: str, *, prefix: str = "gw", timeout_s: float = 0.5) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._stats = f"{prefix}:quality:stats"
        self._regressed = f"{prefix}:quality:regressed"

    async def push(self, deltas: dict[StatKey, Counts]) -> None:
        """Add this replica's counts since the last push."""
        if not deltas:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, (n, passes, total) in deltas.items():
                    base = SEP.join(key)
                    pipe.hincrby(self._stats, f"{base}{SEP}n", int(n))
                    pipe.hincrby(self._stats, f"{base}{SEP}passes", int(passes))
                    pipe.hincrbyfloat(self._stats, f"{base}{SEP}total", total)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise QualityStoreError(str(exc)) from exc

    async def pull(self) -> dict[StatKey, Counts]:
        """Every replica's counts."""
        try:
            raw = await self._redis.hgetall(self._stats)
        except (RedisError, OSError) as exc:
            raise QualityStoreError(str(exc)) from exc
        totals: dict[StatKey, Counts] = {}
        for field, value in raw.items():
            parts = _text(field).split(SEP)
            if len(parts) != 5 or parts[4] not in FIELDS:
                continue
            model, version, task, signal, name = parts
            counts = totals.setdefault((model, version, task, signal), [0.0, 0.0, 0.0])
            counts[FIELDS.index(name)] = float(value)
        return totals

    async def set_regression(self, model: str, task_type: str, record: dict[str, Any]) -> None:
        try:
            await self._redis.hset(
                self._regressed, f"{model}{SEP}{task_type}", orjson.dumps(record)
            )
        except (RedisError, OSError) as exc:
            raise QualityStoreError(str(exc)) from exc

    async def clear_regression(self, model: str, task_type: str) -> None:
        try:
            await self._redis.hdel(self._regressed, f"{model}{SEP}{task_type}")
        except (RedisError, OSError) as exc:
            raise QualityStoreError(str(exc)) from exc

    async def regressions(self) -> dict[tuple[str, str], dict[str, Any]]:
        try:
            raw = await self._redis.hgetall(self._regressed)
        except (RedisError, OSError) as exc:
            raise QualityStoreError(str(exc)) from exc
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for field, value in raw.items():
            model, _, task = _text(field).partition(SEP)
            try:
                record = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                found[(model, task)] = record
        return found

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
