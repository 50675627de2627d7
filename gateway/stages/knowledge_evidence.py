"""Evidence for a curated answer beyond the cosine, and the confidence bounds of its calibration.

**Lexical novelty.** A question the FAQ must not answer usually differs from the curated question
in the words that restrict it ("...for part-time staff", "...for a team offsite", "...to dispute a
rejected claim"), and sentence embeddings barely see those words. :func:`novel_words` lists the
user's content words (stop words dropped, crude stems, one typing error forgiven) that
neither the curated question nor its answer contains: a paraphrase has few or none that the
answer does not cover, a near-miss has its restriction. The decision compares
``evidence = cosine - penalty * min(novel, NOVEL_CAP)`` with the bands, ``penalty`` fitted per kb
on its dev split (``KnowledgeCalibration.novelty_penalty``; 0: the cosine alone). Only lowering
the score, it never turns a "no" into an answer by itself: the bands are fitted on the same
evidence score of the dev negatives.

**Bounds.** The calibration estimates two things from a dev split of a few hundred questions,
and a point estimate of either would spend the error budget on sampling noise (58 must-not
questions measured a 5 % false-yes rate as anything from 0 to 12 %):

- the score a must-not question reaches with probability ``p``: the one-sided normal tolerance
  bound (:func:`tolerance_factor`): with ``CONFIDENCE`` the true ``1 - p`` quantile is below
  ``mean + k * sd`` for the ``n`` negatives it was fitted on;
- the verifier's false-yes rate: the Clopper-Pearson upper bound (:func:`false_yes_bound`) of
  ``k`` yeses to ``n`` must-not questions.

Pure CPU, no I/O: ~10-40 us a question past the score and guard checks (``python -m
bench.knowledge --answers`` prints it); an entry's vocabulary is memoised.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from statistics import NormalDist
from typing import NamedTuple

CONFIDENCE = 0.95
# A third restricting word says nothing the second did not: the penalty stops there, so a long
# verbose paraphrase is not pushed below every band by its chatter alone.
NOVEL_CAP = 2
# Words at least this long are matched despite one typing error.
TYPO_MIN = 5

_NORMAL = NormalDist()
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# Function words and the chatter of a question ("hi, quick question, could you tell me...").
_STOP_TEXT = """a an the i me my mine myself we us our ours you your yours he him his she her they
    them     their theirs it its this that these those is am are was were be been being do does did
    doing done have has had having get gets got getting can could may might must shall should
    will would to of in on at for from by with about as into onto over after before under up
    down out off so than too very just also and or but if then else what whats which who whom
    whose when where why how much many any some there here anything something please hi hey
    hello thanks thank tell know like want wondering wonder question quick let help ok okay
    ugh now yet still really sure one each every per"""
STOPWORDS = frozenset(_STOP_TEXT.split())
_SUFFIXES = ("ing", "ed", "es", "s")


def _stem(word: str) -> str:
    word = word.split("'", 1)[0]
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> list[str]:
    """The stems of ``text``'s content words, in order."""
    found = (w for w in _WORD.findall(text.lower()) if len(w) > 1)
    return [_stem(w) for w in found if w.split("'", 1)[0] not in STOPWORDS]


def _deletions(word: str) -> set[str]:
    """``word`` and every string one letter shorter: two words sharing one are at most one
    substitution, insertion, deletion or adjacent swap apart ("anual"/"annual",
    "secuirty"/"security")."""
    return {word, *(word[:i] + word[i + 1 :] for i in range(len(word)))}


class _Vocabulary(NamedTuple):
    words: frozenset[str]
    variants: frozenset[str]  # the deletions of the words long enough to be mistyped


@lru_cache(maxsize=4096)
def _vocabulary(question: str, answer: str) -> _Vocabulary:
    words = frozenset(content_words(question)) | frozenset(content_words(answer))
    variants = frozenset(v for w in words if len(w) >= TYPO_MIN for v in _deletions(w))
    return _Vocabulary(words, variants)


def _known(word: str, vocabulary: _Vocabulary) -> bool:
    if word in vocabulary.words:
        return True
    # Shorter words are forgiven no typo: "part" is one letter from "past", "pat", "pay".
    return (
        len(word) >= TYPO_MIN
        and not word.isdigit()
        and bool(_deletions(word) & vocabulary.variants)
    )


def novel_words(query: str, question: str, answer: str) -> list[str]:
    """The user's content words that neither the curated question nor its answer contains."""
    vocabulary = _vocabulary(question, answer)
    return [w for w in dict.fromkeys(content_words(query)) if not _known(w, vocabulary)]


def evidence(score: float, novel: int, penalty: float) -> float:
    """The score the bands are compared with (see the module docstring)."""
    return score - penalty * min(novel, NOVEL_CAP)


def tolerance_factor(n: int, p: float, confidence: float = CONFIDENCE) -> float:
    """``k`` with ``mean + k * sd`` above the ``1 - p`` quantile of a normal population with
    ``confidence``, for ``mean`` and ``sd`` estimated from ``n`` samples (Natrella's
    approximation of the one-sided tolerance factor). ``n`` under 3: the point estimate
    (a calibration that does not say how many negatives it was fitted on)."""
    p = min(max(p, 1e-9), 1 - 1e-9)
    z_p = _NORMAL.inv_cdf(1 - p)
    if n < 3:
        return z_p
    z_c = _NORMAL.inv_cdf(confidence)
    a = 1 - z_c * z_c / (2 * (n - 1))
    b = z_p * z_p - z_c * z_c / n
    return (z_p + math.sqrt(max(z_p * z_p - a * b, 0.0))) / a


def _binomial_cdf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < n else 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k + 1):
        log_term = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        total += math.exp(log_term + i * log_p + (n - i) * log_q)
    return min(total, 1.0)


def false_yes_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """The Clopper-Pearson upper bound of a rate seen ``k`` times in ``n`` trials."""
    if n <= 0 or k >= n:
        return 1.0
    low, high = k / n, 1.0
    for _ in range(60):  # bisection to ~1e-18: P(X <= k) falls as p rises
        mid = (low + high) / 2
        if _binomial_cdf(k, n, mid) > 1 - confidence:
            low = mid
        else:
            high = mid
    return high
