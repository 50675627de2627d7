"""When a curated FAQ answer is returned without a model: the calibrated decision.

One cosine threshold either answers almost nothing (paraphrases of a curated question score
0.5-0.8 with all-MiniLM-L6-v2) or answers questions it does not answer ("...for part-time
employees?" scores like a paraphrase). The decision for the nearest curated question, in order:

1. **guard**: the cache's lexical guard (:func:`cache.guard.conflict`, shared, not copied) between
   the user's question and the curated *question*: a number, date, negation, entity or quoted
   string on one side only means no direct answer;
2. **withdrawn**: a question close to one whose direct answer from this entry got a low feedback
   score (:class:`Withdrawals`) is not answered directly by it;
3. **bands** (:func:`bands_for`, from ``max_error_rate`` and the kb's calibration), compared
   with the *evidence*: the cosine less the kb's ``novelty_penalty`` per word of the user's
   question that neither the curated question nor its answer contains (at most two;
   gateway/stages/knowledge_evidence.py): at or above ``direct_at`` with a margin of at least
   ``min_margin`` over the runner-up curated question: answered directly; at or above
   ``verify_at``: the cheapest model the request may use is asked a one-token yes/no question
   first (gateway/stages/knowledge_verify.py); below: no direct answer (the entry is attached as
   context like any passage).

How the bands derive from ``max_error_rate`` (d): the calibration models the best evidence of a
question the FAQ must not answer (and that the guard lets through) as a normal distribution,
fitted on ``negatives`` questions of the kb's dev split (mean m, sd s); ``upper(p)`` is the score
such a question exceeds with probability at most ``p``, at 95 % confidence: ``m + k(n, p) * s``
with ``k`` the one-sided normal tolerance factor (the point estimate ``z(p)`` when ``negatives``
is unknown). Half of d goes to the unverified band: ``direct_at = upper(d/2)``, at least
``answer_threshold`` (ops' floor) and at most ``UNVERIFIED_CEILING`` (the floor wins). The rest
(all of d when ``direct_at`` is the ceiling or the floor rather than the calibrated score: those
are rules, not the model) goes to the verified band, whose error is ``tail(t) * e`` with ``e`` the
verifier's false-yes rate: ``verify_at = upper(rest/e)``, between ``context_threshold`` and
``direct_at``. ``e`` is the 95 % Clopper-Pearson upper bound of the yeses the verifier gave to
the ``samples`` dev negatives: zero errors in 58 questions do not make a verifier perfect (the
bound is 5 %), and five in 158 are not 3.2 % but up to 6.5 %. A verifier that says yes to most
negatives (``e`` near 1) leaves almost no verified band: the decision fails safe to "not direct".
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from cache.guard import conflict
from gateway.policy.knowledge_config import KnowledgeCalibration, KnowledgeSettings
from retrieval.store import Hit

from .knowledge_evidence import evidence, false_yes_bound, novel_words, tolerance_factor

# all-MiniLM-L6-v2 on examples/kb's dev split (bench/data/knowledge_dev.jsonl: 110 paraphrases,
# 158 must-not questions, 109 past the guard), measured with `python -m bench.knowledge
# --calibrate --verifier none`; a kb without its own calibration uses it. SmolLM2-135M-Instruct
# (the embedded local model) cannot answer yes/no (its one token is "The"; given four it says
# "The answer is yes" to anything, "What is the capital of France?" included): unusable (measured
# on the first, 58-question dev split), so no request waits on it.
DEFAULT_CALIBRATION = KnowledgeCalibration(
    negatives_mean=0.2977,
    negatives_sd=0.2027,
    verifiers={"smollm2-135m": 1.0},
    verifier_false_yes=0.1,
    samples=58,
    negatives=109,
    novelty_penalty=0.15,
    embedding_model="all-MiniLM-L6-v2",
)
# A guard-clean question with this much evidence (no novel word and at least this close to a
# curated one) is that question reworded trivially (case, punctuation, a typo): answered without
# a model whatever the calibration.
UNVERIFIED_CEILING = 0.97
# A question at least this close to one whose direct answer was withdrawn is the same kind of
# question: the entry no longer answers it directly.
WITHDRAWN_RADIUS = 0.8


@dataclass(frozen=True, slots=True)
class Bands:
    """Evidence bands of one kb under one setting (see the module docstring)."""

    direct_at: float  # at or above (with the margin): answered without a model
    verify_at: float  # at or above: verified by a model first; below: not answered directly
    min_margin: float
    novelty_penalty: float = 0.0  # per novel word, off the cosine (the kb's calibration)

    def to_dict(self) -> dict[str, float]:
        return {
            "direct_at": round(self.direct_at, 4),
            "verify_at": round(self.verify_at, 4),
            "min_margin": round(self.min_margin, 4),
            "novelty_penalty": round(self.novelty_penalty, 4),
        }


def upper(p: float, calibration: KnowledgeCalibration) -> float:
    """The evidence a must-not question exceeds with probability at most ``p`` (95 % confidence
    over the calibration's ``negatives``)."""
    return _upper(p, calibration.negatives_mean, calibration.negatives_sd, calibration.negatives)


def _upper(p: float, mean: float, sd: float, n: int) -> float:
    return mean + sd * tolerance_factor(n, p)


def _tail(score: float, mean: float, sd: float, n: int) -> float:
    """The inverse of :func:`_upper`: the ``p`` whose bound is ``score`` (bisection on log p)."""
    low, high = math.log(1e-9), math.log(0.5)
    if _upper(math.exp(high), mean, sd, n) >= score:
        return 0.5
    for _ in range(50):  # the bound falls as p rises
        mid = (low + high) / 2
        if _upper(math.exp(mid), mean, sd, n) > score:
            low = mid
        else:
            high = mid
    return math.exp(high)


def false_yes(calibration: KnowledgeCalibration, verifier: str) -> float:
    """The verifier's false-yes rate the bands assume: the upper confidence bound of the one
    measured on the dev split; an unmeasured model's prior (``verifier_false_yes``) as is."""
    measured = calibration.verifiers.get(verifier)
    if measured is None:
        return calibration.verifier_false_yes
    if measured >= 1.0 or not calibration.samples:
        return measured
    n = calibration.samples
    return false_yes_bound(round(measured * n), n)


def bands_for(
    settings: KnowledgeSettings, calibration: KnowledgeCalibration, verifier: str | None
) -> Bands:
    """The bands for ``settings`` (``max_error_rate``, ``answer_threshold``, ``min_margin``,
    ``verify``, ``context_threshold``) and a kb's ``calibration``; ``verifier``: the alias of
    the model that would be asked for this request (None: none may be). Memoised: a request
    pays a dictionary lookup."""
    rate = 1.0 if verifier is None or not settings.verify else false_yes(calibration, verifier)
    return _bands(
        settings.max_error_rate,
        settings.answer_threshold,
        settings.min_margin,
        settings.context_threshold,
        calibration.negatives_mean,
        calibration.negatives_sd,
        calibration.negatives,
        calibration.novelty_penalty,
        rate,
    )


@lru_cache(maxsize=1024)
def _bands(
    delta: float,
    floor: float,
    min_margin: float,
    context_threshold: float,
    mean: float,
    sd: float,
    n: int,
    penalty: float,
    rate: float,
) -> Bands:
    calibrated = _upper(delta / 2, mean, sd, n)
    direct_at = max(floor, min(UNVERIFIED_CEILING, calibrated))
    # The unverified band spends what the calibration expects above direct_at (half of the
    # budget, less where ops' floor raised it); at the ceiling it is a rule the model does not
    # describe, and the verified band gets the whole budget.
    spent = 0.0 if direct_at < calibrated else min(delta / 2, _tail(direct_at, mean, sd, n))
    none = Bands(direct_at, direct_at, min_margin, penalty)  # no verified band
    if rate >= 1.0:  # no verifier, or one no better than a coin that says yes
        return none
    verify_p = (delta - spent) / rate if rate > 0 else 1.0
    verify_at = max(context_threshold, _upper(verify_p, mean, sd, n))
    return Bands(direct_at, min(direct_at, verify_at), min_margin, penalty)


@dataclass(frozen=True, slots=True)
class AnswerDecision:
    """What to do with the nearest curated entry: ``direct``, ``verify`` or ``no``."""

    outcome: str
    reason: str  # why (for "no": guard / withdrawn / below / novel / margin)
    entry: Hit | None
    score: float
    margin: float | None  # over the runner-up curated question (None: no runner-up)
    evidence: float | None = None  # compared with the bands (None: not reached)
    novel: tuple[str, ...] = ()  # the user's words the entry does not contain

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
        if self.evidence is not None:
            found["evidence"] = round(self.evidence, 4)
            found["novel"] = list(self.novel)
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

    # The evidence is never above the cosine: a score below the bands needs no lexical work.
    if best.score < bands.verify_at:
        return no("below")
    if reason := conflict(query, question):
        return no(f"guard: {reason}")
    if withdrawn is not None and vector is not None and withdrawn.blocks(best.id, vector):
        return no("withdrawn")
    novel: tuple[str, ...] = ()
    if bands.novelty_penalty > 0:
        answer = str(best.payload.get("answer") or "")
        novel = tuple(novel_words(query, question, answer))
    found = evidence(best.score, len(novel), bands.novelty_penalty)

    def outcome(name: str, reason: str) -> AnswerDecision:
        return AnswerDecision(name, reason, best, best.score, margin, found, novel)

    if found < bands.verify_at:
        return outcome("no", "novel: " + ", ".join(novel))
    clear = margin is None or margin >= bands.min_margin
    if found >= bands.direct_at and clear:
        return outcome("direct", "direct_band")
    if bands.verify_at >= bands.direct_at:  # no verified band: a narrow margin is a no
        return outcome("no", "margin" if found >= bands.direct_at else "below")
    return outcome("verify", "verify_band" if found < bands.direct_at else "margin")


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
