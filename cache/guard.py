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
a missed one serves a wrong answer. Features of a text are memoised (the cached side repeats):
a lookup pays for its new query's features (~24 µs of CPU for a short question), the comparison
itself ~2 µs (``python -m bench.guard``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from cache.guard_ids import identifiers
from cache.guard_roles import Roles, roles_of, swapped

__all__ = ["HARD_KINDS", "KINDS", "Conflict", "conflict", "conflicts"]

# Checked in this order; the first found is :func:`conflict`'s reason.
KINDS = ("identifiers", "roles", "numbers", "dates", "negation", "entities", "quoted")
# Never served, whatever a scope learns: two ids or two directions never share an answer.
HARD_KINDS = frozenset({"identifiers", "roles"})

_NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "fourteen": "14",
    "fifteen": "15",
    "sixteen": "16",
    "seventeen": "17",
    "eighteen": "18",
    "nineteen": "19",
    "twenty": "20",
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "seventy": "70",
    "eighty": "80",
    "ninety": "90",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "dozen": "12",
    "half": "0.5",
}
_DATE_WORDS = frozenset(
    [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "today",
        "tomorrow",
        "yesterday",
        "tonight",
        "weekend",
    ]
)
# "may" and "march" are also a verb: only counted when capitalised (see _features).
_AMBIGUOUS_DATE_WORDS = frozenset({"may", "march", "sat", "sun", "wed"})
_NEGATIONS = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "nobody",
        "nothing",
        "nowhere",
        "neither",
        "nor",
        "without",
        "cannot",
        "cant",
        "dont",
        "doesnt",
        "didnt",
        "isnt",
        "arent",
        "wasnt",
        "werent",
        "wont",
        "wouldnt",
        "shouldnt",
        "couldnt",
        "hasnt",
        "havent",
        "hadnt",
        "aint",
    ]
)
# Capitalised words that are not entities when they are not sentence-initial.
_NOT_ENTITIES = frozenset(
    {"i", "i'm", "i've", "i'll", "i'd", "ok", "okay", "hi", "hello", "please"}
)
_CURRENCY = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}
_CURRENCY_WORDS = {
    **{w: "usd" for w in ("usd", "dollar", "dollars", "bucks")},
    **{w: "eur" for w in ("eur", "euro", "euros")},
    **{w: "jpy" for w in ("jpy", "yen")},
    **{w: "inr" for w in ("inr", "rupee", "rupees")},
    "gbp": "gbp",
}
# A unit right after a number belongs to it ("5 km" is not "5 miles"); spellings of one unit
# share a name. Ambiguous abbreviations ("m", "in") are left out; "pounds" is its own unit.
_UNIT_GROUPS = {
    "s": "s sec secs second seconds",
    "min": "min mins minute minutes",
    "h": "h hr hrs hour hours",
    "d": "day days",
    "wk": "wk wks week weeks",
    "mo": "month months",
    "yr": "yr yrs year years",
    "mg": "mg milligram milligrams",
    "g": "g gram grams",
    "kg": "kg kilo kilos kilogram kilograms",
    "lb": "lb lbs",
    "pound": "pound pounds",
    "oz": "oz ounce ounces",
    "mm": "mm millimetre millimetres millimeter millimeters",
    "cm": "cm centimetre centimetres centimeter centimeters",
    "metre": "metre metres meter meters",
    "km": "km kilometre kilometres kilometer kilometers",
    "mi": "mi mile miles",
    "ft": "ft foot feet",
    "ml": "ml millilitre millilitres milliliter milliliters",
    "l": "l litre litres liter liters",
    "gal": "gallon gallons",
    "cup": "cup cups",
    "kb": "kb",
    "mb": "mb megabyte megabytes",
    "gb": "gb gigabyte gigabytes gig gigs",
    "tb": "tb terabyte terabytes",
    "mbps": "mbps",
    "gbps": "gbps",
}
_UNITS = {word: unit for unit, words in _UNIT_GROUPS.items() for word in words.split()}

_TOKEN = re.compile(
    r"""(?P<quote>"[^"]+"|“[^”]+”|(?<!\w)'[^']+'(?!\w)|`[^`]+`)"""
    r"""|(?P<money>[$€£¥₹])?\s?(?P<num>\d+(?:[.,]\d+)*)"""
    r"""|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)?)"""
    r"""|(?P<stop>[.!?;]+)"""
    r"""|(?P<arrow>->|→)"""
)


class _Features(NamedTuple):
    numbers: tuple[str, ...]
    dates: frozenset[str]
    negated: bool
    entities: frozenset[str]
    words: frozenset[str]
    quoted: frozenset[str]
    identifiers: frozenset[str]
    roles: Roles


def _number(text: str, money: str | None) -> str:
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    elif text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")  # a decimal comma
    try:
        value = float(text) if text.count(".") <= 1 else None
    except ValueError:  # pragma: no cover - the pattern only yields numeric text
        value = None
    normal = text if value is None else format(value, "g") if value < 1e15 else text
    return f"{_CURRENCY[money]}:{normal}" if money else normal


@lru_cache(maxsize=4096)
def _features(text: str) -> _Features:
    text = text.replace("\u2019", "'")
    numbers: list[str] = []
    dates: set[str] = set()
    entities: set[str] = set()
    words: set[str] = set()
    quoted: set[str] = set()
    negated = False
    initial = True  # the next word starts a sentence
    unit_slot = False  # the previous token was a number without a unit: a unit may follow
    sequence: list[str] = []  # the tokens in order, for the roles
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "arrow":
            sequence.append("->")
            unit_slot = False
        elif kind == "quote":
            inner = match.group("quote")[1:-1].strip().lower()
            quoted.add(inner)
            words.update(inner.split())
            initial = unit_slot = False
        elif kind == "num":
            money = match.group("money")
            numbers.append(_number(match.group("num"), money))
            sequence.append(numbers[-1])
            unit_slot = money is None
            initial = False
        elif kind == "word":
            word = match.group("word")
            lower = word.lower().removesuffix("'s")  # "Alice's" names Alice
            words.add(lower)
            # A capital "A" past a sentence's start names something ("Team A"): not "a".
            sequence.append("A" if word == "A" and not initial else lower)
            bare = lower.replace("'", "")
            if unit_slot:
                unit_slot = False
                if unit := _CURRENCY_WORDS.get(lower):
                    numbers[-1] = f"{unit}:{numbers[-1]}"  # "5 dollars" is "$5"
                    continue
                if unit := _UNITS.get(lower):
                    numbers[-1] = f"{numbers[-1]}:{unit}"
                    continue
            if bare in _NEGATIONS or lower.endswith("n't"):
                negated = True
            elif lower in _NUMBER_WORDS:
                numbers.append(_NUMBER_WORDS[lower])
                unit_slot = True
            elif lower in _DATE_WORDS and (lower not in _AMBIGUOUS_DATE_WORDS or word[0].isupper()):
                dates.add(lower)
            elif word[0].isupper() and not initial and lower not in _NOT_ENTITIES:
                entities.add(lower)
            initial = False
        else:
            initial, unit_slot = True, False
    return _Features(
        tuple(sorted(numbers)),
        frozenset(dates),
        negated,
        frozenset(entities),
        frozenset(words),
        frozenset(quoted),
        identifiers(text),
        roles_of(sequence),
    )


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
    found: list[Conflict] = []
    if query == cached_query:
        return found
    a, b = _features(query), _features(cached_query)
    if a.identifiers != b.identifiers:
        only_a, only_b = a.identifiers - b.identifiers, b.identifiers - a.identifiers
        found.append(Conflict("identifiers", f"{_show(only_a)} vs {_show(only_b)}"))
        if first:
            return found
    if role := swapped(a.roles, b.roles):
        found.append(Conflict("roles", role))
        if first:
            return found
    if a.numbers != b.numbers:  # sorted, so this compares multisets
        found.append(Conflict("numbers", f"{_show(a.numbers)} vs {_show(b.numbers)}"))
        if first:
            return found
    if a.dates != b.dates:
        found.append(Conflict("dates", f"{_show(a.dates)} vs {_show(b.dates)}"))
        if first:
            return found
    if a.negated != b.negated:
        where = "query" if a.negated else "cached query"
        found.append(Conflict("negation", f"only in the {where}"))
        if first:
            return found
    missing = (a.entities - b.words) | (b.entities - a.words)
    if missing:
        found.append(Conflict("entities", f"{_show(frozenset(missing))} in one query only"))
        if first:
            return found
    if a.quoted != b.quoted:
        found.append(Conflict("quoted", f"{_show(a.quoted)} vs {_show(b.quoted)}"))
    return found


def conflict(query: str, cached_query: str) -> str | None:
    """Why ``query`` must not be answered with ``cached_query``'s answer, or None.

    The reason names the kind first (see :data:`KINDS`), then what differs, e.g.
    ``"numbers: {100} vs {500}"`` or ``"identifiers: {id:a7x-99213} vs {id:b8k-10442}"``.
    """
    found = conflicts(query, cached_query, first=True)
    return str(found[0]) if found else None
