"""The semantic cache's brain: the lexical guard, the hit policy, and the replay engine."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pytest

from cache.guard import conflict
from cache.hits import EntryState, HitPolicy, ScopeState
from cache.replay import Record, Setting, load_records, main, replay

# -- guard -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "cached", "kind"),
    [
        ("Transfer 100 euros to my savings", "Transfer 500 euros to my savings", "numbers"),
        ("What is 15% of 80?", "What is 15% of 90?", "numbers"),
        ("Convert 1,000 USD to EUR", "Convert 1,500 USD to EUR", "numbers"),
        ("I was charged $5 extra", "I was charged £5 extra", "numbers"),
        ("Book a table for two", "Book a table for three", "numbers"),
        ("What's 2 + 2?", "What's 2 + 3?", "numbers"),
        ("Convert 100 dollars to euros", "Convert dollars to euros", "numbers"),
        ("Schedule the call for Monday", "Schedule the call for Friday", "dates"),
        ("What's the weather today", "What's the weather tomorrow", "dates"),
        ("Why did my card arrive?", "Why did my card not arrive?", "negation"),
        ("I can log in to the app", "I can't log in to the app", "negation"),
        ("Is this drink vegan?", "Is this drink never vegan?", "negation"),
        ("What is the capital of France?", "What is the capital of Germany?", "entities"),
        ("How do I use it with Apple Pay?", "How do I use it with Google Pay?", "entities"),
        ("Flights from Berlin to Rome", "Flights from Berlin to Paris", "entities"),
        ('Translate "good morning" to Spanish', 'Translate "good night" to Spanish', "quoted"),
    ],
)
def test_guard_flags_near_duplicates_that_differ(query: str, cached: str, kind: str) -> None:
    reason = conflict(query, cached)
    assert reason is not None
    assert reason.startswith(kind), reason
    assert conflict(cached, query) is not None  # symmetric


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How do I locate my card?", "Where can I find my card?"),
        ("I ordered it two weeks ago", "I ordered it 2 weeks ago"),
        ("Convert 1,000 dollars", "Convert 1000 dollars"),
        ("It costs 1.50 euros", "It costs 1.5 euros"),
        ("I can't log in", "I cannot log in"),
        ("My card hasn't arrived", "My card did not arrive yet"),
        ("How do I use Apple Pay?", "how do i use apple pay"),
        ("Can I top up with a card?", "Is it possible to add money with a card?"),
        ("What is the capital of France?", "what's the capital of France"),
        ("Where is my card? I need it.", "where is my card"),
        ("Tell me a joke", "Tell me a joke"),
        ("Did my transfer go through in March?", "Did my transfer go through in March"),
        ("You may block my card", "block my card"),
    ],
)
def test_guard_lets_paraphrases_share(query: str, cached: str) -> None:
    assert conflict(query, cached) is None


# -- policy ----------------------------------------------------------------------------------

POLICY = HitPolicy()


def scope_calibrated(threshold: float, n: int = 4000, seed: int = 0) -> ScopeState:
    """A scope that has seen ``n`` outcomes of a step world: right iff ``s >= threshold``."""
    rng = random.Random(seed)
    scope = ScopeState()
    for _ in range(n):
        s = rng.uniform(0.6, 1.0)
        POLICY.observe(EntryState(), scope, s, s >= threshold)
        POLICY.record(
            scope, None if rng.random() < 0.5 else POLICY.assess(s, EntryState(), scope, 0.01)
        )
    return scope


def test_cold_policy_is_conservative() -> None:
    scope, entry, rng = ScopeState(), EntryState(), random.Random(0)
    for s in (0.6, 0.8, 0.88, 0.92):
        assert POLICY.error(s, entry, scope) > 0.95
        assert POLICY.decide(s, entry, scope, 0.02, rng) == "miss"
    for _ in range(50):  # a little traffic with nothing servable changes nothing
        POLICY.record(scope, None)
    assert all(POLICY.decide(0.92, entry, scope, 0.02, rng) == "miss" for _ in range(50))
    # only near-duplicates are served before the scope has learned anything
    assert POLICY.error(POLICY.cautious_until + 0.01, entry, scope) < 0.01


def test_wrong_feedback_stops_hits_at_that_similarity() -> None:
    scope, rng = scope_calibrated(0.8), random.Random(1)
    entry = EntryState()
    assert POLICY.decide(0.9, entry, scope, 0.02, rng) in ("hit", "verify")
    POLICY.observe(entry, scope, 0.9, correct=False, feedback=True)
    decisions = {POLICY.decide(s, entry, scope, 0.02, rng) for s in (0.85, 0.9, 0.91) * 20}
    assert decisions == {"miss"}
    assert POLICY.error(0.9, entry, scope) > 0.5
    # a wrong verification (not feedback) also raises the entry's threshold past it
    other = EntryState()
    POLICY.observe(other, scope, 0.9, correct=False)
    assert POLICY.error(0.9, other, scope) > POLICY.error(0.9, EntryState(), scope)


def test_right_outcomes_lower_an_entry_risk() -> None:
    scope = scope_calibrated(0.85)
    entry = EntryState()
    for _ in range(3):
        POLICY.observe(entry, scope, 0.8, correct=True)
    assert POLICY.risk(entry) < 0.5
    assert POLICY.error(0.82, entry, scope) < POLICY.error(0.82, EntryState(), scope) / 2


@pytest.mark.parametrize("threshold", [0.75, 0.85, 0.92])
def test_learned_scope_threshold_converges_to_the_step(threshold: float) -> None:
    scope, entry = scope_calibrated(threshold), EntryState()
    assert POLICY.error(threshold + 0.02, entry, scope) < 0.05
    assert POLICY.error(threshold - 0.02, entry, scope) > 0.9


def test_an_entry_wrong_where_the_scope_is_right_stops_hitting() -> None:
    """Scope: right from 0.8 on; this entry's answers are only right from 0.9 on."""
    scope, rng, entry = scope_calibrated(0.8), random.Random(2), EntryState()
    fresh = EntryState()
    assert POLICY.decide(0.86, fresh, scope, 0.02, rng) != "miss"
    for _ in range(60):
        s = rng.uniform(0.75, 1.0)
        POLICY.observe(entry, scope, s, s >= 0.9)
    assert len(entry.to_bytes()) == 13  # bounded: three numbers, however many outcomes
    assert POLICY.risk(entry) > 5
    assert all(POLICY.decide(0.86, entry, scope, 0.02, rng) == "miss" for _ in range(20))
    for s in (0.82, 0.9, 0.95):
        assert POLICY.error(s, entry, scope) >= min(1.0, 5 * POLICY.error(s, fresh, scope))


def test_guard_conflicts_block_until_the_scope_shows_they_do_not_matter() -> None:
    scope, rng = scope_calibrated(0.8), random.Random(4)
    reason = "numbers: {1} vs {2}"
    assert POLICY.error(0.9, EntryState(), scope, conflict=reason) == 1.0
    for _ in range(300):  # flagged pairs that turn out to share their answers
        s = rng.uniform(0.8, 1.0)
        POLICY.observe(EntryState(), scope, s, True, conflict=reason)
    assert POLICY.guard_lift(scope, 0) < 3
    assert POLICY.decide(0.95, EntryState(), scope, 0.02, rng, conflict=reason) != "miss"
    for _ in range(300):  # in a scope where numbers matter, they keep blocking
        POLICY.observe(EntryState(), scope, 0.95, False, conflict="negation: only in the query")
    negation = "negation: only in the query"
    assert POLICY.error(0.97, EntryState(), scope, conflict=negation) > POLICY.max_hit_error


@pytest.mark.parametrize("rate", [0.01, 0.03])
def test_error_bound_holds_on_a_synthetic_stream(rate: float) -> None:
    """Correctness is a noisy function of similarity; served wrong answers stay within δ."""
    rng, scope = random.Random(3), ScopeState()
    entries = [EntryState() for _ in range(200)]
    hits = wrong = requests = 0
    for _ in range(30_000):
        entry = rng.choice(entries)
        s = rng.uniform(0.5, 1.0)
        correct = rng.random() < min(1.0, max(0.0, (s - 0.7) / 0.2))  # a ramp, not a step
        requests += 1
        a = POLICY.assess(s, entry, scope, rate)
        POLICY.record(scope, a)
        decision = a.decision(rng)
        if decision == "hit":
            hits += 1
            wrong += not correct
        elif decision == "verify":
            POLICY.observe(entry, scope, s, correct, assessment=a, verified=True)
        elif POLICY.compare_on_miss(s):
            POLICY.observe(entry, scope, s, correct, assessment=a)
    assert wrong / requests <= rate * 1.3
    assert hits / requests > 0.15  # and it does serve


def test_neighbours_that_disagree_raise_the_estimate() -> None:
    scope, rng = ScopeState(), random.Random(5)
    for _ in range(3000):  # a world where a query whose runners-up disagree is often wrong
        s, agreement = rng.uniform(0.7, 1.0), rng.randrange(5)
        wrong = rng.random() < (0.4 if agreement == 0 else 0.01) * (1.0 - s) * 4
        POLICY.observe(EntryState(), scope, s, not wrong, agreement=agreement)
    assert POLICY.agreement_lift(scope, 0) > 5 * POLICY.agreement_lift(scope, 4)
    at = {a: POLICY.error(0.85, EntryState(), scope, agreement=a) for a in (0, 4, None)}
    assert at[0] > at[None] > at[4]


def test_states_serialise_compactly() -> None:
    scope, entry = scope_calibrated(0.85, n=300), EntryState()
    POLICY.observe(entry, scope, 0.83, True)
    POLICY.observe(entry, scope, 0.91, False, feedback=True)
    data = entry.to_bytes()
    assert len(data) == 13
    assert EntryState.from_bytes(data).to_json() == pytest.approx(entry.to_json(), abs=1e-4)
    restored_entry = EntryState.from_json(orjson.loads(orjson.dumps(entry.to_json())))
    assert restored_entry.feedback == pytest.approx(0.91)
    assert EntryState.from_bytes(b"") == EntryState()
    with pytest.raises(ValueError, match="entry state"):
        EntryState.from_bytes(b"\x02abc")
    data = scope.to_bytes()
    assert len(data) < 1200
    restored = ScopeState.from_bytes(data)
    for s in (0.8, 0.86, 0.9):
        assert POLICY.error(s, entry, restored) == pytest.approx(
            POLICY.error(s, entry, scope), rel=1e-3
        )
    merged = ScopeState.from_bytes(data)
    merged.merge(restored)
    assert merged.wrong.sum() == pytest.approx(2 * scope.wrong.sum(), rel=1e-5)


# -- replay ----------------------------------------------------------------------------------


def world(n: int, seed: int = 0) -> tuple[list[Record], npt.NDArray[np.float32]]:
    """Twenty intents as noisy clusters of random unit vectors; queries without digits."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 48))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, 20, size=n)
    vectors = centres[labels] + 0.07 * rng.normal(size=(n, 48))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    words = ["".join(rng.choice(list(string.ascii_lowercase), 6)) for _ in range(n)]
    records = [
        Record(f"please {w}", f"intent:{k}", labelled=True)
        for w, k in zip(words, labels, strict=True)
    ]
    return records, vectors.astype(np.float32)


def test_replay_counts_hits_and_false_hits() -> None:
    records, vectors = world(1500)
    results = replay(records, vectors, [Setting(0.7, static=True), Setting(0.01)])
    static, learned = results
    assert static.requests == learned.requests == 1500
    assert static.hits + static.entries == 1500  # every static miss is inserted
    assert learned.hits + learned.entries == 1500
    assert learned.false_hit_rate <= 0.015
    assert learned.hit_rate > 0.5
    assert learned.verifications > 0
    assert 0 < learned.comparisons < learned.requests


def test_replay_keeps_scopes_apart() -> None:
    records, vectors = world(200)
    twice = [Record(r.query, r.answer, scope, True) for scope in ("a", "b") for r in records]
    both = np.concatenate([vectors, vectors])
    static = replay(twice, both, [Setting(0.999, static=True)])[0]
    # the second scope sees exact repeats of the first one's queries, but must not hit them
    assert static.hits == 2 * replay(records, vectors, [Setting(0.999, static=True)])[0].hits


def test_replay_guard_blocks_numbers() -> None:
    vector = np.ones((1, 8), dtype=np.float32) / np.sqrt(8)
    records = [Record("send 100 euros", "a"), Record("send 500 euros", "b")]
    result = replay(records, np.repeat(vector, 2, axis=0), [Setting(0.05)])[0]
    assert result.guarded == 1
    assert result.hits == 0


def test_replay_cli_reads_openai_bodies(tmp_path: Path) -> None:
    lines = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ]
        },
        {"query": "hello there", "intent": 3, "scope": "team-a"},
        {"query": "hello", "answer": "  Hello!  "},
    ]
    records = load_records(orjson.dumps(line) for line in lines)
    assert [r.query for r in records] == ["hi", "hello there", "hello"]
    assert records[1] == Record("hello there", "intent:3", "team-a", labelled=True)
    assert records[2].answer == "hello!"
    assert records[0].answer is None
    with pytest.raises(ValueError, match="line 1"):
        load_records([b'{"messages": []}'])
    assert main([str(tmp_path / "missing.jsonl")]) == 2


def test_replay_matches_queries_past_the_window_by_their_exact_text(embedder: Any) -> None:
    """As the gateway: two long queries sharing their first 256 word pieces embed identically;
    the replay must not count the second a hit, and an exact repeat still is one."""
    from tests.test_cache_window import RISKS, SUMMARISE

    records = [
        Record(SUMMARISE, "summary"),
        Record(RISKS, "risks"),
        Record(f" {SUMMARISE.upper()} ", "summary"),
        Record("How do I reset my password?", "reset"),
    ]
    settings = [Setting(0.85, static=True)]
    result = replay(records, embedder, settings)[0]
    assert (result.exact_only, result.hits, result.false_hits) == (3, 1, 0)
    # The vectors alone, as before the rule: the second long query is a false hit.
    vectors = embedder.encode([r.query for r in records])
    blind = replay(records, vectors, settings)[0]
    assert blind.exact_only == 0
    assert blind.false_hits >= 1
