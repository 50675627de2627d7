"""A request's isolation scope: which parts of a chat request can change its answer.

``cache.scope`` hashes the parts and owns the exact key; this module knows the request model and
picks the parts: the team, the route, the system prompt and every earlier turn, the tools, the
response format, the answer-changing parameters, the regions the request may be served from, and
whether the request turned the knowledge base off.

Why the knowledge mode: the cache is looked up before the knowledge stage, so the scope is the
request as the client sent it, and the answer stored under it is the one built on whatever
passages the knowledge stage then attached (tagged with their chunks, so re-ingesting invalidates
it). A request sent with ``x-gateway-knowledge: off`` gets no passages: a different input and a
different answer, which must never be served to a request that would have had passages, nor the
other way round. The part is added only for "off", so the scopes of every other request (and the
entries cached under them) stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cache.scope import scope_key, temperature_bucket
from providers.schema import ChatRequest, content_text


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
    knowledge_off: bool = False,
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
    if knowledge_off:
        parts["knowledge"] = "off"
    return scope_key(parts)
