"""When a curated FAQ answer is returned without a model: the calibrated decision.

One cosine threshold either answers almost nothing (paraphrases of a curated question score
0.5-0.8 with all-MiniLM-L6-v2) or answers questions it does not answer ("...for part-time
employees?" scores like a paraphrase). The decision for the nearest curated question, in order:

1. **guard**: the cache's lexical guard (:func:`cache.guard.conflict`, shared, not copied) between
   the user's question and the curated *question*: a number, date, negation, entity or quoted
   string on one side only means no direct answer;
2. **withdrawn**: a question close to one whose direct answer from this entry got a low feedback
   score (:class:`Withdrawals`) is not answered directly by it;
3. **bands** (:func:`bands_for`, from ``max_error_rate`` and the kb's calibration):
   at or above ``direct_at`` with a margin of at least ``min_margin`` over the runner-up curated
   question: answered directly; at or above ``verify_at``: the cheapest model the request may use
   is asked a one-token yes/no question first (gateway/stages/knowledge_verify.py); below: no
   direct answer (the entry is attached as context like any passage).

How the bands derive from ``max_error_rate`` (d): the calibration models the best score of a
question the FAQ must not answer (and that the guard lets through) as a normal distribution,
fitted on the kb's dev split (mean m, sd s); ``tail(t) = P(score >= t)``. Half of d goes to the
unverified band: ``direct_at = m + s * z(d/2)``, at least ``answer_threshold`` (ops' floor) and
at most ``UNVERIFIED_CEILING`` (the floor wins). The rest (all of d when ``direct_at`` is the
ceiling or the floor rather than the calibrated score: those are rules, not the model) goes to
the verified band, whose error is ``tail(t) * e`` with ``e`` the verifier's false-yes rate
measured on the same split: ``verify_at = m + s * z(rest/e)``, between ``context_threshold`` and
``direct_at`` (``z(p)``: the standard normal's upper ``p`` quantile). The false-yes rate is taken
as at least ``1/(n+1)`` for ``n`` dev negatives: zero errors in twelve questions do not make a
verifier perfect, so a small dev split keeps the verified band narrow at a small ``d``. A
verifier that says yes to most negatives (``e`` near 1) leaves almost no verified band: the
decision fails safe to "not direct".
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from cache.guard import conflict
from gateway.policy.knowledge_config import KnowledgeCalibration, KnowledgeSettings
from retrieval.store import Hit

# all-MiniLM-L6-v2 on examples/kb's dev split (bench/data/knowledge_dev.jsonl: 58 must-not
# questions, 47 past the guard), measured with `python -m bench.knowledge --calibrate`; a kb
# without its own calibration uses it. SmolLM2-135M-Instruct (the embedded local model) cannot
# answer yes/no (its one token is "The"; given four it says "The answer is yes" to anything,
# "What is the capital of France?" included): unusable, so no request waits on it.
DEFAULT_CALIBRATION = KnowledgeCalibration(
    negatives_mean=0.626,
    negatives_sd=0.1715,
    verifiers={"smollm2-135m": 1.0},
    verifier_false_yes=0.1,
    samples=58,
    embedding_model="all-MiniLM-L6-v2",
)
# A guard-clean question at least this close to a curated one is that question reworded
# trivially (case, punctuation, a typo): answered without a model whatever the calibration.
UNVERIFIED_CEILING = 0.97
# A question at least this close to one whose direct answer was withdrawn is the same kind of
# question: the entry no longer answers it directly.
WITHDRAWN_RADIUS = 0.8

_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class Bands:
    """Score bands of one kb under one setting (see the module docstring)."""

    direct_at: float  # at or above (with the margin): answered without a model
    verify_at: float  # at or above: verified by a model first; below: not answered directly
    min_margin: float

    def to_dict(self) -> dict[str, float]:
        return {
            "direct_at": round(self.direct_at, 4),
            "verify_at": round(self.verify_at, 4),
            "min_margin": round(self.min_margin, 4),
        }


def _upper(p: float, mean: float, sd: float) -> float:
    """The score a negative reaches with probability ``p`` (``tail(score) = p``)."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    return mean + sd * _NORMAL.inv_cdf(1 - p)


def bands_for(
    settings: KnowledgeSettings, calibration: KnowledgeCalibration, verifier: str | None
) -> Bands:
    """The bands for ``settings`` (``max_error_rate``, ``answer_threshold``, ``min_margin``,
    ``verify``, ``context_threshold``) and a kb's ``calibration``; ``verifier``: the alias of
    the model that would be asked for this request (None: none may be)."""
    delta = settings.max_error_rate
    mean, sd = calibration.negatives_mean, calibration.negatives_sd
    calibrated = _upper(delta / 2, mean, sd)
    direct_at = max(settings.answer_threshold, min(UNVERIFIED_CEILING, calibrated))
    # The unverified band's half of the budget is spent only where the calibration placed it;
    # at the ceiling (or ops' floor above it) it is a rule the model does not describe, and the
    # verified band gets the whole budget.
    budget = delta if direct_at < calibrated else delta / 2
    floor = 1 / (calibration.samples + 1) if calibration.samples else 0.0
    if verifier is None or not settings.verify:
        return Bands(direct_at, direct_at, settings.min_margin)  # no verified band
    measured = calibration.verifiers.get(verifier, calibration.verifier_false_yes)
    false_yes = max(measured, floor)
    if false_yes >= 1.0:
        return Bands(direct_at, direct_at, settings.min_margin)  # no verified band
    verify_p = budget / false_yes if false_yes > 0 else 1.0
    verify_at = max(settings.context_threshold, _upper(verify_p, mean, sd))
    return Bands(direct_at, min(direct_at, verify_at), settings.min_margin)


@dataclass(frozen=True, slots=True)
class AnswerDecision:
    """What to do with the nearest curated entry: ``direct``, ``verify`` or ``no``."""

    outcome: str
    reason: str  # why (for "no": guard / withdrawn / below / margin)
    entry: Hit | None
    score: float
    margin: float | None  # over the runner-up curated question (None: no runner-up)

    def record(self, bands: Bands) -> dict[str, Any]:
        """The decision record's view of it."""
        found: dict[str, Any] = {
            "outcome": self.outcome,
            "reason": self.reason,
            "score": round(self.score, 4),
            **bands.to_dict(),
        }
        if self.margin is not None:
            found["margin"] = round(self.margin, 4)
        if self.entry is not None:
            found["entry"] = self.entry.id
        return found


def decide(
    query: str,
    faqs: list[Hit],
    bands: Bands,
    *,
    withdrawn: Withdrawals | None = None,
    vector: npt.NDArray[np.float32] | None = None,
) -> AnswerDecision:
    """The decision for ``query`` given the nearest curated entries (best first)."""
    if not faqs:
        return AnswerDecision("no", "no_entry", None, 0.0, None)
    best = faqs[0]
    margin = best.score - faqs[1].score if len(faqs) > 1 else None
    question = str(best.payload.get("question") or "")

    def no(reason: str) -> AnswerDecision:
        return AnswerDecision("no", reason, best, best.score, margin)

    if best.score < bands.verify_at:
        return no("below")
    if reason := conflict(query, question):
        return no(f"guard: {reason}")
    if withdrawn is not None and vector is not None and withdrawn.blocks(best.id, vector):
        return no("withdrawn")
    clear = margin is None or margin >= bands.min_margin
    if best.score >= bands.direct_at and clear:
        return AnswerDecision("direct", "direct_band", best, best.score, margin)
    if bands.verify_at >= bands.direct_at:  # no verified band: a narrow margin is a no
        return no("margin")
    reason = "verify_band" if best.score < bands.direct_at else "margin"
    return AnswerDecision("verify", reason, best, best.score, margin)


@dataclass(slots=True)
class _Withdrawn:
    kb: str
    question: str
    vectors: list[npt.NDArray[np.float32]] = field(default_factory=list)
    since: float = field(default_factory=time.time)


class Withdrawals:
    """Curated entries whose direct answer got a low feedback score, with the questions it was
    wrong for: a new question within ``WITHDRAWN_RADIUS`` of one of them is not answered
    directly by that entry (other questions still are). Kept per replica, in memory; bounded."""

    MAX_PER_ENTRY = 64

    def __init__(self) -> None:
        self._entries: dict[str, _Withdrawn] = {}

    def add(self, entry: str, kb: str, question: str, vector: npt.NDArray[np.float32]) -> None:
        found = self._entries.setdefault(entry, _Withdrawn(kb, question))
        found.vectors = [*found.vectors[-(self.MAX_PER_ENTRY - 1) :], vector]

    def blocks(self, entry: str, vector: npt.NDArray[np.float32]) -> bool:
        found = self._entries.get(entry)
        if found is None:
            return False
        return any(float(np.dot(v, vector)) >= WITHDRAWN_RADIUS for v in found.vectors)

    def listing(self) -> list[dict[str, Any]]:
        """What the admin API shows: each entry, how many questions it no longer answers."""
        return [
            {
                "entry": entry,
                "kb": w.kb,
                "question": w.question,
                "withdrawn": len(w.vectors),
                "since": w.since,
            }
            for entry, w in sorted(self._entries.items())
        ]


@dataclass(frozen=True, slots=True)
class Served:
    """A direct answer this replica gave, kept for feedback on it."""

    entry: str
    kb: str
    question: str
    vector: npt.NDArray[np.float32]


class RecentAnswers:
    """The last ``size`` direct answers by request id (feedback names the request)."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._served: OrderedDict[str, Served] = OrderedDict()

    def add(self, request_id: str, served: Served) -> None:
        self._served[request_id] = served
        while len(self._served) > self._size:
            self._served.popitem(last=False)

    def pop(self, request_id: str) -> Served | None:
        return self._served.pop(request_id, None)
