"""The cache path in ``bench.overhead``: exact hits and unique-question misses, with Redis.

A second gateway runs beside (c), with the same policy plus ``cache: {enabled: true}`` and a
throwaway ``redis-server`` (``GATEWAY_REDIS_URL``), the default embedder (int8 MiniLM):

- (h) exact hits: the chat request of (c), over and over; after the first it is answered from the
  cache's exact path (the upstream is not called);
- (u) unique-question misses: every request asks a question never asked before (a run nonce and
  a counter in the text, written by wrk's Lua ``request``), so each one walks the whole miss
  path: embed, semantic lookup in the scope, upstream call, store.

Both are printed in the same table as (a), (b), (c), with the ratios the issue asks for:
(h)/(c) req/s (target >= 1.3), (u) req/s at c=32 (target >= 550), (u) c=1 p50 (target <= 3.5 ms).
The gateway's own counters (``/metrics``) are read before and after each measurement, so the
report says what the requests were (hits, misses) and whether any lookup or store failed; its
log is searched for ``Too many connections``. ``--cache-connections`` adds a run of (h) and (u)
at that many connections (default 256) to show the Redis client does not run dry.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

TARGET_HIT_SHARE_OF_PASS = 1.3
TARGET_MISS_RPS = 550.0
TARGET_MISS_P50_MS = 3.5

LABELS = {
    "h": "(h) gateway exact cache hits",
    "u": "(u) gateway unique misses",
}
# The question of (u) number n: six words drawn from WORDS by a Park-Miller generator seeded
# with n (no template beyond the id, so questions are far apart), and the id, a number the guard
# reads (cache/guard.py). The fake upstream answers each with its own text (``unique_answer``),
# so comparisons teach the cache that no two share an answer: the stream stays misses, as new
# questions would. wrk's Lua script draws the same words (LuaJIT's doubles hold the products).
WORDS = (
    "invoice",
    "payroll",
    "laptop",
    "vacation",
    "badge",
    "printer",
    "contract",
    "parking",
    "expense",
    "travel",
    "password",
    "backup",
    "firewall",
    "license",
    "meeting",
    "budget",
    "audit",
    "pension",
    "insurance",
    "training",
    "shipment",
    "warehouse",
    "refund",
    "discount",
    "warranty",
    "supplier",
    "forecast",
    "hiring",
    "onboarding",
    "compliance",
    "vpn",
    "email",
    "calendar",
    "kitchen",
    "gym",
    "parcel",
    "visa",
    "relocation",
    "bonus",
    "overtime",
    "security",
    "cafeteria",
    "library",
    "mentoring",
    "sabbatical",
    "monitor",
    "keyboard",
    "headset",
    "desk",
    "chair",
    "elevator",
    "badge-reader",
    "shuttle",
    "bicycle",
    "garden",
    "coffee",
    "holiday",
    "dentist",
    "pharmacy",
    "daycare",
    "mortgage",
    "loan",
    "tax",
    "dividend",
    "stock",
    "option",
    "vesting",
    "promotion",
    "transfer",
    "resignation",
    "reference",
    "interview",
    "salary",
    "invoice-number",
    "purchase",
    "order",
    "quote",
    "tender",
    "patent",
    "trademark",
    "lawsuit",
    "settlement",
    "merger",
    "acquisition",
    "dashboard",
    "database",
    "server",
    "cluster",
    "outage",
    "incident",
    "ticket",
    "release",
    "deploy",
    "rollback",
    "certificate",
    "encryption",
    "token",
)
_MODULUS, _MULTIPLIER = 2_147_483_647, 16_807


def question(nonce: int, n: int) -> str:
    x, words = (nonce + n) % _MODULUS or 1, []
    for _ in range(6):
        x = x * _MULTIPLIER % _MODULUS
        words.append(WORDS[x % len(WORDS)])
    return f"Question {nonce}-{n}: {' '.join(words)}?"


MARKER = b"Question "


def unique_answer(request_body: bytes) -> str | None:
    """The fake upstream's answer to a (u) question (``None`` for any other request)."""
    at = request_body.find(MARKER)
    if at < 0:
        return None
    end = request_body.find(b":", at)
    return f"Answer to {request_body[at + len(MARKER) : end].decode(errors='replace')}."


def unique_body(template: dict[str, Any], nonce: int, n: int) -> str:
    """The request body of (u) number ``n`` (the Python load generator's)."""
    body = json.loads(json.dumps(template))
    body["messages"][-1]["content"] = question(nonce, n)
    return json.dumps(body, separators=(",", ":"))


def unique_script(request_body: str, headers: dict[str, str]) -> str:
    """A wrk Lua script whose every request asks a new question (a fresh nonce per script,
    so the warm-up and the measured run never repeat one)."""
    template = json.loads(request_body)
    marker = "@@QUESTION@@"
    template["messages"][-1]["content"] = marker
    head, tail = json.dumps(template, separators=(",", ":")).split(marker)
    nonce = secrets.randbelow(10**9)
    lines = ['wrk.method = "POST"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    words = ", ".join(f'"{word}"' for word in WORDS)
    lines += [
        "local n = 0",
        f"local w = {{{words}}}",
        f"local head = [==[{head}]==]",
        f"local tail = [==[{tail}]==]",
        "request = function()",
        "  n = n + 1",
        f"  local x = ({nonce} + n) % {_MODULUS}",
        "  if x == 0 then x = 1 end",
        "  local q = {}",
        "  for i = 1, 6 do",
        f"    x = (x * {_MULTIPLIER}) % {_MODULUS}",
        f"    q[i] = w[x % {len(WORDS)} + 1]",
        "  end",
        f'  local text = "Question {nonce}-" .. n .. ": " .. table.concat(q, " ") .. "?"',
        "  return wrk.format(nil, nil, nil, head .. text .. tail)",
        "end",
    ]
    return "\n".join(lines) + "\n"


def policy_cache_section() -> str:
    return "cache:\n  enabled: true\n"


def gateway_env(redis_url: str) -> dict[str, str]:
    return {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": "bench-cache"}


_SAMPLE = re.compile(r'^gateway_cache_(lookups|errors|pool_waits)_total\{\w+="([^"]+)"\}\s+(\S+)$')


async def counters(metrics_url: str) -> dict[str, float]:
    """The gateway's cache counters now: ``lookups:hit_exact``, ``errors:store``, ..."""
    async with aiohttp.ClientSession() as session, session.get(metrics_url) as response:
        text = await response.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if match := _SAMPLE.match(line):
            found[f"{match[1]}:{match[2]}"] = float(match[3])
    return found


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {
        key: int(value - before.get(key, 0.0))
        for key, value in sorted(after.items())
        if value - before.get(key, 0.0) > 0
    }


async def check_hit(url: str, body: str, headers: dict[str, str]) -> str:
    """Send (h)'s request until the cache answers it (the first store is in the background);
    the ``x-gateway-cache`` header of the last answer."""
    verdict = ""
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                verdict = response.headers.get("x-gateway-cache", "")
            if verdict == "hit":
                break
            await asyncio.sleep(0.05)
    return verdict


def too_many_connections(log: Path) -> int:
    """Lines of the gateway's log that say its Redis client ran out of connections."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return 0
    return sum("Too many connections" in line for line in text.splitlines())


def describe(counted: dict[str, int]) -> str:
    lookups = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in counted.items() if "lookups" in k)
    errors = {k.split(":", 1)[1]: v for k, v in counted.items() if k.startswith("errors:")}
    waits = sum(v for k, v in counted.items() if k.startswith("pool_waits:"))
    failed = ", ".join(f"{k} {v}" for k, v in errors.items()) or "none"
    return f"lookups: {lookups or 'none'}; cache errors: {failed}; pool waits: {waits}"


def report(
    c1: dict[str, Any],
    cn: dict[str, Any],
    connections: int,
    counted: dict[str, dict[str, int]],
    fmt: Callable[..., str],
) -> list[str]:
    """The cache lines' ratios and verdicts; ``c1``/``cn`` map target keys to results."""
    lines: list[str] = []
    if "h" in cn and "c" in cn and cn["c"].rps > 0:
        share = cn["h"].rps / cn["c"].rps
        verdict = "MET" if share >= TARGET_HIT_SHARE_OF_PASS else "MISSED"
        lines.append(
            f"{f'req/s (h)/(c), c={connections}':<30}{share:>9.2f}x{'':>8}"
            f"   target >= {TARGET_HIT_SHARE_OF_PASS}x: {verdict}"
        )
    if "h" in c1 and "c" in c1:
        faster = c1["h"].latency_ms[50] - c1["c"].latency_ms[50]
        lines.append(f"{'p50 (h)-(c), c=1':<30}{fmt(faster, sign=True)}")
    if "u" in cn:
        verdict = "MET" if cn["u"].rps >= TARGET_MISS_RPS else "MISSED"
        lines.append(
            f"{f'req/s (u), c={connections}':<30}{cn['u'].rps:>9.0f}{'':>9}"
            f"   target >= {TARGET_MISS_RPS:.0f}: {verdict}"
        )
        if "c" in cn and cn["c"].rps > 0:
            ratio = cn["u"].rps / cn["c"].rps
            lines.append(f"{f'req/s (u)/(c), c={connections}':<30}{ratio:>9.2f}x")
    if "u" in c1:
        p50 = c1["u"].latency_ms[50]
        verdict = "MET" if p50 <= TARGET_MISS_P50_MS else "MISSED"
        lines.append(
            f"{'p50 (u), c=1':<30}{p50:>9.3f}{'':>9}   target <= {TARGET_MISS_P50_MS} ms: {verdict}"
        )
    for name, found in counted.items():
        lines.append(f"  {name}: {describe(found)}")
    return lines
