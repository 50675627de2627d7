"""Replay a request log against a scratch semantic cache: what would a setting have done?

    gateway cache replay requests.jsonl [--max-error-rate 0.005,0.01,0.02] [--static 0.85,0.9]
                                        [--seed 0] [--shuffle]

One JSON object per line: ``{"query": str}`` or an OpenAI chat body ``{"messages": [...]}`` (the
last user message is the query), optionally ``"intent"`` (a label: the upstream's answer is then
the intent), ``"answer"`` (the upstream's recorded answer, compared after trimming and
lower-casing) and ``"scope"`` (isolation scope; default ``"default"``).

Each setting replays the whole log, in order, against an empty in-memory cache: a brute-force
numpy index per scope, the guard (:func:`cache.guard.conflict`) and the hit policy
(:class:`cache.hits.HitPolicy`) at a ``max_error_rate``; or, for comparison, one static cosine
threshold (no guard, no learning: what GPTCache and RedisVL do). A miss or a verification is
answered by the "upstream" (the record's answer) and inserted; a miss compares the fresh answer
with the cached answers of its nearest entries for free, and the policy learns from that.

False hits (a served answer that differs from the record's own) are exact for records with an
intent or an answer. Records with neither cannot be compared: the policy never learns from them
and stays cold (it serves only near-identical queries). ``estimated_false_hits`` is what the
gateway can know without labels: a Horvitz-Thompson estimate from verifications alone (each
would-be hit is verified with a known probability rho, so a verified wrong answer stands for
(1 - rho) / rho wrong answers served); printed beside the exact count, it shows how far to trust
the production estimate.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import orjson

from cache.guard import conflict
from cache.hits import NEIGHBOURS, EntryState, HitPolicy, ScopeState
from cache.scope import normalise

GRAM_LIMIT = 8000  # records; above it nearest neighbours are one matrix-vector product each

__all__ = ["Record", "ReplayResult", "Setting", "load_records", "main", "replay"]


class Encoder(Protocol):
    """Anything with a synchronous batch ``encode`` returning unit rows (``SentenceEmbedder``)."""

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True, slots=True)
class Record:
    """One request: its query text, the upstream's answer if known, its scope."""

    query: str
    answer: str | None = None
    scope: str = "default"
    labelled: bool = False  # the answer is an intent label


@dataclass(frozen=True, slots=True)
class Setting:
    """A policy at ``max_error_rate`` (``static=False``) or a static cosine threshold."""

    value: float
    static: bool = False

    @property
    def label(self) -> str:
        """``"static 0.85"`` or ``"δ 0.01"``."""
        return f"static {self.value:g}" if self.static else f"δ {self.value:g}"


@dataclass(slots=True)
class ReplayResult:
    """Counts for one setting over one replay."""

    setting: Setting
    requests: int = 0
    hits: int = 0
    false_hits: int = 0  # among records with a known answer
    known: int = 0  # records with a known answer
    verifications: int = 0  # would-be hits answered fresh and compared (they count as misses)
    comparisons: int = 0  # free comparisons on misses
    guarded: int = 0  # near neighbours refused by the guard
    estimated_false_hits: float = 0.0  # Horvitz-Thompson, from verifications only
    entries: int = 0
    exact_only: int = 0  # records past the embedder's window: looked up by their exact text

    @property
    def hit_rate(self) -> float:
        """Hits / requests."""
        return self.hits / self.requests if self.requests else 0.0

    @property
    def false_hit_rate(self) -> float:
        """False hits / requests (the benchmark's figure)."""
        return self.false_hits / self.requests if self.requests else 0.0

    @property
    def verify_rate(self) -> float:
        """Verification calls / requests."""
        return self.verifications / self.requests if self.requests else 0.0

    def line(self) -> str:
        """One printed row (see :data:`HEADER`)."""
        return (
            f"{self.setting.label:>12}  {self.requests:>8}  {self.hits:>6}  "
            f"{100 * self.hit_rate:6.2f}%  {self.false_hits:>5}  {100 * self.false_hit_rate:5.2f}%"
            f"  {self.estimated_false_hits:9.1f}  {self.verifications:>6}  "
            f"{100 * self.verify_rate:5.2f}%  {self.comparisons:>8}  {self.guarded:>7}"
        )


HEADER = (
    f"{'setting':>12}  {'requests':>8}  {'hits':>6}  {'hit %':>7}  {'false':>5}  {'false%':>6}"
    f"  {'est.false':>9}  {'verify':>6}  {'verify%':>6}  {'compared':>8}  {'guarded':>7}"
)


@dataclass(slots=True)
class _Scope:
    """A scratch cache for one scope: a growing matrix, answers, texts, entry states."""

    dim: int
    gram: npt.NDArray[np.float32] | None = None  # all records' pairwise similarities, if small
    vectors: npt.NDArray[np.float32] = field(init=False)
    rows: npt.NDArray[np.intp] = field(init=False)  # each entry's record index
    answers: list[str | None] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    states: list[EntryState] = field(default_factory=list)
    learned: ScopeState = field(default_factory=ScopeState)
    exact: dict[str, str | None] = field(default_factory=dict)  # exact-only entries' answers

    def __post_init__(self) -> None:
        self.vectors = np.empty((64, self.dim), dtype=np.float32)
        self.rows = np.empty(64, dtype=np.intp)

    def nearest(self, row: int, vector: npt.NDArray[np.float32], k: int) -> list[tuple[int, float]]:
        """The ``k`` most similar entries, most similar first."""
        n = len(self.answers)
        if n == 0:
            return []
        gram = self.gram
        sims = gram[row, self.rows[:n]] if gram is not None else self.vectors[:n] @ vector
        if k == 1 or n == 1:
            j = int(np.argmax(sims))
            return [(j, float(sims[j]))]
        top = np.argpartition(-sims, min(k, n) - 1)[:k]
        return sorted(((int(j), float(sims[j])) for j in top), key=lambda t: -t[1])

    def insert(self, row: int, vector: npt.NDArray[np.float32], record: Record) -> EntryState:
        n = len(self.answers)
        if n == len(self.rows):
            self.rows = np.concatenate([self.rows, np.empty_like(self.rows)])
            if self.gram is None:
                self.vectors = np.concatenate([self.vectors, np.empty_like(self.vectors)])
        self.rows[n] = row
        if self.gram is None:
            self.vectors[n] = vector
        self.answers.append(record.answer)
        self.texts.append(record.query)
        state = EntryState()
        self.states.append(state)
        return state


def replay(
    records: Sequence[Record],
    embedder_or_vectors: Encoder | npt.NDArray[np.float32],
    settings: Iterable[Setting],
    *,
    seed: int = 0,
    policy: HitPolicy | None = None,
    neighbours: int = 1 + NEIGHBOURS,
    fits: Sequence[bool] | None = None,
) -> list[ReplayResult]:
    """Replay ``records`` in order once per setting; vectors are row-aligned with records.

    As in the gateway, a query past the embedder's window (``fits`` false; by default asked of
    the embedder's ``window``, every query fits with given vectors) is served and stored by its
    exact text only: its vector is that of its beginning, shared by queries that differ after.
    """
    if isinstance(embedder_or_vectors, np.ndarray):
        vectors = np.asarray(embedder_or_vectors, dtype=np.float32)
    else:
        vectors = embedder_or_vectors.encode([r.query for r in records])
        window = getattr(embedder_or_vectors, "window", None)
        if fits is None and window is not None:
            fits = [window.fits(r.query) for r in records]
    if len(vectors) != len(records):
        raise ValueError(f"{len(vectors)} vectors for {len(records)} records")
    fits = fits if fits is not None else [True] * len(records)
    policy = policy or HitPolicy()
    # Small logs: one matrix product up front instead of one per request.
    gram = vectors @ vectors.T if len(vectors) <= GRAM_LIMIT else None
    return [
        _run(records, vectors, fits, gram, setting, policy, seed, neighbours)
        for setting in settings
    ]


def _run(
    records: Sequence[Record],
    vectors: npt.NDArray[np.float32],
    fits: Sequence[bool],
    gram: npt.NDArray[np.float32] | None,
    setting: Setting,
    policy: HitPolicy,
    seed: int,
    neighbours: int,
) -> ReplayResult:
    rng = random.Random(seed)
    scopes: dict[str, _Scope] = {}
    result = ReplayResult(setting)
    for row, (record, vector) in enumerate(zip(records, vectors, strict=True)):
        scope = scopes.get(record.scope)
        if scope is None:
            scope = scopes[record.scope] = _Scope(vectors.shape[1], gram)
        result.requests += 1
        known = record.answer is not None
        result.known += known
        if not fits[row]:
            result.exact_only += 1
            key = normalise(record.query)
            if key in scope.exact:
                result.hits += 1
                result.false_hits += known and scope.exact[key] != record.answer
            else:
                scope.exact[key] = record.answer
            continue
        near = scope.nearest(row, vector, neighbours)
        j, s = near[0] if near else (-1, -1.0)
        if setting.static:
            if j >= 0 and s >= setting.value:
                result.hits += 1
                result.false_hits += known and scope.answers[j] != record.answer
            else:
                scope.insert(row, vector, record)
            continue
        reason = conflict(record.query, scope.texts[j]) if j >= 0 else None
        result.guarded += reason is not None
        if j < 0:
            policy.record(scope.learned, None)
            scope.insert(row, vector, record)
            continue
        entry, cached = scope.states[j], scope.answers[j]
        # Runners-up holding the same cached answer: comparing cached answers is free.
        agreement = None if cached is None else sum(scope.answers[k] == cached for k, _ in near[1:])
        assessment = policy.assess(
            s, entry, scope.learned, setting.value, conflict=reason, agreement=agreement
        )
        policy.record(scope.learned, assessment)
        decision = assessment.decision(rng)
        if decision == "hit":
            result.hits += 1
            result.false_hits += known and cached != record.answer
            continue
        new = scope.insert(row, vector, record)
        if not known or cached is None:
            continue
        if decision == "verify":
            result.verifications += 1
        elif policy.compare_on_miss(s):
            result.comparisons += 1
        else:
            continue
        correct = cached == record.answer
        verified = decision == "verify"
        policy.observe(
            entry, scope.learned, s, correct, assessment=assessment, verified=verified,
            conflict=reason, agreement=agreement,
        )  # fmt: skip
        policy.learn(new, scope.learned, s, correct)
        if verified and not correct:
            rho = assessment.verify_probability
            result.estimated_false_hits += (1.0 - rho) / rho
        # The fresh answer is at hand: comparing it with further neighbours' cached answers is
        # free, and tells each of them (and the new entry) about its neighbourhood.
        for k, s_k in near[1:]:
            if policy.compare_on_miss(s_k) and scope.answers[k] is not None:
                same = scope.answers[k] == record.answer
                policy.learn(scope.states[k], scope.learned, s_k, same)
                policy.learn(new, scope.learned, s_k, same)
    result.entries = sum(len(s.answers) + len(s.exact) for s in scopes.values())
    return result


def parse_record(obj: Mapping[str, Any]) -> Record:
    """A log line as a :class:`Record` (``query`` or the last user message of ``messages``)."""
    query = obj.get("query")
    if query is None:
        messages = obj.get("messages") or []
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        if isinstance(content, list):  # content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        query = content
    if not isinstance(query, str) or not query:
        raise ValueError("a record needs a 'query' or a user message")
    intent, answer = obj.get("intent"), obj.get("answer")
    scope = str(obj.get("scope") or "default")
    if intent is not None:
        return Record(query, f"intent:{intent}", scope, labelled=True)
    if isinstance(answer, str):
        return Record(query, " ".join(answer.lower().split()), scope)
    return Record(query, None, scope)


def load_records(lines: Iterable[bytes | str]) -> list[Record]:
    """Records from JSONL lines (blank lines skipped)."""
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(parse_record(orjson.loads(line)))
        except (orjson.JSONDecodeError, ValueError, AttributeError) as exc:
            raise ValueError(f"line {number}: {exc}") from exc
    return out


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    """``gateway cache replay``: print one row per setting."""
    parser = argparse.ArgumentParser(
        prog="gateway cache replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("file", help="JSONL request log")
    parser.add_argument("--max-error-rate", type=_floats, default=[0.005, 0.01, 0.02])
    parser.add_argument("--static", type=_floats, default=[0.85, 0.9])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffle", action="store_true", help="replay in a seeded random order")
    args = parser.parse_args(argv)
    try:
        with open(args.file, "rb") as f:
            records = load_records(f)
    except (OSError, ValueError) as exc:
        print(f"gateway cache replay: {exc}", file=sys.stderr)
        return 2
    if args.shuffle:
        random.Random(args.seed).shuffle(records)
    from cache.embedder import SentenceEmbedder  # loads torch: only when replaying

    embedder = SentenceEmbedder()
    settings = [Setting(v) for v in args.max_error_rate] + [Setting(v, True) for v in args.static]
    results = replay(records, embedder, settings, seed=args.seed)
    print(HEADER)
    for r in results:
        print(r.line())
    print(f"{sum(1 for r in records if r.answer is not None)} of {len(records)} records answered")
    if results and results[0].exact_only:
        print(
            f"{results[0].exact_only} queries past the embedder's window: exact matches only, "
            "as in the gateway"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
