"""When the nearest cached entry may be served: hit decisions bounded by an error rate.

One global cosine threshold leaks: some regions of the embedding space are clean at 0.80, others
mix answers at 0.93. Ops set ``max_error_rate`` (δ) per route or team; the cache learns, per scope
and per entry, how likely serving the nearest entry is wrong, and serves only within δ.

**What is learned.** A lookup's estimated error is ``p = audit · q(s) · risk · guard · agree``:

- ``q(s)`` (scope): wrong answers per similarity bin of 0.005, over the exposure of the entries
  compared there (a Poisson rate, so risky entries missing more often do not inflate it), shrunk
  towards a cautious default (a cold scope serves only near-duplicates, s >= 0.93) and
  made non-increasing in ``s`` (pool adjacent violators).
- ``risk`` (entry): ``((W + a) / (E + a)) ** k``, the wrong answers ``W`` met around the entry
  over the ``E`` that ``q`` expected. 13 bytes per entry, whatever its history.
- ``guard`` (scope, per kind of :func:`cache.guard.conflict`): a flagged pair is never served
  until the scope has compared :attr:`HitPolicy.guard_evidence` such pairs (they miss, so that
  is free); then by how much more often than expected they proved wrong (>= 1). Pairs of the
  guard's hard kinds (:data:`cache.guard.HARD_KINDS`: identifiers, roles) are never served and
  teach nothing.
- ``agree`` (scope, per count of the :data:`NEIGHBOURS` runners-up holding the nearest entry's
  answer): a query whose neighbours disagree is far riskier than one whose neighbours concur.
- ``audit`` (scope, >= 1): observed over predicted errors (see below).

Outcomes come from *free comparisons* (a miss fetched the fresh answer anyway: compare it with
the nearest entry's and the runners-up's cached answers), *verifications* (``"verify"``: a
sampled would-be hit is answered fresh and compared) and *client feedback* that an answer was
wrong (counted :attr:`HitPolicy.feedback_weight` times; the entry never hits again at or below
that similarity plus :attr:`HitPolicy.feedback_margin`).

**Why the error rate is bounded.** δ bounds the share of a scope's requests that get a wrong cached
answer (false hits / requests, as the benchmark reports). Serving the lowest ``p`` first
maximises hits under ``sum(p of hits) <= δ · requests``, so the cut-off θ(δ) is the largest ``p``
whose cumulative ``p`` over recent lookups (a histogram with a half-life; one more lookup at θ
must still fit) stays within δ per lookup, capped at :attr:`HitPolicy.max_hit_error`. That holds
as far as ``p`` is calibrated, which is checked, not assumed: verified would-be hits, sampled with
known probability rho, give an unbiased count of the hits' errors (``sum(wrong / rho)``), and near
misses (``p`` within :attr:`HitPolicy.near_band` of θ, compared for free) a plentiful one just
above the cut-off; the larger ratio of observed to predicted errors multiplies every ``p``.

**How exploration is budgeted.** Only would-be hits are verified (misses are compared for free),
with probability ``explore_floor + explore_gain · p / θ``: near the cut-off most, sure hits
rarely, never less than ``explore_floor`` so the audit never goes blind. In the benchmarks that
is about 2 % of requests (counted there as misses).

Pure CPU work on small arrays: no I/O, no clocks, no module state. The caller stores the states
(``EntryState.to_bytes`` 13 bytes beside the entry, ``ScopeState.to_bytes`` ~1 KB per scope);
scope counts are additive, so workers can :meth:`ScopeState.merge` them.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from cache.guard import HARD_KINDS

__all__ = [
    "GUARD_KINDS",
    "NEIGHBOURS",
    "Assessment",
    "Decision",
    "EntryState",
    "HitPolicy",
    "ScopeState",
]

Decision = Literal["hit", "verify", "miss"]
FloatArray = npt.NDArray[np.float64]

LOW, STEP, BINS = 0.5, 0.005, 100  # similarity bins [0.5, 1.0]
GUARD_KINDS = ("numbers", "dates", "negation", "entities", "quoted")
_HARD = -2  # _kind of a hard guard conflict
NEIGHBOURS = 4  # runners-up whose cached answers are compared with the nearest entry's
_P_EDGES = np.concatenate([[0.0], np.geomspace(1e-4, 1.0, 41)])  # estimated-error histogram


def _bin(similarity: float) -> int:
    return min(BINS - 1, max(0, int((similarity - LOW) / STEP)))


def _kind(conflict: str | None) -> int:
    """Index of a guard reason's kind (its text before the colon), -1 for none, ``_HARD`` for a
    kind that is never served."""
    if conflict is None:
        return -1
    name = conflict.split(":", 1)[0]
    if name in HARD_KINDS:
        return _HARD
    return GUARD_KINDS.index(name) if name in GUARD_KINDS else 0


@dataclass(slots=True)
class EntryState:
    """What one cached entry has shown: wrong answers seen, wrong answers expected, feedback."""

    wrong: float = 0.0
    expected: float = 0.0
    feedback: float = 0.0  # highest similarity at which a client reported this answer wrong

    def to_bytes(self) -> bytes:
        """13 bytes: a version, then three float32."""
        return struct.pack("<Bfff", 1, self.wrong, self.expected, self.feedback)

    @classmethod
    def from_bytes(cls, data: bytes) -> EntryState:
        """Inverse of :meth:`to_bytes` (empty bytes give a fresh state)."""
        if not data:
            return cls()
        if data[0] != 1 or len(data) != 13:
            raise ValueError("not an entry state (version 1)")
        return cls(*struct.unpack("<fff", data[1:]))

    def to_json(self) -> list[float]:
        """``[wrong, expected, feedback]``."""
        return [round(self.wrong, 4), round(self.expected, 4), round(self.feedback, 4)]

    @classmethod
    def from_json(cls, data: list[float]) -> EntryState:
        """Inverse of :meth:`to_json`."""
        wrong, expected, feedback = data
        return cls(float(wrong), float(expected), float(feedback))


def _zeros(n: int) -> FloatArray:
    return np.zeros(n, dtype=np.float64)


@dataclass(slots=True)
class ScopeState:
    """Per-scope counts (serialised) and the values the policy derives from them (not).

    ``exposure``/``wrong`` per similarity bin give ``q``; ``traffic`` counts recent lookups per bin
    of estimated error; ``audit``, ``guard_*`` and ``agree_*`` feed the factors of the same names.
    """

    exposure: FloatArray = field(default_factory=lambda: _zeros(BINS))
    wrong: FloatArray = field(default_factory=lambda: _zeros(BINS))
    traffic: FloatArray = field(default_factory=lambda: _zeros(len(_P_EDGES)))
    # [sum of p over would-be hits, sum of wrong / rho over verified would-be hits,
    #  sum of p over compared near misses, wrong answers among them]; p before calibration
    audit: FloatArray = field(default_factory=lambda: _zeros(4))
    guard_wrong: FloatArray = field(default_factory=lambda: _zeros(len(GUARD_KINDS)))
    guard_expected: FloatArray = field(default_factory=lambda: _zeros(len(GUARD_KINDS)))
    guard_seen: FloatArray = field(default_factory=lambda: _zeros(len(GUARD_KINDS)))
    agree_wrong: FloatArray = field(default_factory=lambda: _zeros(NEIGHBOURS + 1))
    agree_expected: FloatArray = field(default_factory=lambda: _zeros(NEIGHBOURS + 1))
    curve: list[float] = field(default_factory=list)  # derived q per bin; [] = stale
    neutral: list[float] = field(default_factory=list)  # derived q without the cautious default
    since_curve: int = 0
    cutoffs: dict[float, float] = field(default_factory=dict)  # derived θ per δ
    since_cutoffs: int = 0

    def _counts(self) -> list[FloatArray]:
        guard = [self.guard_wrong, self.guard_expected, self.guard_seen]
        agree = [self.agree_wrong, self.agree_expected]
        return [self.exposure, self.wrong, self.traffic, self.audit, *guard, *agree]

    def to_bytes(self) -> bytes:
        """Counts only, float32 (about 1 KB); derived values are rebuilt on use."""
        return b"\x01" + np.concatenate(self._counts()).astype("<f4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ScopeState:
        """Inverse of :meth:`to_bytes`."""
        values = np.frombuffer(data[1:], dtype="<f4").astype(np.float64)
        sizes = [len(c) for c in cls()._counts()]
        if data[:1] != b"\x01" or len(values) != sum(sizes):
            raise ValueError("not a scope state (version 1)")
        exposure, wrong, traffic, audit, gw, ge, gs, aw, ae = np.split(
            values, np.cumsum(sizes)[:-1]
        )
        return cls(exposure, wrong, traffic, audit, gw, ge, gs, aw, ae)

    def merge(self, other: ScopeState) -> None:
        """Add another worker's counts (all counts are additive)."""
        for mine, theirs in zip(self._counts(), other._counts(), strict=True):
            mine += theirs
        self.curve, self.neutral, self.cutoffs = [], [], {}


class Assessment(NamedTuple):
    """One lookup's numbers: estimated error ``p``, the cut-off θ, P(verify | servable)."""

    error: float
    cutoff: float
    verify_probability: float
    raw: float  # the model's estimate before the audit's calibration

    @property
    def servable(self) -> bool:
        """Whether the error fits under the cut-off (a hit, or a verification of one)."""
        return self.error <= self.cutoff and self.error < 1.0

    def decision(self, rng: random.Random) -> Decision:
        """Draw the decision: servable lookups are verified with ``verify_probability``."""
        if not self.servable:
            return "miss"
        return "verify" if rng.random() < self.verify_probability else "hit"


@dataclass(frozen=True, slots=True)
class HitPolicy:
    """The hit policy; its fields are hyper-parameters (chosen on training streams only).

    Per lookup: ``assess`` (or ``decide``), then ``record``. Per outcome: ``observe`` for the
    nearest entry, ``learn`` for runners-up and for an entry inserted after the comparison.
    """

    risk_pseudo: float = 2.0  # a: pseudo-wrongs in the entry risk ratio
    risk_power: float = 2.0  # k
    feedback_weight: float = 5.0
    feedback_margin: float = 0.02
    prior_strength: float = 0.1  # pseudo-outcomes per bin pulling q towards the cautious default
    cautious_until: float = 0.93  # a cold scope serves only from this similarity on
    min_similarity: float = 0.7  # never serve below this
    min_error: float = 0.001  # no similarity makes a different answer impossible
    guard_evidence: float = 30.0  # flagged comparisons of a kind before it may be served at all
    guard_pseudo: float = 1.0  # pseudo-wrongs in a guard kind's lift
    agree_pseudo: float = 1.0  # pseudo-wrongs in an agreement class's lift
    compare_floor: float = 0.6
    max_hit_error: float = 0.15
    explore_floor: float = 0.01
    explore_gain: float = 0.1
    audit_prior: float = 3.0  # pseudo-errors: the audit moves estimates once it has evidence
    audit_max_weight: float = 10.0
    near_band: float = 3.0  # near misses: estimated error within this factor of the cut-off
    traffic_half_life: float = 500.0  # lookups
    max_counts: float = 50_000.0  # past this many outcomes (or lookups) a scope halves its counts

    # -- estimates ----------------------------------------------------------------------------

    def expected(self, similarity: float, scope: ScopeState, *, cautious: bool = True) -> float:
        """``q(s)``; ``cautious=False``: from the data alone (what entries' ``expected`` adds)."""
        if not scope.curve:
            self._curves(scope)
        curve = scope.curve if cautious else scope.neutral
        return max(self.min_error, curve[_bin(similarity)]) if similarity >= LOW else 1.0

    def risk(self, entry: EntryState) -> float:
        """The entry's risk ratio: observed over expected wrong answers, shrunk, to a power."""
        a = self.risk_pseudo
        return float(((entry.wrong + a) / (entry.expected + a)) ** self.risk_power)

    def guard_lift(self, scope: ScopeState, kind: int) -> float:
        """How much riskier pairs flagged by this guard kind have proved than expected (>= 1).

        Infinite (never served) until the scope has compared ``guard_evidence`` such pairs, and
        always for a hard kind.
        """
        if kind == _HARD:
            return float("inf")
        if kind < 0:
            return 1.0
        if scope.guard_seen[kind] < self.guard_evidence:
            return float("inf")
        b = self.guard_pseudo
        return max(1.0, float((scope.guard_wrong[kind] + b) / (scope.guard_expected[kind] + b)))

    def agreement_lift(self, scope: ScopeState, agreement: int | None) -> float:
        """How much riskier (or safer) it is when ``agreement`` runners-up share the answer."""
        if agreement is None:
            return 1.0
        c = min(NEIGHBOURS, max(0, agreement))
        b = self.agree_pseudo
        return float((scope.agree_wrong[c] + b) / (scope.agree_expected[c] + b))

    def calibration(self, scope: ScopeState) -> float:
        """Observed / predicted errors of verified would-be hits or of near misses (>= 1)."""
        predicted, audited, near_predicted, near_wrong = (float(v) for v in scope.audit)
        prior = self.audit_prior
        verified = (audited + prior) / (predicted + prior)
        near = (near_wrong + prior) / (near_predicted + prior)
        return min(20.0, max(1.0, verified, near))

    def error(
        self,
        similarity: float,
        entry: EntryState,
        scope: ScopeState,
        *,
        conflict: str | None = None,
        agreement: int | None = None,
        calibrated: bool = True,
    ) -> float:
        """Estimated probability that ``entry``'s answer is wrong for a query at ``similarity``."""
        if calibrated:
            raw = self.error(similarity, entry, scope, conflict=conflict, agreement=agreement,
                             calibrated=False)  # fmt: skip
            return min(1.0, raw * self.calibration(scope))
        if similarity < self.min_similarity:
            return 1.0
        if entry.feedback and similarity <= entry.feedback + self.feedback_margin:
            return 1.0
        lift = self.guard_lift(scope, _kind(conflict))
        if lift == float("inf"):
            return 1.0
        context = self.risk(entry) * lift * self.agreement_lift(scope, agreement)
        return min(1.0, self.expected(similarity, scope) * context)

    # -- decisions ----------------------------------------------------------------------------

    def assess(
        self,
        similarity: float,
        entry: EntryState,
        scope: ScopeState,
        max_error_rate: float,
        *,
        conflict: str | None = None,
        agreement: int | None = None,
    ) -> Assessment:
        """The estimated error, the scope's cut-off θ(δ) and the chance of verifying (pure).

        ``conflict``: :func:`cache.guard.conflict` of the query and the entry's query.
        ``agreement``: how many of the next :data:`NEIGHBOURS` entries hold the same cached
        answer (None if unknown).
        """
        raw = self.error(similarity, entry, scope, conflict=conflict, agreement=agreement,
                         calibrated=False)  # fmt: skip
        p = min(1.0, raw * self.calibration(scope))
        cutoff = scope.cutoffs.get(max_error_rate)
        if cutoff is None:
            cutoff = self._cutoff(scope, max_error_rate)
        if p > cutoff or p >= 1.0:
            return Assessment(p, cutoff, 0.0, raw)
        explore = self.explore_floor + self.explore_gain * p / cutoff
        return Assessment(p, cutoff, min(1.0, explore), raw)

    def decide(
        self,
        similarity: float,
        entry: EntryState,
        scope: ScopeState,
        max_error_rate: float,
        rng: random.Random,
        *,
        conflict: str | None = None,
        agreement: int | None = None,
    ) -> Decision:
        """``"hit"``: serve the entry; ``"verify"``: answer fresh and compare; ``"miss"``."""
        return self.assess(
            similarity, entry, scope, max_error_rate, conflict=conflict, agreement=agreement
        ).decision(rng)

    def compare_on_miss(self, similarity: float | None) -> bool:
        """Whether a miss at this nearest similarity should compare answers and ``observe``."""
        return similarity is not None and similarity >= self.compare_floor

    # -- learning -----------------------------------------------------------------------------

    def record(self, scope: ScopeState, assessment: Assessment | None) -> None:
        """Count one lookup in the scope with its assessment (None: nothing to serve).

        Lookups with nothing servable count with error 1.0: they are requests too, and the
        bound is a share of all requests.
        """
        p = 1.0 if assessment is None else min(1.0, max(0.0, assessment.error))
        if assessment is not None and assessment.servable:
            scope.audit[0] += assessment.raw
        scope.traffic[int(np.searchsorted(_P_EDGES, p))] += 1.0
        scope.since_cutoffs += 1
        if scope.since_cutoffs >= 16 or scope.traffic.sum() < 512:
            # Recent traffic decides: estimates fall as the cache warms up, and a histogram of
            # old, higher estimates would set the cut-off too high for today's lookups.
            scope.traffic *= 0.5 ** (scope.since_cutoffs / self.traffic_half_life)
            scope.cutoffs = {}
            scope.since_cutoffs = 0
        if scope.audit[0] + scope.audit[2] > self.max_counts:
            scope.audit *= 0.5

    def observe(
        self,
        entry: EntryState,
        scope: ScopeState,
        similarity: float,
        correct: bool,
        *,
        feedback: bool = False,
        assessment: Assessment | None = None,
        verified: bool = False,
        conflict: str | None = None,
        agreement: int | None = None,
    ) -> None:
        """Learn one outcome: a verification, a free comparison, or client feedback.

        ``assessment``: the lookup's, if the outcome is about one (it feeds the audits);
        ``verified``: the outcome comes from a ``"verify"`` decision (else a free comparison).
        ``conflict``: the guard's reason for this pair, if any.
        """
        weight = self.feedback_weight if feedback else 1.0
        kind = _kind(conflict)
        if kind == _HARD and not feedback:
            # Never served, so nothing here bears on what is: neither q nor the entry's risk.
            return
        if kind >= 0:
            q = self.expected(similarity, scope, cautious=False) * self.risk(entry)
            scope.guard_wrong[kind] += weight * (not correct)
            scope.guard_expected[kind] += weight * min(1.0, q)
            scope.guard_seen[kind] += weight
        elif similarity >= LOW:
            # Poisson counts with the entry's risk as exposure: q stays the baseline for an
            # average entry even though risky entries are the ones that miss (and get compared).
            b = _bin(similarity)
            risk = self.risk(entry)
            scope.exposure[b] += weight * risk * self.agreement_lift(scope, agreement)
            scope.wrong[b] += weight * (not correct)
            if agreement is not None:
                c = min(NEIGHBOURS, max(0, agreement))
                scope.agree_wrong[c] += weight * (not correct)
                scope.agree_expected[c] += (
                    weight * self.expected(similarity, scope, cautious=False) * risk
                )
            seen = scope.exposure.sum()
            if seen > self.max_counts:
                scope.exposure *= 0.5
                scope.wrong *= 0.5
            scope.since_curve += 1
            if scope.since_curve >= 8 or seen < 500:  # the curve moves slowly once it has data
                scope.curve, scope.neutral, scope.cutoffs = [], [], {}
                scope.since_curve = 0
        if assessment is not None and verified and not correct:
            # 1 / rho, capped: one unlucky sample at a tiny rho must not swamp the audit.
            scope.audit[1] += min(self.audit_max_weight, 1.0 / assessment.verify_probability)
        elif (
            assessment is not None
            and not verified
            and not assessment.servable
            and assessment.error < min(1.0, self.near_band * assessment.cutoff)  # a near miss
        ):
            scope.audit[2] += assessment.raw
            scope.audit[3] += not correct
        if feedback and not correct:
            entry.feedback = max(entry.feedback, similarity)
        self.learn(entry, scope, similarity, correct, weight)

    def learn(
        self,
        entry: EntryState,
        scope: ScopeState,
        similarity: float,
        correct: bool,
        weight: float = 1.0,
    ) -> None:
        """An outcome about this entry's neighbourhood only (the scope's counts are untouched).

        For an entry inserted after a comparison (the outcome holds for it too), and for the
        runners-up whose cached answers a miss's fresh answer was compared with.
        """
        entry.wrong += weight * (not correct)
        entry.expected += weight * self.expected(similarity, scope, cautious=False)

    # -- derived values -----------------------------------------------------------------------

    def _curves(self, scope: ScopeState) -> None:
        centres = LOW + STEP * (np.arange(BINS) + 0.5)
        default = (centres < self.cautious_until).astype(np.float64)
        seen = scope.exposure
        weight = seen + self.prior_strength
        rate = np.minimum(1.0, (scope.wrong + self.prior_strength * default) / weight)
        scope.curve = _decreasing(rate, weight)
        mean = min(1.0, (scope.wrong.sum() + 1.0) / (seen.sum() + 2.0))
        weak = seen + self.prior_strength
        rate = np.minimum(1.0, (scope.wrong + self.prior_strength * mean) / weak)
        scope.neutral = _decreasing(rate, weak)

    def _cutoff(self, scope: ScopeState, max_error_rate: float) -> float:
        """θ(δ): the largest estimated error whose cumulative expected error fits δ·lookups."""
        total = float(scope.traffic.sum())
        spent = np.cumsum(scope.traffic * _P_EDGES)  # a bin's error counted at its upper edge
        fits = np.nonzero(spent + _P_EDGES <= max_error_rate * (total + 1.0))[0]
        cutoff = min(float(_P_EDGES[fits[-1]]) if len(fits) else 0.0, self.max_hit_error)
        scope.cutoffs[max_error_rate] = cutoff
        return cutoff


def _decreasing(values: FloatArray, weights: FloatArray) -> list[float]:
    """Weighted least-squares non-increasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for v, w in zip(values.tolist(), weights.tolist(), strict=True):
        blocks.append([v, w, 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return np.repeat([b[0] for b in blocks], [int(b[2]) for b in blocks]).tolist()
