"""Whether a provider's answer is fit to be stored in the cache (gateway/stages/cache.py asks).

A cached answer is replayed to every repeat and paraphrase of its question, so a visibly bad one
must not get in: an empty answer, one cut by the token limit (``finish_reason`` other than
``stop``), a refusal, or invalid JSON when the request asked for JSON (``response_format``).

The verdict is the quality heuristics' (gateway/quality/heuristics.py), which the pipeline
records on the decision (``decision.quality["heuristic"]``) before the cache stage's ``after``
runs, for streamed and non-streamed answers alike: one scorer, so the cache and the quality
statistics never disagree on what a bad answer is. Without that record (a caller that skipped
the monitor) the cheap checks are made here: empty text, the finish reason, JSON parsing.

An answer made while the knowledge store was failing lacks the passages a request with the store
up would have had (the cache scope says "knowledge on"). It is stored, so the cache keeps
absorbing repeats during the outage (turning the cache off then would add provider load to a
store outage), but for ``DEGRADED_TTL_S`` at most: after the store is back, a question gets its
passages again within that long.
"""

from __future__ import annotations

import orjson

from gateway.core.context import KNOWLEDGE_UNAVAILABLE, RequestContext
from providers.base import Completion

# The longest an answer made without the knowledge base it should have had is kept (see above).
DEGRADED_TTL_S = 60.0

# The heuristics' flags that keep an answer out of the cache (all of them, today).
UNFIT_FLAGS = frozenset({"empty", "stream_error", "invalid_json", "refusal", "truncated"})


def unfit_to_store(ctx: RequestContext, completion: Completion, text: str) -> str | None:
    """Why ``completion`` (whose answer text is ``text``) must not be cached, or ``None``."""
    if completion.finish_reason != "stop":
        return "truncated" if completion.finish_reason == "length" else "finish_reason"
    if not text.strip():
        return "empty"
    verdict = ctx.decision.quality.get("heuristic")
    if isinstance(verdict, dict):
        flags = [flag for flag in verdict.get("flags") or () if flag in UNFIT_FLAGS]
        return flags[0] if flags else None
    if ctx.chat.wants_json:
        body = text.strip()
        if body.startswith("```"):
            body = body.strip("`").removeprefix("json").strip()
        try:
            if not isinstance(orjson.loads(body), dict):
                return "invalid_json"
        except orjson.JSONDecodeError:
            return "invalid_json"
    return None


def degraded(ctx: RequestContext) -> str | None:
    """Why ``ctx``'s answer is kept for ``DEGRADED_TTL_S`` at most, or ``None``."""
    return KNOWLEDGE_UNAVAILABLE if ctx.notes.get(KNOWLEDGE_UNAVAILABLE) else None


def ttl_s(ctx: RequestContext, configured_s: float) -> float:
    """How long ``ctx``'s answer is kept: the scope's TTL, or less when it is ``degraded``."""
    return min(configured_s, DEGRADED_TTL_S) if degraded(ctx) else configured_s
