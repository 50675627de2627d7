"""What a model's policy adds to a request on its way upstream; pure, shared by the adapters.

Two options a model may carry in ``Target.options`` (``gateway/policy/model.py`` sets them):

- ``default_max_tokens``: the output limit of a request that sets none. A small model on a CPU
  left unbounded generates until its context is full (minutes, holding the server).
- ``system_role: False``: the model's chat template has no system role (Gemma's drops system
  messages), so the system and developer turns, the client's and the knowledge base's passages
  alike, are folded into the user turn that follows them instead of being lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .schema import ChatRequest

_SYSTEM_ROLES = frozenset({"system", "developer"})


def output_limit(request: ChatRequest, options: Mapping[str, Any]) -> int | None:
    """The client's limit (``max_completion_tokens``, else ``max_tokens``), else the model's
    ``default_max_tokens``, else ``None`` (the provider decides)."""
    limit = request.output_limit
    if limit is not None:
        return limit
    default = options.get("default_max_tokens")
    return int(default) if default is not None else None


def folds_system(options: Mapping[str, Any]) -> bool:
    """Whether the target's model has no system role (``system_role: false`` in the policy)."""
    return options.get("system_role", True) is False


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _prepend(content: Any, text: str) -> Any:
    """``content`` (a string or a list of parts) with ``text`` before it."""
    if isinstance(content, list):
        return [{"type": "text", "text": text}, *content]
    return f"{text}\n\n{content}" if content else text


def fold_system_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI wire-format ``messages`` without system or developer turns: their text goes, in
    order and separated by blank lines, at the start of the next user turn; what no user turn
    follows becomes a user turn of its own at the end. Other turns are unchanged."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for message in messages:
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            if text := _text(message.get("content")).strip():
                pending.append(text)
            continue
        entry = dict(message)
        if role == "user" and pending:
            entry["content"] = _prepend(entry.get("content"), "\n\n".join(pending))
            pending = []
        out.append(entry)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


def without_system_role(request: ChatRequest) -> ChatRequest:
    """``request`` with its system turns folded into user turns (``fold_system_messages``)."""
    if not any(m.role in _SYSTEM_ROLES for m in request.messages):
        return request
    body = dict(request.raw)
    body["messages"] = fold_system_messages(body["messages"])
    return ChatRequest.from_body(body)
