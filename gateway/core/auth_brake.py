"""The brake on key guessing: failed authentications, counted per client address and per key
prefix, refuse further attempts with 429 (and ``Retry-After``) once over a burst.

Counted: every 401 for a presented credential (team key in ``Authorization`` or ``x-api-key``,
the admin key on the admin API and the dashboard, the dashboard's sign-in form). A request with
no credential at all is not a guess and is not counted.

- **Per address** (the peer, or the client ``X-Forwarded-For`` names behind trusted proxies):
  after ``auth_fail_burst`` failures in ``auth_fail_window_s``, every request from the address
  that carries a credential gets 429 until the window ends, a right key too: a brake that let a
  right guess through would not slow guessing.
- **Per key prefix** (the first ``PREFIX_CHARS`` characters of the presented key, stored only
  as a hash): a distributed guesser working on one leaked prefix is stopped the same way.

Valid keys are never slowed: a request pays one check of a local dict, and only while some
address or prefix is blocked. Redis is written on failures only (one pipelined ``INCR``), so
every replica sees the shared count; a replica learns of a block with the next failure it sees.
Redis down: counting goes on per process (bounded), and Redis is tried again after a pause.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from .errors import RateLimitExceeded

if TYPE_CHECKING:
    from gateway.policy.settings import Settings

log = logging.getLogger(__name__)

PREFIX_CHARS = 12
MAX_TRACKED = 10_000  # addresses and prefixes counted per process; the oldest are dropped
REDIS_RETRY_S = 5.0


class AuthFailuresExceeded(RateLimitExceeded):
    """Too many failed authentications from one address or for one key prefix."""

    code = "too_many_auth_failures"

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            "Too many failed authentications; try again later.",
            kind="requests",
            retry_after=retry_after,
        )


def presented_key(request: web.Request) -> str | None:
    """The credential the request carries (``x-api-key``, else the ``Authorization`` value's
    token), or ``None``."""
    key = request.headers.get("x-api-key")
    if key is not None:
        return key.strip() or None
    header = request.headers.get("Authorization")
    if header is None:
        return None
    return header.partition(" ")[2].strip() or header.strip() or None


class AuthBrake:
    """Counts failed authentications; refuses blocked addresses and key prefixes."""

    def __init__(
        self,
        *,
        burst: int,
        window_s: float,
        forwarded_hops: int = 0,
        redis_url: str | None = None,
        redis_prefix: str = "gw",
    ) -> None:
        self.burst = burst
        self.window_s = window_s
        self.forwarded_hops = forwarded_hops
        self._counts: dict[str, tuple[float, int]] = {}  # key -> (window end, failures)
        self._blocked: dict[str, float] = {}  # key -> blocked until (wall clock)
        self._redis = (
            aioredis.Redis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
            if redis_url
            else None
        )
        self._prefix = redis_prefix
        self._redis_down_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthBrake:
        return cls(
            burst=settings.auth_fail_burst,
            window_s=settings.auth_fail_window_s,
            forwarded_hops=settings.forwarded_for_hops,
            redis_url=settings.redis_url,
            redis_prefix=settings.redis_prefix,
        )

    @property
    def active(self) -> bool:
        """Whether anything is blocked: the only thing a request that is not refused pays for."""
        return bool(self._blocked)

    def client_address(self, request: web.Request) -> str:
        """The peer address, or with ``forwarded_hops`` = n the n-th ``X-Forwarded-For`` entry
        from the right (the one the outermost trusted proxy saw)."""
        if self.forwarded_hops:
            entries = [e.strip() for e in request.headers.get("X-Forwarded-For", "").split(",")]
            if len(entries) >= self.forwarded_hops and entries[-self.forwarded_hops]:
                return entries[-self.forwarded_hops][:64]
        return request.remote or "unknown"

    def _keys(self, request: web.Request, key: str | None) -> list[str]:
        keys = [f"addr:{self.client_address(request)}"]
        if key:
            raw = key[:PREFIX_CHARS].encode("utf-8", "surrogateescape")
            keys.append(f"key:{hashlib.sha256(raw).hexdigest()[:24]}")
        return keys

    def check(self, request: web.Request, key: str | None) -> None:
        """Raise ``AuthFailuresExceeded`` if the request's address or key prefix is blocked.
        ``key`` is the credential the request presents (``None``: none, or read later)."""
        now = time.time()
        for name in self._keys(request, key):
            until = self._blocked.get(name)
            if until is None:
                continue
            if until > now:
                raise AuthFailuresExceeded(until - now)
            del self._blocked[name]

    async def failed(self, request: web.Request, key: str | None) -> None:
        """Count a failed authentication; raise ``AuthFailuresExceeded`` when it crosses the
        burst (the caller answers 429 instead of 401)."""
        now = time.time()
        worst: float | None = None
        for name, (count, until) in zip(
            self._keys(request, key), await self._count(request, key, now), strict=True
        ):
            if count > self.burst:
                self._block(name, until)
                worst = max(worst or 0.0, until - now)
        if worst is not None:
            raise AuthFailuresExceeded(worst)

    def _block(self, name: str, until: float) -> None:
        if len(self._blocked) >= MAX_TRACKED:
            del self._blocked[next(iter(self._blocked))]
        self._blocked[name] = until

    async def _count(
        self, request: web.Request, key: str | None, now: float
    ) -> list[tuple[int, float]]:
        names = self._keys(request, key)
        local = [self._count_locally(name, now) for name in names]
        if self._redis is None or now < self._redis_down_until:
            return local
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for name in names:
                    redis_key = f"{self._prefix}:authfail:{name}"
                    pipe.set(redis_key, 0, nx=True, px=int(self.window_s * 1000))
                    pipe.incr(redis_key)
                    pipe.pttl(redis_key)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            if now >= self._redis_down_until:
                log.warning("auth brake: redis unavailable (%s); counting per process", exc)
            self._redis_down_until = now + REDIS_RETRY_S
            return local
        shared = []
        for i, (count, until) in enumerate(local):
            redis_count, pttl = int(replies[3 * i + 1]), int(replies[3 * i + 2])
            shared_until = now + pttl / 1000 if pttl > 0 else until
            # The larger of the two: a replica cut off from Redis for a while still counts its own.
            shared.append((max(count, redis_count), max(until, shared_until)))
        return shared

    def _count_locally(self, name: str, now: float) -> tuple[int, float]:
        until, count = self._counts.get(name, (0.0, 0))
        if until <= now:
            until, count = now + self.window_s, 0
            self._counts.pop(name, None)  # re-inserted last: the dict stays oldest-first
            if len(self._counts) >= MAX_TRACKED:
                del self._counts[next(iter(self._counts))]
        self._counts[name] = (until, count + 1)
        return count + 1, until

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


AUTH_BRAKE = web.AppKey("auth_brake", AuthBrake)
