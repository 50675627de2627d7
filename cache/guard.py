"""Lexical guard: near-duplicate queries that must not share an answer.

Sentence embeddings place "transfer 100 euros" next to "transfer 500 euros", "my card arrived"
next to "my card has not arrived" and "weather in Paris" next to "weather in Lyon": the cosine
similarity of such pairs is often above any threshold a cache would use, yet the answers differ.
:func:`conflict` looks for the cheap, high-precision signs of that and names the first one found:

- **numbers**: the multisets of numbers differ (digits and number words are both read, so
  "two weeks" and "2 weeks" agree; "1,000" equals "1000"; "1.50" equals "1.5"; a currency symbol
  is part of the amount, so "$5" and "£5" differ, and so is a unit or currency word right after
  it: "5 km" is not "5 miles", "5 dollars" is "$5"). A number present in one query only counts.
- **dates**: different month or weekday names, or relative days (today / tomorrow / yesterday).
- **negation**: a negation word (not, no, never, without, ``n't`` ...) present in one query only.
- **entities**: a capitalised word that is not sentence-initial (a name, a place, an acronym)
  in one query that the other does not contain in any casing ("Apple Pay" vs "apple pay" is fine,
  "Paris" vs "Lyon" is not).
- **quoted**: the sets of quoted strings differ.
- **identifiers**: an identifier (order or ticket id, hex, UUID, e-mail, URL, path, version,
  ``#123``, ``@handle``, a backticked code identifier) present in one query only, after the
  normalisation of :mod:`cache.guard_ids`.
- **roles**: the same things in different roles around a direction word ("15 USD to EUR" /
  "15 EUR to USD", "A before B" / "A after B"), or the same content words permuted
  (:mod:`cache.guard_roles`).

Identifier and role conflicts are *hard* (:data:`HARD_KINDS`): the hit policy never serves such a
pair, however much evidence its scope gathers; the other kinds it may learn to serve where they
prove harmless (cache/hits.py). :func:`conflicts` lists every conflict of a pair as
:class:`Conflict` values; :func:`conflict` names the first (hard kinds first) as a string.

It is deliberately lexical and one-sided cases count: a false conflict costs one cache miss,
a missed one serves a wrong answer. Features of a text are read once and memoised: a cached
entry's when it is stored (:func:`remember`), the incoming query's at its lookup
(:mod:`cache.guard_read`). Most questions are *plain* (ASCII, no quote, identifier sign or
arrow; amounts allowed) and are read without a loop over their tokens; the others token by
token; both give the same features. The comparison answers most pairs from one tuple equality
and a few flat fields. Costs per lookup, before/after:
``python -m bench.guard --against OTHER_CHECKOUT``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from cache.guard_read import Features, plain, read
from cache.guard_roles import Roles, swapped

__all__ = ["HARD_KINDS", "KINDS", "Conflict", "conflict", "conflicts", "remember"]

# Checked in this order; the first found is :func:`conflict`'s reason.
KINDS = ("identifiers", "roles", "numbers", "dates", "negation", "entities", "quoted")
# Never served, whatever a scope learns: two ids or two directions never share an answer.
HARD_KINDS = frozenset({"identifiers", "roles"})


@lru_cache(maxsize=8192)  # ~2 KB a text: ~17 MB when full
def _features(text: str) -> Features:
    """A text's features, read once: the lookup's query when it comes in, a cached entry's
    query when it is stored (the stage warms this memo then, see :func:`remember`) or, on
    another replica, at its first comparison."""
    return plain(text) or read(text)


def remember(text: str) -> None:
    """Read ``text``'s features now (a cached entry's query, when it is stored), so that the
    lookups that meet the entry pay only for their own query's."""
    _features(text)


def _show(values: tuple[str, ...] | frozenset[str]) -> str:
    return "{" + ", ".join(sorted(values)) + "}" if values else "none"


class Conflict(NamedTuple):
    """One reason two queries must not share an answer: its kind (one of :data:`KINDS`) and
    what differs. ``str()`` gives ``"kind: detail"``, the form decision records carry."""

    kind: str
    detail: str

    @property
    def hard(self) -> bool:
        """Never served, whatever the hit policy has learned (:data:`HARD_KINDS`)."""
        return self.kind in HARD_KINDS

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def conflicts(query: str, cached_query: str, *, first: bool = False) -> list[Conflict]:
    """Every reason ``query`` must not be answered with ``cached_query``'s answer, in the order
    of :data:`KINDS` (empty: they may share). ``first``: stop at the first one found.

    Pure and symmetric in which kinds it finds; the features of each text are memoised.
    """
    return [Conflict(*found) for found in _compare(query, cached_query, first)]


def conflict(query: str, cached_query: str) -> str | None:
    """Why ``query`` must not be answered with ``cached_query``'s answer, or None.

    The reason names the kind first (see :data:`KINDS`), then what differs, e.g.
    ``"numbers: {100} vs {500}"`` or ``"identifiers: {id:a7x-99213} vs {id:b8k-10442}"``.
    """
    found = _compare(query, cached_query, True)
    return f"{found[0][0]}: {found[0][1]}" if found else None  # as str(Conflict)


def _compare(query: str, cached_query: str, first: bool) -> list[tuple[str, str]] | tuple[()]:
    """:func:`conflicts` as (kind, detail) pairs: the lookup's :func:`conflict` builds no
    :class:`Conflict` on the way to its string, and no list when there is none."""
    if query == cached_query:
        return ()
    a, b = _features(query), _features(cached_query)
    # Whether the roles can differ (cache.guard_roles.swapped), from flat fields: a role filled
    # differently on each side (neither side's fillers within the other's) by words that fill
    # a role on both sides, or the same tokens in another order. Most pairs with direction
    # words fail the first test, and then swapped is not called at all.
    fa, fb, ta, tb = a.fillers, b.fillers, a.tokens, b.tokens
    roles = (fa and fb and not (fa <= fb or fb <= fa) and not a.filled.isdisjoint(b.filled)) or (
        len(ta) == len(tb) and a.tokenset == b.tokenset and ta != tb
    )
    if a.key == b.key and not roles and a.entities <= b.words and b.entities <= a.words:
        return ()  # the common case: nothing differs that the rules read
    found: list[tuple[str, str]] = []
    if a.identifiers != b.identifiers:
        only_a, only_b = a.identifiers - b.identifiers, b.identifiers - a.identifiers
        found.append(("identifiers", f"{_show(only_a)} vs {_show(only_b)}"))
        if first:
            return found
    if roles and (role := swapped(Roles(fa, ta), Roles(fb, tb))):
        found.append(("roles", role))
        if first:
            return found
    if a.numbers != b.numbers:  # sorted, so this compares multisets
        found.append(("numbers", f"{_show(a.numbers)} vs {_show(b.numbers)}"))
        if first:
            return found
    if a.dates != b.dates:
        found.append(("dates", f"{_show(a.dates)} vs {_show(b.dates)}"))
        if first:
            return found
    if a.negated != b.negated:
        found.append(("negation", "only in the query" if a.negated else "only in the cached query"))
        if first:
            return found
    missing = (a.entities - b.words) | (b.entities - a.words)
    if missing:
        found.append(("entities", f"{_show(frozenset(missing))} in one query only"))
        if first:
            return found
    if a.quoted != b.quoted:
        found.append(("quoted", f"{_show(a.quoted)} vs {_show(b.quoted)}"))
    return found
