"""Team governance: requests and tokens per minute and a daily USD budget, across replicas.

Each limited team has two token buckets (capacity = the per-minute limit, refilled continuously
at limit/60 per second) and a per-UTC-day spend counter. Admission is one Lua script in Redis —
one round trip, atomic across replicas, on Redis' clock: it refills the buckets, takes one
request, and refuses when the request bucket is empty, the token bucket is in debt or the day's
spend has reached the budget. Tokens and cost are known only after the answer, so they are
charged afterwards: each replica adds them to a local ledger that a background task flushes every
``FLUSH_INTERVAL_S`` in one pipelined round trip (a second script debits the token bucket and
adds the cost atomically, returning the spend before and after, so exactly one replica sees a
budget threshold being crossed and alerts once).

Bounds. Requests per minute are exact across replicas (the script is atomic). Tokens and USD can
overshoot by what is in flight plus what finished in the last flush interval on every replica:
a request is admitted while the bucket or budget still has room and is charged what it really
used, as OpenAI's own limits do.

Fail-open. With Redis unreachable (or without Redis) each replica decides alone from an
in-process copy of the same buckets, seeded with the last values Redis returned, so a team gets at
most (replicas x what was left) during an outage; it is logged once per outage and counted in
``gateway_limits_fallback``. After a failure Redis is retried every ``RETRY_S`` rather than on
every request, so an outage costs no request a timeout more than once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.core.errors import RateLimitExceeded

from .model import TeamConfig

if TYPE_CHECKING:  # telemetry sits above policy: its objects are handed in
    from gateway.telemetry.alerts import Alerts
    from gateway.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.25
RETRY_S = 1.0
_TTL_MS = 120_000  # a bucket untouched for two minutes is full again anyway
_DAY_TTL_S = 2 * 86_400

# KEYS: request bucket, token bucket, spend counter. ARGV: rpm, tpm, budget (0: none).
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function level(key, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  if not v[1] then return cap end
  return math.min(cap, tonumber(v[1]) + (now - tonumber(v[2])) * cap / 60)
end
local req, tok, spent, denied = -1, -1, 0, ''
if rpm > 0 then
  req = level(KEYS[1], rpm)
  if req < 1 then denied = 'requests' end
end
if tpm > 0 then
  tok = level(KEYS[2], tpm)
  if denied == '' and tok <= 0 then denied = 'tokens' end
end
if budget > 0 then
  spent = tonumber(redis.call('GET', KEYS[3]) or '0')
  if denied == '' and spent >= budget then denied = 'budget' end
end
if denied == '' and rpm > 0 then
  req = req - 1
  redis.call('HSET', KEYS[1], 'l', tostring(req), 't', tostring(now))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return {denied, tostring(req), tostring(tok), tostring(spent)}
"""

# KEYS: token bucket, spend counter. ARGV: tokens, tpm, cost, ttl ms, day ttl s.
_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local tokens, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if tpm > 0 and tokens > 0 then
  local v = redis.call('HMGET', KEYS[1], 'l', 't')
  local l = tpm
  if v[1] then l = math.min(tpm, tonumber(v[1]) + (now - tonumber(v[2])) * tpm / 60) end
  redis.call('HSET', KEYS[1], 'l', tostring(l - tokens), 't', tostring(now))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local before = tonumber(redis.call('GET', KEYS[2]) or '0')
local after = before
if cost > 0 then
  after = tonumber(redis.call('INCRBYFLOAT', KEYS[2], ARGV[3]))
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
return {tostring(before), tostring(after)}
"""


def utc_day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d")


def seconds_to_midnight(now: float) -> float:
    return 86_400 - now % 86_400


def reset_text(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it (``1s``, ``6m0s``)."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    minutes, secs = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def limited(team: TeamConfig) -> bool:
    return bool(team.requests_per_minute or team.tokens_per_minute or team.daily_budget_usd)


@dataclass(slots=True)
class _Bucket:
    level: float
    at: float

    def refill(self, cap: int, now: float) -> float:
        self.level = min(cap, self.level + max(0.0, now - self.at) * cap / 60)
        self.at = now
        return self.level


@dataclass(slots=True)
class _TeamState:
    requests: _Bucket | None = None
    tokens: _Bucket | None = None
    day: str = ""
    spent: float = 0.0


@dataclass(slots=True)
class _Pending:
    team: TeamConfig
    tokens: int = 0
    cost: float = 0.0


@dataclass(slots=True)
class Admission:
    """The levels after admitting one request (``-1``: that limit is not configured)."""

    requests: float
    tokens: float
    spent: float


class LocalBuckets:
    """The same buckets in process: without Redis, or while it is unreachable."""

    def __init__(self) -> None:
        self._teams: dict[str, _TeamState] = {}

    def _state(self, team: TeamConfig, now: float) -> _TeamState:
        state = self._teams.setdefault(team.name, _TeamState())
        if team.requests_per_minute and state.requests is None:
            state.requests = _Bucket(team.requests_per_minute, now)
        if team.tokens_per_minute and state.tokens is None:
            state.tokens = _Bucket(team.tokens_per_minute, now)
        day = utc_day(now)
        if state.day != day:
            state.day, state.spent = day, 0.0
        return state

    def admit(self, team: TeamConfig, now: float) -> tuple[str, Admission]:
        state = self._state(team, now)
        req = tok = -1.0
        denied = ""
        if team.requests_per_minute and state.requests is not None:
            req = state.requests.refill(team.requests_per_minute, now)
            if req < 1:
                denied = "requests"
        if team.tokens_per_minute and state.tokens is not None:
            tok = state.tokens.refill(team.tokens_per_minute, now)
            if not denied and tok <= 0:
                denied = "tokens"
        if not denied and team.daily_budget_usd and state.spent >= team.daily_budget_usd:
            denied = "budget"
        if not denied and state.requests is not None:
            state.requests.level -= 1
            req -= 1
        return denied, Admission(req, tok, state.spent)

    def charge(self, team: TeamConfig, tokens: int, cost: float, now: float) -> tuple[float, float]:
        state = self._state(team, now)
        if team.tokens_per_minute and state.tokens is not None and tokens:
            state.tokens.refill(team.tokens_per_minute, now)
            state.tokens.level -= tokens
        before = state.spent
        state.spent += cost
        return before, state.spent

    def mirror(self, team: TeamConfig, admission: Admission, now: float) -> None:
        """Adopt what Redis said, so that a fallback starts from the shared state."""
        state = self._state(team, now)
        if state.requests is not None and admission.requests >= 0:
            state.requests = _Bucket(admission.requests, now)
        if state.tokens is not None and admission.tokens != -1:
            state.tokens = _Bucket(admission.tokens, now)
        state.spent = admission.spent


@dataclass(slots=True)
class Limits:
    """Admission and charging for every team; Redis when configured, else in process."""

    alerts: Alerts
    metrics: Metrics
    redis_url: str | None = None
    prefix: str = "gw"
    local: LocalBuckets = field(default_factory=LocalBuckets)
    _redis: aioredis.Redis | None = None
    _admit: AsyncScript | None = None
    _charge: AsyncScript | None = None
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _down_until: float = 0.0
    _healthy: bool = True

    def __post_init__(self) -> None:
        if self.redis_url:
            self._redis = aioredis.Redis.from_url(
                self.redis_url, socket_timeout=0.25, socket_connect_timeout=0.25
            )
            self._admit = self._redis.register_script(_ADMIT)
            self._charge = self._redis.register_script(_CHARGE)

    def _keys(self, team: str, day: str) -> list[str]:
        base = f"{self.prefix}:limits:{team}"
        return [f"{base}:requests", f"{base}:tokens", f"{base}:spent:{day}"]

    def _redis_usable(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._down_until

    def _failed(self, operation: str, exc: Exception) -> None:
        if self._healthy:
            log.warning(
                "redis unavailable for team limits (%s: %s); limiting per replica",
                operation,
                type(exc).__name__,
            )
        self._healthy = False
        self._down_until = time.monotonic() + RETRY_S

    def _ok(self) -> None:
        if not self._healthy:
            log.info("redis is back; team limits are shared again")
        self._healthy = True

    async def admit(self, team: TeamConfig) -> dict[str, str]:
        """Take one request for ``team``; its ``x-ratelimit-*`` headers, or RateLimitExceeded."""
        if not limited(team):
            return {}
        now = time.time()
        result: tuple[str, Admission] | None = None
        if self._redis_usable():
            result = await self._admit_shared(team, now)
        if result is None:
            if self._redis is not None:
                self.metrics.child(self.metrics.limits_fallback, "admit").inc()
            result = self.local.admit(team, now)
        denied, admission = result
        headers = _headers(team, admission)
        if denied:
            self.metrics.child(self.metrics.rate_limited, team.name, denied).inc()
            error = _refusal(team, denied, admission, now)
            error.extra_headers.update(headers)
            raise error
        return headers

    async def _admit_shared(self, team: TeamConfig, now: float) -> tuple[str, Admission] | None:
        assert self._redis is not None
        args: list[str | int | float] = [
            team.requests_per_minute or 0,
            team.tokens_per_minute or 0,
            team.daily_budget_usd or 0,
            _TTL_MS,
        ]
        try:
            assert self._admit is not None
            raw = await self._admit(keys=self._keys(team.name, utc_day(now)), args=args)
        except (RedisError, OSError) as exc:
            self._failed("admit", exc)
            return None
        self._ok()
        denied = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        admission = Admission(float(raw[1]), float(raw[2]), float(raw[3]))
        self.local.mirror(team, admission, now)
        return denied, admission

    def charge(self, team: TeamConfig, tokens: int, cost: float) -> None:
        """Charge an answer's tokens and cost (flushed in the background)."""
        if not limited(team) or (tokens <= 0 and cost <= 0):
            return
        pending = self._pending.get(team.name)
        if pending is None:
            pending = self._pending[team.name] = _Pending(team)
        pending.team = team
        pending.tokens += tokens
        pending.cost += cost
        if self._redis is None:
            self._apply_locally()

    async def flush(self) -> None:
        """Send the pending charges (one pipelined round trip), or apply them locally."""
        if not self._pending:
            return
        if not self._redis_usable():
            self._apply_locally()
            return
        assert self._redis is not None
        batch, self._pending = list(self._pending.values()), {}
        now = time.time()
        day = utc_day(now)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for item in batch:
                    _, tokens_key, spent_key = self._keys(item.team.name, day)
                    args: list[str | int | float] = [
                        item.tokens,
                        item.team.tokens_per_minute or 0,
                        repr(item.cost),
                        _TTL_MS,
                        _DAY_TTL_S,
                    ]
                    assert self._charge is not None
                    await self._charge(keys=[tokens_key, spent_key], args=args, client=pipe)
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("charge", exc)
            self.metrics.child(self.metrics.limits_fallback, "charge").inc()
            for item in batch:
                self._charged(item.team, *self.local.charge(item.team, item.tokens, item.cost, now))
            return
        self._ok()
        for item, (before, after) in zip(batch, results, strict=True):
            self.local.charge(item.team, item.tokens, float(after) - float(before), now)
            self._charged(item.team, float(before), float(after))

    def _apply_locally(self) -> None:
        batch, self._pending = list(self._pending.values()), {}
        now = time.time()
        for item in batch:
            self._charged(item.team, *self.local.charge(item.team, item.tokens, item.cost, now))

    def _charged(self, team: TeamConfig, before: float, after: float) -> None:
        budget = team.daily_budget_usd
        if not budget:
            return
        threshold = budget * team.budget_alert_at
        fields = {"team": team.name, "spent_usd": round(after, 6), "budget_usd": budget}
        if before < threshold <= after and team.budget_alert_at < 1:
            self.alerts.emit(
                "budget_threshold",
                f"team {team.name} has spent {after / budget:.0%} of its daily budget",
                share=team.budget_alert_at,
                **fields,
            )
        if before < budget <= after:
            self.alerts.emit(
                "budget_exceeded", f"team {team.name} has spent its daily budget", **fields
            )

    async def run(self) -> None:
        """The background flush loop."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.flush()
        if self._redis is not None:
            await self._redis.aclose()


def _headers(team: TeamConfig, admission: Admission) -> dict[str, str]:
    headers: dict[str, str] = {}
    if rpm := team.requests_per_minute:
        left = max(0.0, admission.requests)
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(math.floor(left))
        headers["x-ratelimit-reset-requests"] = reset_text((rpm - left) * 60 / rpm)
    if tpm := team.tokens_per_minute:
        left = max(0.0, admission.tokens)
        headers["x-ratelimit-limit-tokens"] = str(tpm)
        headers["x-ratelimit-remaining-tokens"] = str(math.floor(left))
        headers["x-ratelimit-reset-tokens"] = reset_text((tpm - admission.tokens) * 60 / tpm)
    if budget := team.daily_budget_usd:
        headers["x-gateway-budget-remaining-usd"] = f"{max(0.0, budget - admission.spent):.6f}"
    return headers


def _refusal(team: TeamConfig, denied: str, admission: Admission, now: float) -> RateLimitExceeded:
    if denied == "requests":
        rpm = team.requests_per_minute or 1
        wait = (1 - admission.requests) * 60 / rpm
        message = (
            f"Rate limit reached for team {team.name!r} on requests per min (RPM): limit {rpm}."
        )
    elif denied == "tokens":
        tpm = team.tokens_per_minute or 1
        wait = (1 - admission.tokens) * 60 / tpm
        message = f"Rate limit reached for team {team.name!r} on tokens per min (TPM): limit {tpm}."
    else:
        wait = seconds_to_midnight(now)
        message = (
            f"Team {team.name!r} has spent its daily budget of "
            f"${team.daily_budget_usd:g}; it resets at 00:00 UTC."
        )
    return RateLimitExceeded(
        f"{message} Please try again in {reset_text(wait)}.", kind=denied, retry_after=wait
    )
