"""What the cache stage learns when a fresh answer can be compared with cached ones.

A lookup that did not serve (or that was sampled for verification) leaves a ``Comparison``;
once the provider has answered, ``learn_from_answer`` tells the hit policy (cache/hits.py)
whether the nearest cached answers said the same, for the compared entries and for the new
one. Split from gateway/stages/cache.py, which keeps the request path and the writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cache.hits import Assessment, EntryState, HitPolicy, ScopeState
from cache.store import Entry
from gateway.core.context import RequestContext

from .cache_rules import answer_text, same_answer


@dataclass(frozen=True, slots=True)
class Comparison:
    """A lookup whose fresh answer will be compared with the cached ones."""

    neighbours: list[tuple[Entry, float]]
    assessment: Assessment
    conflict: str | None
    agreement: int
    verified: bool


def learn_from_answer(
    policy: HitPolicy,
    state: ScopeState,
    ctx: RequestContext,
    fresh: str,
    comparison: Comparison,
    new_state: EntryState,
) -> tuple[dict[int, bytes], bool]:
    """Compare the fresh answer with the nearest cached ones and learn from it: the compared
    entries' new states (to save), and whether the nearest one said the same."""
    (entry, similarity), *runners = comparison.neighbours
    correct = same_answer(fresh, answer_text(entry.answer))
    entry_state = EntryState.from_bytes(entry.state)
    policy.observe(
        entry_state,
        state,
        similarity,
        correct,
        assessment=comparison.assessment,
        verified=comparison.verified,
        conflict=comparison.conflict,
        agreement=comparison.agreement,
    )
    policy.learn(new_state, state, similarity, correct)
    states = {entry.id: entry_state.to_bytes()}
    for runner, runner_similarity in runners:
        same = same_answer(fresh, answer_text(runner.answer))
        runner_state = EntryState.from_bytes(runner.state)
        policy.learn(runner_state, state, runner_similarity, same)
        policy.learn(new_state, state, runner_similarity, same)
        states[runner.id] = runner_state.to_bytes()
    ctx.decision.events.append(
        {"type": "cache_compared", "correct": correct, "verified": comparison.verified}
    )
    return states, correct
