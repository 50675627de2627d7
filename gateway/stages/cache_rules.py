"""What the semantic cache may serve, store and compare (gateway/stages/cache.py applies them).

A request bypasses the cache when its team or route turned it off, it asks to, it samples
above the allowed temperature, or it has no user turn to look up. A final user turn longer than
the embedder's window is looked up and stored by its exact text only. Only plain text answers
that ended normally and pass the quality heuristics are stored (cache_quality.py). Two answers
agree when equal up to case and spacing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cache.scope import normalise
from gateway.core.context import QUERY_EXCEEDS_WINDOW, RequestContext
from gateway.policy.cache_config import CacheSettings


def bypass_reason(ctx: RequestContext, settings: CacheSettings, mode: str) -> str | None:
    if not settings.enabled:
        return "disabled for this team or route"
    if mode == "bypass":
        return "x-gateway-cache: bypass"
    temperature = ctx.chat.temperature
    if temperature is not None and temperature > settings.max_temperature:
        return f"temperature {temperature} above {settings.max_temperature}"
    if not ctx.query_text:
        return "no user turn to look up"
    return None


async def semantic_skip_reason(ctx: RequestContext) -> str | None:
    """Why the request's final user turn may be neither served nor stored by similarity (the
    exact path still applies), or ``None`` when it may.

    Past the embedder's window the embedding is that of the turn's beginning: a turn that
    shares it and asks something else would be a hit at similarity 1.0.
    """
    if not await ctx.query_fits():
        return QUERY_EXCEEDS_WINDOW
    return None


def same_answer(fresh: str | None, cached: str | None) -> bool:
    """Whether two answers say the same: equal up to case and spacing.

    Cheap on purpose (it runs for every neighbour of every compared lookup). For providers whose
    answers vary in wording this under-counts agreement, which makes the policy more cautious,
    never less: fewer hits, not more wrong ones.
    """
    return fresh is not None and cached is not None and normalise(fresh) == normalise(cached)


def answer_text(body: Mapping[str, Any]) -> str | None:
    """The text of a plain answer; ``None`` for tool calls or anything else not cacheable."""
    try:
        message = body["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return None
    if message.get("tool_calls") or not isinstance(message.get("content"), str):
        return None
    content: str = message["content"]
    return content or None
