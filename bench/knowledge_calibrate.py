"""A kb's ``calibration`` from its dev split (``python -m bench.knowledge --calibrate``).

Every dev question (bench/data/knowledge_dev.jsonl, written apart from the evaluation set and
checked against it by :func:`near_duplicates`) goes through the real search; the verifier, when
there is one, is asked about the nearest curated entry of every question. Recorded:

- ``verifiers``: its false-yes rate on the dev must-not questions over ``samples`` of them (the
  bands take its 95 % upper bound); a verifier confirming under half the dev paraphrases is
  recorded unusable (1.0);
- ``novelty_penalty``: of a small grid, the one under which most dev paraphrases reach the band
  this verifier would get at ``max_error_rate`` (the bands' own computation: verified band, or
  the unverified one with no verifier); ties go to the smaller penalty;
- ``negatives_mean``, ``negatives_sd``, ``negatives``: the evidence (cosine less the penalty per
  novel word) of the dev must-not questions the guard lets through, under that penalty.

Nothing here reads the evaluation set except :func:`near_duplicates`' check.
"""

from __future__ import annotations

import difflib
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cache.guard import conflict
from gateway.policy.catalog import Catalog
from gateway.policy.model import KnowledgeCalibration, KnowledgeSettings
from gateway.stages.knowledge_answer import bands_for
from gateway.stages.knowledge_evidence import evidence, novel_words
from gateway.stages.knowledge_verify import parse_verdict, verification_request
from providers.pool import ProviderPool
from retrieval.search import Access, access_filter, retrieve
from retrieval.store import KnowledgeStore

PENALTIES = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15)


@dataclass(frozen=True, slots=True)
class Scored:
    """One dev question against its nearest curated entry."""

    label: str  # "paraphrase" or "must_not"
    score: float
    novel: int
    guarded: bool  # the guard refuses the pair (never in the bands' errors)
    right: bool  # a paraphrase whose nearest entry is its own


def fit_penalty(
    scored: Sequence[Scored], measured: KnowledgeCalibration, verifier: str | None, delta: float
) -> tuple[float, list[float]]:
    """The penalty (of :data:`PENALTIES`) under which most dev paraphrases reach the band
    ``verifier`` gets at ``delta`` (the bands' own computation, ``measured`` giving the
    verifier's rate), and the negatives' evidence under it."""
    negatives = [s for s in scored if s.label == "must_not" and not s.guarded]
    positives = [s for s in scored if s.label == "paraphrase" and s.right and not s.guarded]
    settings = KnowledgeSettings(max_error_rate=delta)
    best: tuple[int, float, list[float]] | None = None
    reached: dict[float, int] = {}
    for penalty in PENALTIES:
        values = [evidence(s.score, s.novel, penalty) for s in negatives]
        model = measured.model_copy(
            update={
                "negatives_mean": statistics.fmean(values),
                "negatives_sd": max(statistics.stdev(values), 1e-6),
                "negatives": len(values),
                "novelty_penalty": penalty,
            }
        )
        bar = bands_for(settings, model, verifier).verify_at
        cleared = sum(evidence(s.score, s.novel, penalty) >= bar for s in positives)
        reached[penalty] = cleared
        if best is None or cleared > best[0]:
            best = (cleared, penalty, values)
    assert best is not None
    print(f"dev paraphrases reaching the band, by novelty penalty: {reached}", file=sys.stderr)
    return best[1], best[2]


async def calibrate(
    store: KnowledgeStore,
    embedder: Any,
    endpoint: tuple[str, str] | None,
    dev: list[dict[str, Any]],
    policy: Any,
    faq_questions: dict[str, str],
    max_error_rate: float = 0.01,
) -> KnowledgeCalibration:
    """The dev split's statistics (see the module docstring); ``faq_questions``: each curated
    entry's question by id (which entry a dev paraphrase is of)."""
    where = access_filter(Access("bench", frozenset({"onprem"}), ("company",)))
    catalog = Catalog(policy, {})
    pool = ProviderPool(catalog.endpoints)
    await pool.start()
    candidate = catalog.resolve_route(policy.teams[0], "default").candidates[0]
    scored: list[Scored] = []
    latencies: list[float] = []
    answers: Counter[str] = Counter()
    positives: Counter[str] = Counter()
    try:
        for q in dev:
            vector = await embedder.embed(q["question"])
            found = await retrieve(store, vector.tolist(), where, top_k=4, context_threshold=0.4)
            best = found.faqs[0]
            if endpoint is not None:  # the verifier is asked about every dev question
                request = verification_request(q["question"], best, candidate.model.name)
                started = time.perf_counter()
                completion = await pool.complete(candidate.target, request)
                latencies.append((time.perf_counter() - started) * 1000)
                content = completion.body["choices"][0]["message"].get("content") or ""
                verdict = parse_verdict(content)
                (answers if q["class"] == "must_not" else positives)[verdict] += 1
            question, answer = best.payload["question"], best.payload["answer"]
            scored.append(
                Scored(
                    label=q["class"],
                    score=best.score,
                    novel=len(novel_words(q["question"], question, answer)),
                    guarded=bool(conflict(q["question"], question)),
                    right=question == faq_questions.get(q.get("entry") or ""),
                )
            )
    finally:
        await pool.close()
    negatives = sum(answers.values())
    if latencies:
        ordered = sorted(latencies)
        p50, p95 = ordered[len(ordered) // 2], ordered[int(0.95 * (len(ordered) - 1))]
        print(
            f"verification calls on the dev split: {len(latencies)}, p50 {p50:.1f} ms, "
            f"p95 {p95:.1f} ms",
            file=sys.stderr,
        )
    confirmed = positives["yes"] / max(1, sum(positives.values()))
    # A verifier that confirms under half the dev paraphrases cannot tell them from must-not
    # questions: recorded as unusable (1.0), so no request waits on it.
    rate = answers["yes"] / negatives if negatives and confirmed >= 0.5 else 1.0
    verifiers = {candidate.model.name: round(rate, 4)} if endpoint is not None else {}
    measured = KnowledgeCalibration(
        negatives_mean=0.5, negatives_sd=0.1, verifiers=verifiers, samples=negatives
    )
    alias = candidate.model.name if endpoint is not None else None
    penalty, values = fit_penalty(scored, measured, alias, max_error_rate)
    print(
        f"dev negatives past the guard: {len(values)}; verifier on the {negatives} dev "
        f"negatives: {dict(answers)}; on the dev paraphrases: {dict(positives)}; "
        f"novelty penalty {penalty} (fitted at max_error_rate {max_error_rate})",
        file=sys.stderr,
    )
    return KnowledgeCalibration(
        negatives_mean=round(statistics.fmean(values), 4),
        negatives_sd=round(statistics.stdev(values), 4),
        verifiers=verifiers,
        samples=negatives,
        negatives=len(values),
        novelty_penalty=penalty,
        embedding_model=embedder.name,
    )


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _word_edits(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def near_duplicates(questions: Sequence[str], reference: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs (question, reference question) that are the same question or a trivial edit of it:
    equal once lower-cased without punctuation, one word swapped, added or dropped, or 90 %
    the same characters (a typo or two)."""
    found: list[tuple[str, str]] = []
    keyed = [(r, _words(r)) for r in reference]
    for question in questions:
        words = _words(question)
        text = " ".join(words)
        for other, other_words in keyed:
            close = words == other_words or _word_edits(words, other_words) <= 1
            if not close:
                ratio = difflib.SequenceMatcher(None, text, " ".join(other_words)).ratio()
                close = ratio >= 0.9
            if close:
                found.append((question, other))
    return found
