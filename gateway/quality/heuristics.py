"""Heuristic quality signals of one answer: pure functions, cheap enough for every request.

``score_heuristics`` looks at an answer's text, finish reason and what the request asked for, and
names what is visibly wrong with it:

=================  ==================================================================  ======
flag               when                                                                 factor
=================  ==================================================================  ======
``empty``          no text and no tool call                                             0.0
``stream_error``   the stream failed after content reached the client                  0.0
``invalid_json``   JSON was asked for (``json_object`` / ``json_schema``) and the        0.0
                   answer is not a JSON object (or misses the schema)
``refusal``        the provider's ``refusal`` field, or a refusal phrase opening the     0.1
                   answer
``truncated``      ``finish_reason`` is ``length`` (cut by the token limit)             0.4
=================  ==================================================================  ======

The score is the product of the factors of the flags raised (1.0 for a clean answer), so it is
in 0..1; an answer *passes* when its score is at least ``PASS_AT``. The regression detector counts
passes and failures; the router and the dashboard read mean scores.

Cost: a length check, one lower-cased slice of the first ``REFUSAL_PREFIX_CHARS`` characters
matched against a phrase list, and a JSON parse only when the request asked for JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jsonschema
import orjson

PASS_AT = 0.5
REFUSAL_PREFIX_CHARS = 240

FACTORS: dict[str, float] = {
    "empty": 0.0,
    "stream_error": 0.0,
    "invalid_json": 0.0,
    "refusal": 0.1,
    "truncated": 0.4,
}

# Refusals open the answer; matching the opening keeps this cheap and avoids flagging an answer
# that merely quotes one of these phrases further down.
REFUSAL_PHRASES: tuple[str, ...] = (
    "i'm sorry, but i can",
    "i am sorry, but i can",
    "sorry, but i can't",
    "sorry, i can't",
    "sorry, i cannot",
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i can't provide",
    "i cannot provide",
    "i can't comply",
    "i cannot comply",
    "i won't be able to",
    "i'm not able to help",
    "i am not able to help",
    "i'm unable to",
    "i am unable to",
    "i must decline",
    "i must respectfully decline",
    "as an ai language model, i can",
    "as an ai, i can't",
    "as an ai, i cannot",
)


def _trie_pattern(phrases: tuple[str, ...]) -> str:
    """One regex alternation factored by common prefixes: Python's engine tries alternatives
    one by one at every position, so ``(?:i (?:can't|cannot))`` is ~4x faster than a flat list."""
    trie: dict[str, Any] = {}
    for phrase in phrases:
        node = trie
        for char in phrase:
            node = node.setdefault(char, {})
        node[""] = {}  # end of a phrase

    def walk(node: dict[str, Any]) -> str:
        if "" in node:
            return ""  # a shorter phrase already matches: longer ones add nothing
        branches = [re.escape(char) + walk(child) for char, child in sorted(node.items())]
        return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"

    return walk(trie)


_REFUSAL = re.compile(_trie_pattern(REFUSAL_PHRASES))


@dataclass(frozen=True, slots=True)
class HeuristicResult:
    """The heuristic verdict on one answer: a 0..1 score and the flags that lowered it."""

    score: float
    flags: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.score >= PASS_AT

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "flags": list(self.flags), "passed": self.passed}


def is_refusal(text: str) -> bool:
    """Whether ``text`` opens with a refusal phrase (case-insensitive, curly quotes folded)."""
    head = text[:REFUSAL_PREFIX_CHARS].lower().replace("\u2019", "'")
    return _REFUSAL.search(head) is not None


def json_problem(text: str, schema: dict[str, Any] | None = None) -> str | None:
    """Why ``text`` is not the JSON object asked for (``None`` when it is).

    With ``schema`` (``response_format.json_schema.schema``) the object is also validated
    against it. Models often wrap JSON in a Markdown fence; one fence is tolerated.
    """
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "not valid JSON"
    if not isinstance(value, dict):
        return "not a JSON object"
    if schema:
        try:
            validator = jsonschema.validators.validator_for(schema)(schema)
            error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        except Exception:  # any fault of the client's schema (unknown type, bad $ref) is the
            return None  # client's, not the model's, and must never fail the request
        if error is not None:
            return f"schema: {error.message[:120]}"
    return None


def score_heuristics(
    text: str | None,
    *,
    finish_reason: str | None = None,
    wants_json: bool = False,
    json_schema: dict[str, Any] | None = None,
    tool_calls: bool = False,
    refusal: str | None = None,
    stream_error: bool = False,
) -> HeuristicResult:
    """Score one answer. Pure: no I/O, no state; safe to call from anywhere (eval, shadow).

    ``text``: the answer's content; ``finish_reason`` as the provider reported it;
    ``wants_json``: the request asked for ``json_object`` or ``json_schema`` (``json_schema``:
    the schema, when given); ``tool_calls``: the answer called a tool (then no text is fine);
    ``refusal``: OpenAI's ``message.refusal`` field; ``stream_error``: the stream broke after
    content was sent.
    """
    flags: list[str] = []
    content = text or ""
    if stream_error:
        flags.append("stream_error")
    if (not content or content.isspace()) and not tool_calls and not refusal:
        flags.append("empty")
    elif refusal or (content and is_refusal(content)):
        flags.append("refusal")
    elif wants_json and not tool_calls and json_problem(content, json_schema) is not None:
        flags.append("invalid_json")
    if finish_reason == "length":
        flags.append("truncated")
    score = 1.0
    for flag in flags:
        score *= FACTORS[flag]
    return HeuristicResult(score=round(score, 4), flags=tuple(flags))


def score_completion_body(
    body: dict[str, Any],
    *,
    wants_json: bool = False,
    json_schema: dict[str, Any] | None = None,
) -> HeuristicResult:
    """``score_heuristics`` for an OpenAI ``chat.completion`` body (its first choice)."""
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = message.get("content")
    return score_heuristics(
        content if isinstance(content, str) else None,
        finish_reason=choice.get("finish_reason"),
        wants_json=wants_json,
        json_schema=json_schema,
        tool_calls=bool(message.get("tool_calls")),
        refusal=message.get("refusal") or None,
    )
