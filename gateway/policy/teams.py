"""Teams added or re-keyed at run time, overlaid on the policy file's teams.

The overlay maps a team name to TeamConfig fields: a whole team for one added through the admin
API, or just ``key_sha256`` for a policy team whose key was rotated (its other fields keep coming
from the file, so a reload that changes them still applies). It lives in the Redis hash
``<prefix>:teams`` when Redis is configured, so every replica sees the same teams: each re-reads it
every ``SYNC_INTERVAL_S`` and, when it changed, compiles a new catalog and swaps it in. Without
Redis it lives in process. Keys are never stored, only their SHA-256; a new key is shown once, in
the admin API's answer.

A Redis outage keeps the last overlay read (no team disappears, no rotated key comes back).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from gateway.core.validation import describe

from .catalog import Catalog
from .model import Policy, TeamConfig, hash_key

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 1.0
KEY_PREFIX = "sk-gw-"


class TeamStoreUnavailable(Exception):
    """The overlay could not be read or written."""


class TeamError(ValueError):
    """An admin request that names an impossible team (the message says which field)."""


class TeamRegistry:
    """The policy's teams plus the overlay; builds the catalog every request authenticates on."""

    def __init__(
        self,
        environ: Mapping[str, str],
        *,
        redis_url: str | None = None,
        prefix: str = "gw",
    ) -> None:
        self.environ = environ
        self.overlay: dict[str, dict[str, Any]] = {}
        self._raw: dict[Any, Any] | None = None
        self._key = f"{prefix}:teams"
        self._redis = (
            aioredis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            if redis_url
            else None
        )
        self._healthy = True

    # -- building -------------------------------------------------------------------------
    def catalog(self, policy: Policy) -> Catalog:
        """``policy`` with the overlay's teams merged in; overlay entries that no longer fit the
        policy (a route gone, a key now used by another team) are left out, with a warning."""
        teams = {t.name: t.model_dump() for t in policy.teams}
        if not self.overlay:
            return Catalog(policy, self.environ)
        everything = {**teams}
        for name, fields in self.overlay.items():
            everything[name] = {**teams.get(name, {}), **fields, "name": name}
        with contextlib.suppress(ValueError):
            return Catalog(_merged(policy, everything), self.environ)  # the usual case: one pass
        for name, fields in sorted(self.overlay.items()):  # find the entries that do not fit
            candidate = {**teams, name: {**teams.get(name, {}), **fields, "name": name}}
            try:
                _merged(policy, candidate)
            except ValueError as exc:
                log.warning("ignoring run-time team %r: %s", name, exc)
                continue
            teams = candidate
        return Catalog(_merged(policy, teams), self.environ)

    # -- admin operations -----------------------------------------------------------------
    async def add(self, policy: Policy, spec: dict[str, Any]) -> tuple[TeamConfig, str]:
        """Add a team from ``spec`` (TeamConfig fields, no key); returns it and its new key."""
        name = spec.get("name")
        if not isinstance(name, str):
            raise TeamError("name: required (a string)")
        if "key_sha256" in spec:
            raise TeamError("key_sha256: the gateway makes the key; do not send one")
        if name in self.overlay or any(t.name == name for t in policy.teams):
            raise TeamError(f"name: team {name!r} already exists")
        key = new_key()
        fields = {**spec, "key_sha256": [hash_key(key)]}
        self._check(policy, name, fields)
        await self._write(name, fields, create=True)
        team = next(t for t in self.catalog(policy).policy.teams if t.name == name)
        return team, key

    async def rotate(self, policy: Policy, name: str) -> str:
        """A new key for ``name``; the old one stops working (here at once, elsewhere within
        ``SYNC_INTERVAL_S``)."""
        await self.refresh()
        exists = name in self.overlay or any(t.name == name for t in policy.teams)
        if not exists:
            raise KeyError(name)
        key = new_key()
        fields = {**self.overlay.get(name, {}), "key_sha256": [hash_key(key)]}
        self._check(policy, name, fields)
        await self._write(name, fields)
        return key

    def _check(self, policy: Policy, name: str, fields: dict[str, Any]) -> None:
        teams = {t.name: t.model_dump() for t in policy.teams}
        teams.update({n: {**teams.get(n, {}), **f, "name": n} for n, f in self.overlay.items()})
        teams[name] = {**teams.get(name, {}), **fields, "name": name}
        try:
            _merged(policy, teams)
        except ValueError as exc:
            raise TeamError(str(exc)) from exc

    async def _write(self, name: str, fields: dict[str, Any], *, create: bool = False) -> None:
        if self._redis is not None:
            value = orjson.dumps(fields)
            try:
                if create:  # another replica may be adding the same name right now
                    if not await self._redis.hsetnx(self._key, name, value):
                        raise TeamError(f"name: team {name!r} already exists")
                else:
                    await self._redis.hset(self._key, name, value)
            except (RedisError, OSError) as exc:
                raise TeamStoreUnavailable(f"redis: {type(exc).__name__}") from exc
        self.overlay[name] = fields

    # -- replication ----------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Re-read the overlay from Redis; whether it changed."""
        if self._redis is None:
            return False
        try:
            raw: dict[Any, Any] = await self._redis.hgetall(self._key)
        except (RedisError, OSError) as exc:
            if self._healthy:
                log.warning(
                    "redis unavailable for the team overlay (%s); keeping the last one", exc
                )
            self._healthy = False
            return False
        self._healthy = True
        if raw == self._raw:
            return False
        overlay: dict[str, dict[str, Any]] = {}
        for name, value in raw.items():
            try:
                fields = orjson.loads(value)
            except orjson.JSONDecodeError:
                log.warning("ignoring a malformed run-time team record %r", name)
                continue
            if isinstance(fields, dict):
                overlay[name.decode() if isinstance(name, bytes) else name] = fields
        self._raw, self.overlay = raw, overlay
        return True

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _merged(policy: Policy, teams: dict[str, dict[str, Any]]) -> Policy:
    data = policy.model_dump()
    data["teams"] = list(teams.values())
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise ValueError(describe(exc)) from exc


def public_view(team: TeamConfig, source: str) -> dict[str, Any]:
    """What the admin API shows of a team: never a key or a key hash."""
    return {
        "name": team.name,
        "source": source,
        "routes": team.routes,
        "regions": team.regions,
        "keys": len(team.key_sha256),
        "requests_per_minute": team.requests_per_minute,
        "tokens_per_minute": team.tokens_per_minute,
        "daily_budget_usd": team.daily_budget_usd,
        "budget_alert_at": team.budget_alert_at,
    }
