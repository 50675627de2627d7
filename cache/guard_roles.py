"""Roles in a query: which of its things is the source, the target, the first, the second.

"Convert 15 USD to EUR" and "Convert 15 EUR to USD" hold the same words, numbers and entities,
so every set-based rule of the guard agrees they are alike; only the order tells them apart.
:func:`roles` reads a query's roles as :class:`Roles`, and :func:`swapped` says whether two
queries put the same things in different roles:

- **direction words.** ``to``/``into``/``towards``/``onto`` (and ``in``/``as`` before a currency
  or unit: "15 EUR in USD") make the next content word the *target* and the previous one the
  *source*; ``from`` makes the next one the *source*; ``vs``/``versus``/``against``/``than``/
  ``over``/``instead`` (of) make the previous one *first* and the next one *second*;
  ``before`` likewise and ``after`` the other way round ("A before B" is "B after A").
  Articles and possessives are skipped. Two queries conflict when a role is filled differently
  in each and each side's filler fills another role in the other query (the same things,
  swapped). A different filler is a substitution, left to the other rules.
- **permutation.** With the same skeleton of function words, the same content words in another
  order ("Alice paid Bob" / "Bob paid Alice") conflict, unless the words swapped are only
  joined by ``and``/``or``/a comma ("Visa and Mastercard" / "Mastercard and Visa").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["DIRECTION_WORDS", "Roles", "roles", "roles_of", "swapped"]

_WORD = re.compile(r"[$€£¥₹]?\d+(?:[.,]\d+)*|[\w@#][\w@#.'/-]*\w|\w|->|→|,")
_TARGET = frozenset({"to", "into", "towards", "toward", "onto", "->", "→"})
_SOFT_TARGET = frozenset({"in", "as"})  # only before a currency or a unit
_SOURCE = frozenset({"from"})
_ORDERED = frozenset({"vs", "vs.", "versus", "against", "than", "over", "instead"})
_BEFORE = frozenset({"before"})
_AFTER = frozenset({"after"})
_DIRECTION = _TARGET | _SOFT_TARGET | _SOURCE | _ORDERED | _BEFORE | _AFTER
DIRECTION_WORDS = _DIRECTION
_COORDINATION = frozenset({"and", "or", "&", ","})
# Function words: skipped when looking for a direction word's argument, and the skeleton of
# the permutation rule.


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_FUNCTION = (
    _words(
        """a an the my your our their his her its this that these those some any me i you we it
    is are was were be been am do does did can could will would should shall may might must
    please how what which who whom whose when where why there here of for on at by with
    and or & , not no just also so if then about much many more less up down out
    """
    )
    | _DIRECTION
)
_UNITS = _words(
    """usd eur gbp jpy chf cad aud nzd inr cny rmb sek nok dkk pln czk huf try brl mxn zar sgd hkd
    krw btc eth dollars dollar euros euro pounds pound yen francs franc rupees rupee yuan
    km kilometres kilometers miles mile metres meters feet foot inches inch cm mm kg kilograms
    grams pounds lbs ounces oz litres liters gallons celsius fahrenheit kelvin hours minutes
    seconds days weeks months years bytes kb mb gb tb mph kph
    """
)


class Roles(NamedTuple):
    """A query's role fillers, and its tokens in order (the permutation rule compares them)."""

    fillers: frozenset[tuple[str, str]]  # (role, word): target, source, first, second
    tokens: tuple[str, ...]


# NamedTuple's own __new__ is a Python function; the guard builds one Roles per query.
_new = tuple.__new__
_NONE: frozenset[tuple[str, str]] = frozenset()


def _argument(tokens: Sequence[str], start: int, step: int) -> str | None:
    i = start
    while 0 <= i < len(tokens):
        token = tokens[i]
        if token not in _FUNCTION:
            return token
        if step > 0 and token in _DIRECTION:
            return None  # "to" right after "from": no argument between them
        i += step
    return None


def roles(text: str) -> Roles:
    """The roles of ``text`` (its own tokenising; the guard passes its tokens to
    :func:`roles_of` instead, saving a pass)."""
    # A capital "A" past the first word names something ("Team A"), it is not the article.
    return roles_of(
        [
            t if t == "A" and i else t.lower().rstrip(".") if t != "vs." else t
            for i, t in enumerate(_WORD.findall(text))
        ]
    )


def roles_of(tokens: Sequence[str]) -> Roles:
    """The roles of a lower-cased token sequence (words, numbers, arrows; "A" kept capital
    where it names something). Set look-ups only; no scan without a direction word."""
    fillers: set[tuple[str, str]] = set()
    if _DIRECTION.isdisjoint(tokens):
        return _new(Roles, (_NONE, tuple(tokens)))
    for i in [i for i, token in enumerate(tokens) if token in _DIRECTION]:
        token = tokens[i]
        after = _argument(tokens, i + 1, 1)
        if token in _SOFT_TARGET:
            if after not in _UNITS:
                continue  # "in" and "as" are directions only before a currency or a unit
            token = "to"
        before = _argument(tokens, i - 1, -1)
        if token in _TARGET or token == "to":
            if after:
                fillers.add(("target", after))
            if before:
                fillers.add(("source", before))
        elif token in _SOURCE:
            if after:
                fillers.add(("source", after))
        elif token in _ORDERED or token in _BEFORE:
            if before and after:
                fillers.update((("first", before), ("second", after)))
        elif before and after:  # after
            fillers.update((("first", after), ("second", before)))
    return _new(Roles, (frozenset(fillers), tuple(tokens)))


def _symmetric_swap(content_a: list[str], content_b: list[str], skeleton: list[str]) -> bool:
    """Whether the content orders differ only by swapping two words joined by and/or."""
    differ = [i for i, (x, y) in enumerate(zip(content_a, content_b, strict=True)) if x != y]
    if len(differ) != 2 or differ[1] != differ[0] + 1:
        return False
    # Where the two content words sit among all tokens: only coordination between them.
    positions = [i for i, slot in enumerate(skeleton) if slot == ""]
    between = skeleton[positions[differ[0]] + 1 : positions[differ[1]]]
    return bool(between) and all(t in _COORDINATION for t in between)


def _permuted(a: tuple[str, ...], b: tuple[str, ...]) -> str | None:
    """The same function-word skeleton with the same content words in another order."""
    if len(a) != len(b) or a == b or sorted(a) != sorted(b):
        return None  # the cheap test first: most pairs differ in length or in words
    skeleton_a = ["" if t not in _FUNCTION else t for t in a]
    if skeleton_a != ["" if t not in _FUNCTION else t for t in b]:
        return None
    content_a = [t for t in a if t not in _FUNCTION]
    content_b = [t for t in b if t not in _FUNCTION]
    if _symmetric_swap(content_a, content_b, skeleton_a):
        return None
    return f"order {' '.join(content_a)} vs {' '.join(content_b)}"


def swapped(a: Roles, b: Roles) -> str | None:
    """How ``a`` and ``b`` put the same things in different roles, or None."""
    # A role filled differently in each needs a (role, word) on each side that the other lacks;
    # most pairs with fillers differ on one side only (one query says more), and stop here.
    only_a, only_b = a.fillers - b.fillers, b.fillers - a.fillers
    if only_a and only_b:
        filled_a = {word for _, word in a.fillers}
        filled_b = {word for _, word in b.fillers}
        for role in ("target", "source", "first", "second"):
            x = {word for r, word in only_a if r == role}
            y = {word for r, word in only_b if r == role} if x else None
            # Swapped: each side's filler fills another role on the other side.
            if x and y and x <= filled_b and y <= filled_a:
                return f"{role} {_show(x)} vs {_show(y)}"
    return _permuted(a.tokens, b.tokens)


def _show(values: set[str]) -> str:
    return "{" + ", ".join(sorted(values)) + "}"
