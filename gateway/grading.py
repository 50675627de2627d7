"""Grading one answer with a judge model against a rubric: the seam eval and shadow share.

The prompt and the reading of the grade are the live judge's (``gateway.judge``), so a rubric
means the same thing in ``gateway eval``, in shadow mode and on live traffic. The judge is an
ordinary model alias called through the provider pool; an unreadable reply is a ``None`` score,
never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from providers.pool import ProviderPool
from providers.schema import ChatRequest, content_text

from .catalog import Candidate
from .cost import usage_cost
from .judge import judge_request, parse_grade
from .quality_config import JudgeConfig


@dataclass(frozen=True, slots=True)
class Grade:
    score: float | None  # None: the judge's reply held no readable 0..1 score
    cost_usd: float


def conversation_text(chat: ChatRequest) -> str:
    """The conversation a judge reads: one ``role: text`` line per message."""
    return "\n".join(f"{m.role}: {content_text(m.content)}" for m in chat.messages)


async def grade(
    pool: ProviderPool, judge: Candidate, rubric: str, question: str, answer: str
) -> Grade:
    """Ask ``judge`` to grade ``answer``; upstream failures raise the gateway's errors."""
    config = JudgeConfig(model=judge.model.name, rubric=rubric)
    completion = await pool.complete(judge.target, judge_request(config, judge, question, answer))
    choices = completion.body.get("choices") or [{}]
    content = (choices[0].get("message") or {}).get("content")
    score = parse_grade(content if isinstance(content, str) else "")
    return Grade(score, usage_cost(judge.model, completion.usage))
