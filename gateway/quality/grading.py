"""Grading one answer with a judge model against a rubric: the seam the live judge, eval and
shadow share.

One prompt and one reading of the grade, so a rubric means the same thing on live traffic
(``gateway.quality.judge``), in ``gateway eval`` and in shadow mode. The judge is an ordinary model
alias called through the provider pool; an unreadable reply is a ``None`` score, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.policy.catalog import Candidate
from gateway.telemetry.cost import usage_cost
from providers.base import Usage
from providers.pool import ProviderPool
from providers.schema import ChatRequest, content_text

MAX_ANSWER_CHARS = 8000
SYSTEM = (
    "You grade an assistant's answer to a user's request against a rubric. Reply with only a "
    'JSON object: {"score": <a number from 0 (fails the rubric) to 1 (fully meets it)>, '
    '"reason": "<one short sentence>"}.\n\nRubric: '
)
_NUMBER = re.compile(r"(?<![\d.])(0(?:\.\d+)?|1(?:\.0+)?)(?![\d.])")


@dataclass(frozen=True, slots=True)
class Grade:
    score: float | None  # None: the judge's reply held no readable 0..1 score
    cost_usd: float
    usage: Usage


def parse_grade(text: str) -> float | None:
    """The 0..1 score in a judge's reply: ``{"score": x}``, else the first number in 0..1."""
    body = text.strip().strip("`").removeprefix("json").strip()
    try:
        value: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        score = value.get("score")
        if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1:
            return float(score)
        return None
    match = _NUMBER.search(text)
    return float(match.group(1)) if match else None


def judge_request(rubric: str, candidate: Candidate, question: str, answer: str) -> ChatRequest:
    """The grading request sent to the judge model."""
    body: dict[str, Any] = {
        "model": candidate.model.name,
        "messages": [
            {"role": "system", "content": SYSTEM + rubric},
            {
                "role": "user",
                "content": f"Request:\n{question}\n\nAnswer:\n{answer[:MAX_ANSWER_CHARS]}",
            },
        ],
        "temperature": 0,
        "max_tokens": 200,
    }
    if candidate.model.supports_json:
        body["response_format"] = {"type": "json_object"}
    return ChatRequest.from_body(body)


def conversation_text(chat: ChatRequest) -> str:
    """The conversation a judge reads: one ``role: text`` line per message."""
    return "\n".join(f"{m.role}: {content_text(m.content)}" for m in chat.messages)


async def grade(
    pool: ProviderPool, judge: Candidate, rubric: str, question: str, answer: str
) -> Grade:
    """Ask ``judge`` to grade ``answer``; upstream failures raise the gateway's errors."""
    completion = await pool.complete(judge.target, judge_request(rubric, judge, question, answer))
    choices = completion.body.get("choices") or [{}]
    content = (choices[0].get("message") or {}).get("content")
    score = parse_grade(content if isinstance(content, str) else "")
    return Grade(score, usage_cost(judge.model, completion.usage), completion.usage)
