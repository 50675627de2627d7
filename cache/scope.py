"""Isolation scopes: the exact part of a cache key.

Two requests may share a cached answer only when everything that can change the answer, other than
the wording of the final user turn, is identical: the team, the route, the system prompt, the
earlier turns, the tools, the response format, the answer-changing parameters and the regions the
request may be served from. The scope is a hash of those; semantic similarity is only ever looked
up inside one scope. (Answers built on knowledge-base context are also tagged with the chunks they
used, so re-ingesting a document invalidates them.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import orjson

from providers.schema import ChatRequest, content_text

_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    """What the exact path compares: case and runs of white space do not matter."""
    return _SPACES.sub(" ", text).strip().casefold()


def temperature_bucket(temperature: float | None) -> str:
    """Temperatures that answer alike share a bucket (unset means the provider default)."""
    if temperature is None:
        return "default"
    return f"{round(temperature, 1):.1f}"


def _turn(message: Any) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": message.role, "content": content_text(message.content)}
    calls = getattr(message, "tool_calls", None)
    if calls:
        turn["tool_calls"] = [(c.function.name, c.function.arguments) for c in calls]
    if message.role == "tool":
        turn["tool_call_id"] = message.tool_call_id
    return turn


def scope_of(
    *,
    team: str,
    route: str,
    chat: ChatRequest,
    regions: Iterable[str] | None,
) -> str:
    """The isolation scope of ``chat``: a 32-hex-digit hash of every answer-changing part."""
    messages = list(chat.messages)
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    earlier = [_turn(m) for i, m in enumerate(messages) if i != last_user]
    parts = {
        "team": team,
        "route": route,
        "turns": earlier,  # system prompt and every earlier turn, in order
        "tools": [t.model_dump(mode="json") for t in chat.tools or ()],
        "tool_choice": chat.tool_choice
        if isinstance(chat.tool_choice, str | None)
        else chat.tool_choice.model_dump(mode="json"),
        "format": chat.response_format.model_dump(mode="json", by_alias=True)
        if chat.response_format
        else None,
        "temperature": temperature_bucket(chat.temperature),
        "top_p": chat.top_p,
        "max_tokens": chat.output_limit,
        "stop": chat.stop_list,
        "seed": chat.seed,
        "penalties": (chat.presence_penalty, chat.frequency_penalty),
        "regions": sorted(regions) if regions is not None else None,
    }
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:32]


def exact_key(scope: str, query: str) -> str:
    """The exact-path key: the scope and the normalised final user turn."""
    return hashlib.sha256(f"{scope}\x00{normalise(query)}".encode()).hexdigest()[:40]
