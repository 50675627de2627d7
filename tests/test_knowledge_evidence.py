"""The curated-answer decision's evidence beyond the cosine and its calibration's bounds:
novel words, the novelty penalty in ``decide``, the tolerance and Clopper-Pearson bounds, the
penalty fitted on a dev split, and the near-duplicate check that keeps the dev split apart from
the evaluation set. Pure functions: no store, no model."""

from __future__ import annotations

import math

import pytest

from bench.knowledge_calibrate import Scored, fit_penalty, near_duplicates
from gateway.policy.model import KnowledgeCalibration, KnowledgeSettings
from gateway.stages.knowledge_answer import Bands, bands_for, decide
from gateway.stages.knowledge_evidence import (
    NOVEL_CAP,
    evidence,
    false_yes_bound,
    novel_words,
    tolerance_factor,
)
from retrieval.store import Hit

LEAVE_Q = "How long is parental leave?"
LEAVE_A = (
    "26 weeks on full pay for birth parents and 16 weeks on full pay for other parents, "
    "taken within the child's first year."
)


def test_novel_words_are_the_restrictions_not_the_chatter_or_the_typos() -> None:
    assert novel_words("How long is parental leave for part-time staff?", LEAVE_Q, LEAVE_A) == [
        "part",
        "time",
        "staff",
    ]
    # Stop words, a typo of a word the entry has, and a word only its answer has are not novel.
    assert novel_words("hi, how long is parantal leave?", LEAVE_Q, LEAVE_A) == []
    assert novel_words("How many weeks of parental leave?", LEAVE_Q, LEAVE_A) == []
    # A short word is forgiven no typo: "pat" is not "pay".
    assert novel_words("parental leave pat", LEAVE_Q, LEAVE_A) == ["pat"]
    assert novel_words("leave leave grandparents grandparents", LEAVE_Q, LEAVE_A) == ["grandparent"]


def test_the_penalty_counts_at_most_two_words() -> None:
    assert evidence(0.9, 0, 0.1) == 0.9
    assert evidence(0.9, 1, 0.1) == pytest.approx(0.8)
    assert evidence(0.9, 5, 0.1) == pytest.approx(0.9 - NOVEL_CAP * 0.1)
    assert evidence(0.9, 5, 0.0) == 0.9


def _hit(question: str, score: float, answer: str = LEAVE_A, entry: str = "e1") -> Hit:
    return Hit(entry, score, {"question": question, "answer": answer, "kind": "faq", "kb": "k"})


def test_decide_compares_the_evidence_with_the_bands() -> None:
    runner = _hit("Something else entirely?", 0.3, entry="e2")
    bands = Bands(direct_at=0.9, verify_at=0.7, min_margin=0.05, novelty_penalty=0.1)
    # No novel word: the cosine decides, as without a penalty.
    plain = decide("How long is the parental leave?", [_hit(LEAVE_Q, 0.93), runner], bands)
    assert (plain.outcome, plain.evidence, plain.novel) == ("direct", 0.93, ())
    # One restriction: 0.93 - 0.1 is in the verified band, not the direct one.
    staff = decide("How long is parental leave for staff?", [_hit(LEAVE_Q, 0.93), runner], bands)
    assert (staff.outcome, staff.reason, staff.novel) == ("verify", "verify_band", ("staff",))
    assert staff.evidence == pytest.approx(0.83)
    # Two: below the verified band, whatever the cosine, and the record says which words.
    two = decide(
        "How long is parental leave for part-time staff?", [_hit(LEAVE_Q, 0.85), runner], bands
    )
    assert (two.outcome, two.reason) == ("no", "novel: part, time, staff")
    record = two.record(bands)
    assert record["novel"] == ["part", "time", "staff"]
    assert record["evidence"] == pytest.approx(0.65)
    assert record["novelty_penalty"] == 0.1
    # Below the band by the cosine alone: no lexical work, no evidence in the record.
    low = decide("anything at all", [_hit(LEAVE_Q, 0.5), runner], bands)
    assert (low.reason, low.evidence) == ("below", None)


def test_tolerance_factor_bounds_the_quantile_above_the_point_estimate() -> None:
    z = 2.5758293035489  # the normal's upper 0.5 % quantile
    assert tolerance_factor(0, 0.005) == pytest.approx(z)  # unknown n: the point estimate
    factors = [tolerance_factor(n, 0.005) for n in (10, 30, 100, 1000, 100_000)]
    assert factors == sorted(factors, reverse=True)
    assert factors[-1] == pytest.approx(z, abs=0.02)
    # Natrella's approximation against the tabulated one-sided factor (n 100, 95 %/95 %: 1.927).
    assert tolerance_factor(100, 0.05) == pytest.approx(1.927, abs=0.01)


def test_false_yes_bound_is_clopper_pearson() -> None:
    # 0 in n has the closed form 1 - alpha ** (1 / n).
    assert false_yes_bound(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20))
    assert false_yes_bound(0, 158) == pytest.approx(1 - 0.05 ** (1 / 158))
    bound = false_yes_bound(5, 158)
    assert 5 / 158 < bound < 0.07
    # At the bound, seeing 5 or fewer in 158 has probability 5 %.
    cdf = sum(math.comb(158, i) * bound**i * (1 - bound) ** (158 - i) for i in range(6))
    assert cdf == pytest.approx(0.05, abs=1e-6)
    assert false_yes_bound(3, 3) == 1.0
    assert false_yes_bound(0, 0) == 1.0


def test_a_measured_verifier_is_trusted_to_its_upper_bound_only() -> None:
    """Five false yeses in 158 dev negatives: the bands assume up to ~6.5 %, so the verified band
    is narrower than the measured 3.2 % would give, and more negatives widen it."""
    base = {"negatives_mean": 0.55, "negatives_sd": 0.18, "negatives": 109}
    measured = KnowledgeCalibration(**base, verifiers={"m": 5 / 158}, samples=158)
    bounded = bands_for(KnowledgeSettings(), measured, "m")
    # The same rate with an (unrealistically) huge sample: its bound is the rate itself.
    exact = measured.model_copy(update={"samples": 10_000_000})
    assert bands_for(KnowledgeSettings(), exact, "m").verify_at < bounded.verify_at
    assert bounded.verify_at < bounded.direct_at


def _scored(label: str, score: float, novel: int) -> Scored:
    return Scored(label, score, novel, guarded=False, right=True)


def test_the_penalty_is_fitted_where_it_separates() -> None:
    """Negatives as close as the paraphrases but with restricting words: a penalty lets more
    paraphrases reach the band."""
    negatives = [_scored("must_not", 0.2 + 0.6 * i / 99, 2 if i > 50 else 1) for i in range(100)]
    positives = [_scored("paraphrase", 0.6 + 0.35 * i / 49, 0) for i in range(50)]
    measured = KnowledgeCalibration(
        negatives_mean=0.5, negatives_sd=0.1, verifiers={"m": 0.05}, samples=300
    )
    penalty, values = fit_penalty([*negatives, *positives], measured, "m", 0.01)
    assert penalty > 0
    assert len(values) == 100
    assert max(values) == pytest.approx(0.8 - 2 * penalty)
    # No novel word anywhere: every penalty reaches as many, and the smallest (none) is kept.
    plain = [_scored(s.label, s.score, 0) for s in [*negatives, *positives]]
    assert fit_penalty(plain, measured, "m", 0.01)[0] == 0.0


def test_near_duplicates_flags_trivial_edits_only() -> None:
    reference = ["What is the hotel budget per night in Tokyo?", "how long is parental leeve"]
    flagged = near_duplicates(
        [
            "what is the hotel budget per night in tokyo",  # the same question
            "What is the hotel budget per night in Madrid?",  # one word swapped
            "how long is parental leave",  # a typo fixed
            "How much may I spend on a Madrid hotel each night?",  # written apart
            "Do I get 20 weeks of parental leave?",
        ],
        reference,
    )
    assert [q for q, _ in flagged] == [
        "what is the hotel budget per night in tokyo",
        "What is the hotel budget per night in Madrid?",
        "how long is parental leave",
    ]
