"""The curated-answer decision without a store or a model: bands from ``max_error_rate`` and
the verifier's calibration, ``decide`` (guard, margin, band, withdrawal), the verdict parser,
the policy section, the evaluation set and its dev split, the bench's noisy verifier
(tests/test_knowledge_answers.py: the stage through the pool and the gateway)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.policy.knowledge_config import KnowledgeConfig
from gateway.policy.model import KnowledgeCalibration, KnowledgeSettings
from gateway.stages.knowledge_answer import (
    UNVERIFIED_CEILING,
    Bands,
    Withdrawals,
    bands_for,
    decide,
)
from gateway.stages.knowledge_verify import parse_verdict
from retrieval.store import Hit
from tests.test_knowledge_answers import FAQ_QUESTION, NEAR_MISS_NUMBER


# -- bands from max_error_rate ----------------------------------------------------------------
def test_bands_follow_the_error_rate_and_the_verifier() -> None:
    calibration = KnowledgeCalibration(
        negatives_mean=0.6, negatives_sd=0.15, verifiers={"good": 0.0, "bad": 0.9}, samples=200
    )
    strict = bands_for(KnowledgeSettings(max_error_rate=0.01), calibration, "good")
    loose = bands_for(KnowledgeSettings(max_error_rate=0.05), calibration, "good")
    assert loose.verify_at < strict.verify_at < strict.direct_at <= UNVERIFIED_CEILING
    # A verifier that says yes to most negatives barely widens anything; none at all: no band.
    bad = bands_for(KnowledgeSettings(max_error_rate=0.01), calibration, "bad")
    assert bad.verify_at > strict.verify_at
    none = bands_for(KnowledgeSettings(), calibration, None)
    assert none.verify_at == none.direct_at
    assert bands_for(KnowledgeSettings(verify=False), calibration, "good") == none
    # An unmeasured model gets the conservative prior (one false yes in ten).
    unmeasured = bands_for(KnowledgeSettings(), calibration, "other")
    assert strict.verify_at < unmeasured.verify_at
    # Zero false yes on few dev questions is not taken at face value (its upper bound is).
    few = calibration.model_copy(update={"samples": 20})
    assert bands_for(KnowledgeSettings(), few, "good").verify_at > strict.verify_at
    # Scores fitted on few negatives are bounded above more widely than on many.
    fitted = [calibration.model_copy(update={"negatives": n}) for n in (30, 300)]
    wide, narrow = (bands_for(KnowledgeSettings(), c, "good") for c in fitted)
    assert wide.verify_at > narrow.verify_at > strict.verify_at
    # answer_threshold is ops' floor for answers without a model, above any calibration.
    assert bands_for(KnowledgeSettings(answer_threshold=0.99), calibration, None).direct_at == 0.99


def _hit(question: str, score: float, entry: str = "e1") -> Hit:
    return Hit(entry, score, {"question": question, "answer": "A.", "kind": "faq", "kb": "k"})


def test_decide_guard_margin_band_and_withdrawal() -> None:
    bands = Bands(direct_at=0.9, verify_at=0.6, min_margin=0.05)
    runner = _hit("Something else entirely?", 0.3, "e2")
    assert decide(FAQ_QUESTION, [_hit(FAQ_QUESTION, 0.95), runner], bands).outcome == "direct"
    assert decide("a question", [_hit("another question", 0.7), runner], bands).outcome == "verify"
    assert decide("a question", [_hit("another question", 0.5), runner], bands).reason == "below"
    guarded = decide(NEAR_MISS_NUMBER, [_hit(FAQ_QUESTION, 0.95), runner], bands)
    # The guard's own wording of the conflict (the number with its unit slot) is cache/guard's.
    assert guarded.outcome == "no"
    assert guarded.reason.startswith("guard: numbers: ")
    assert "30" in guarded.reason
    close = decide(
        "a question", [_hit("another question", 0.95), _hit("a third question", 0.93, "e2")], bands
    )
    assert (close.outcome, close.reason) == ("verify", "margin")  # never unverified
    no_band = Bands(direct_at=0.9, verify_at=0.9, min_margin=0.05)
    assert (
        decide(
            "a question",
            [_hit("another question", 0.95), _hit("a third question", 0.93, "e2")],
            no_band,
        ).reason
        == "margin"
    )
    withdrawals = Withdrawals()
    vector = np.full(4, 0.5, dtype=np.float32)
    withdrawals.add("e1", "k", "another question", vector)
    hits = [_hit("another question", 0.95), runner]
    assert (
        decide("a question", hits, bands, withdrawn=withdrawals, vector=vector).reason
        == "withdrawn"
    )
    other = np.array([1, 0, 0, 0], dtype=np.float32)  # another kind of question: still answered
    assert (
        decide("a question", hits, bands, withdrawn=withdrawals, vector=other).outcome == "direct"
    )


def test_parse_verdict_reads_one_word_and_fails_safe() -> None:
    assert parse_verdict("Yes") == "yes"
    assert parse_verdict(" no.") == "no"
    assert parse_verdict("Maybe") == "unclear"
    assert parse_verdict("") == "unclear"


def test_the_policy_section_is_validated() -> None:
    base = {"negatives_mean": 0.6, "negatives_sd": 0.1}
    with pytest.raises(ValidationError, match="max_error_rate"):
        KnowledgeConfig.model_validate({"max_error_rate": 0})
    with pytest.raises(ValidationError, match="negatives_sd"):
        KnowledgeConfig.model_validate({"calibration": {"company": {**base, "negatives_sd": 0}}})
    with pytest.raises(ValidationError, match="extra"):
        KnowledgeConfig.model_validate({"calibration": {"company": {**base, "typo": 1}}})
    with pytest.raises(ValidationError, match="verifiers"):
        KnowledgeConfig.model_validate(
            {"calibration": {"company": {**base, "verifiers": {"m": 2}}}}
        )
    config = KnowledgeConfig.model_validate(
        {"teams": {"finance": {"max_error_rate": 0.001, "verify": False}}}
    )
    assert config.settings_for("finance", "default").max_error_rate == 0.001
    assert config.settings_for("other", "default").verify is True


def test_the_evaluation_set_and_the_dev_split() -> None:
    """>= 100 paraphrases of real FAQ entries and >= 100 must-not questions; the calibration's
    dev split (>= 100 and >= 150) shares no question, nor a trivial edit of one, with it."""
    from bench.knowledge_answers import DATA, faq_entries, load

    entries = faq_entries()
    evaluation, dev = load(DATA / "knowledge_eval.jsonl"), load(DATA / "knowledge_dev.jsonl")
    paraphrases = [q for q in evaluation if q["class"] == "paraphrase"]
    must_not = [q for q in evaluation if q["class"] == "must_not"]
    assert len(paraphrases) >= 100
    assert len(must_not) >= 100
    assert {q["entry"] for q in paraphrases} == set(entries)
    assert {q["kind"] for q in paraphrases} == {"short", "verbose", "typo", "order", "register"}
    kinds = {q["kind"] for q in must_not}
    assert kinds == {"off_topic", "unanswered", "number", "group", "place", "negation"}
    texts = [q["question"] for q in evaluation]
    assert len(set(texts)) == len(texts)
    # The dev split: large enough to calibrate on, the same classes and kinds, and written apart:
    # no question of it is an evaluation question or a trivial edit of one.
    from bench.knowledge_calibrate import near_duplicates

    assert sum(q["class"] == "paraphrase" for q in dev) >= 100
    assert sum(q["class"] == "must_not" for q in dev) >= 150
    assert {(q["class"], q["kind"]) for q in dev} == {(q["class"], q["kind"]) for q in evaluation}
    assert {q["entry"] for q in dev if q["class"] == "paraphrase"} == set(entries)
    dev_texts = [q["question"] for q in dev]
    assert len(set(dev_texts)) == len(dev_texts)
    assert near_duplicates(dev_texts, texts) == []


async def test_the_bench_noisy_verifier_errs_at_its_rates_and_is_seeded() -> None:
    """bench.knowledge's ``noisy:FY/FN`` fake (a cheap cloud model's errors): over the evaluation
    set's yes pairs (a paraphrase and its entry) and no pairs (a must-not question and any entry)
    it says no and yes at about the configured rates, the same pair always the same way, another
    seed other pairs; ``fake`` (0/0) is the labels; the verdict is what its wire answers."""
    import aiohttp

    from bench.knowledge_answers import DATA, LabelVerifier, faq_entries, load, noisy_rates

    faq = [e["question"] for e in faq_entries().values()]
    questions = load(DATA / "knowledge_eval.jsonl")
    entries = faq_entries()
    yes = [
        (q["question"], entries[q["entry"]]["question"])
        for q in questions
        if q["class"] == "paraphrase"
    ]
    no = [(q["question"], f) for q in questions if q["class"] == "must_not" for f in faq]
    assert len(yes) >= 100
    assert len(no) >= 1000
    fy, fn = noisy_rates("noisy:0.05/0.10")
    assert (fy, fn) == (0.05, 0.10)
    assert noisy_rates("fake") == (0.0, 0.0)
    with pytest.raises(SystemExit):
        noisy_rates("noisy:0.05")
    oracle = LabelVerifier(questions)
    assert all(oracle.says_yes(*p) for p in yes)
    assert not any(oracle.says_yes(*p) for p in no)
    noisy = LabelVerifier(questions, false_yes=fy, false_no=fn, seed=0)
    false_yes = sum(noisy.says_yes(*p) for p in no) / len(no)
    false_no = sum(not noisy.says_yes(*p) for p in yes) / len(yes)
    assert 0.03 <= false_yes <= 0.07  # 1130 draws at 5 %: sd 0.65 points
    assert 0.03 <= false_no <= 0.20  # 110 draws at 10 %: sd 2.9 points
    again = LabelVerifier(questions, false_yes=fy, false_no=fn, seed=0)
    other = LabelVerifier(questions, false_yes=fy, false_no=fn, seed=1)
    assert [again.says_yes(*p) for p in no] == [noisy.says_yes(*p) for p in no]
    assert [other.says_yes(*p) for p in no] != [noisy.says_yes(*p) for p in no]
    flipped = next(p for p in no if noisy.says_yes(*p))
    await noisy.start()
    try:
        async with aiohttp.ClientSession() as session:
            for (user, faq_question), word in ((flipped, "yes"), (no[0], None), (yes[0], None)):
                text = f"User question: {user}\n\nFAQ question: {faq_question}\nFAQ answer: x"
                body = {"model": "m", "messages": [{"role": "user", "content": text}]}
                async with session.post(f"{noisy.base_url}/chat/completions", json=body) as r:
                    content = (await r.json())["choices"][0]["message"]["content"]
                expected = word or ("yes" if noisy.says_yes(user, faq_question) else "no")
                assert content == expected
    finally:
        await noisy.stop()
