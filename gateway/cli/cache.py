"""``gateway cache ...``: run-time cache settings and invalidation (straight on Redis), replay.

    gateway cache show                                   the run-time overrides
    gateway cache set (default|team:T|route:R) KEY=VALUE ...   e.g. max_error_rate=0.005
    gateway cache unset (default|team:T|route:R)
    gateway cache invalidate (--team T | --route R | --all)
    gateway cache replay FILE [--max-error-rate ...]       offline, against a scratch cache

Every replica applies a change within seconds (they poll the same Redis hash).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson

from cache.store import CacheUnavailable, RedisStore
from gateway.policy.cache_config import validate_override


def add_parser(commands: Any) -> None:
    cache = commands.add_parser("cache", help="cache settings, invalidation, replay")
    cache.add_argument("--redis-url", default=os.environ.get("GATEWAY_REDIS_URL"))
    cache.add_argument("--redis-prefix", default=os.environ.get("GATEWAY_REDIS_PREFIX", "gw"))
    actions = cache.add_subparsers(dest="cache_command", required=True)
    actions.add_parser("show", help="print the run-time overrides")
    setter = actions.add_parser("set", help="set run-time overrides for a scope")
    setter.add_argument("scope", help="default, team:<name> or route:<name>")
    setter.add_argument("values", nargs="+", help="KEY=VALUE, e.g. max_error_rate=0.005")
    unset = actions.add_parser("unset", help="remove a scope's run-time overrides")
    unset.add_argument("scope")
    invalidate = actions.add_parser("invalidate", help="drop cached answers")
    which = invalidate.add_mutually_exclusive_group(required=True)
    which.add_argument("--team")
    which.add_argument("--route")
    which.add_argument("--all", action="store_true")
    replay = actions.add_parser("replay", help="replay a JSONL request log against a scratch cache")
    replay.add_argument("rest", nargs=argparse.REMAINDER, help="FILE and replay options")


def run(args: argparse.Namespace) -> int:
    if args.cache_command == "replay":
        from cache.replay import main as replay_main

        return replay_main(args.rest)
    if not args.redis_url:
        print("error: set GATEWAY_REDIS_URL or pass --redis-url", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except CacheUnavailable as exc:
        print(f"error: Redis unavailable: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace) -> int:
    store = RedisStore(args.redis_url, prefix=args.redis_prefix, timeout_s=5)
    try:
        command = args.cache_command
        if command == "show":
            print(orjson.dumps(await store.get_config(), option=orjson.OPT_INDENT_2).decode())
        elif command in ("set", "unset"):
            _check_scope(args.scope)
            values = _parse(args.values) if command == "set" else None
            await store.set_config(args.scope, values)
            print(f"{args.scope}: {values if values is not None else 'removed'}")
        else:
            removed = await store.invalidate(team=args.team, route=args.route, chunks=None)
            print(f"removed {removed} cached answers")
    finally:
        await store.close()
    return 0


def _check_scope(scope: str) -> None:
    if scope != "default" and not scope.startswith(("team:", "route:")):
        raise ValueError("scope must be default, team:<name> or route:<name>")


def _parse(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            values[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            values[key] = raw
    return validate_override(values)
