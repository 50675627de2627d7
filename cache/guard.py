"""Lexical guard: near-duplicate queries that must not share an answer.

Sentence embeddings place "transfer 100 euros" next to "transfer 500 euros", "my card arrived"
next to "my card has not arrived" and "weather in Paris" next to "weather in Lyon": the cosine
similarity of such pairs is often above any threshold a cache would use, yet the answers differ.
:func:`conflict` looks for the cheap, high-precision signs of that and names the first one found:

- **numbers**: the multisets of numbers differ (digits and number words are both read, so
  "two weeks" and "2 weeks" agree; "1,000" equals "1000"; "1.50" equals "1.5"; a currency symbol
  is part of the amount, so "$5" and "£5" differ). A number present in one query only counts.
- **dates**: different month or weekday names, or relative days (today / tomorrow / yesterday).
- **negation**: a negation word (not, no, never, without, ``n't`` ...) present in one query only.
- **entities**: a capitalised word that is not sentence-initial (a name, a place, an acronym)
  in one query that the other does not contain in any casing ("Apple Pay" vs "apple pay" is fine,
  "Paris" vs "Lyon" is not).
- **quoted**: the sets of quoted strings differ.

It is deliberately lexical and one-sided cases count: a false conflict costs one cache miss,
a missed one serves a wrong answer. Features of a text are memoised (the cached side repeats),
so a call costs a few microseconds.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

__all__ = ["conflict"]

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

_TOKEN = re.compile(
    r"""(?P<quote>"[^"]+"|“[^”]+”|(?<!\w)'[^']+'(?!\w)|`[^`]+`)"""
    r"""|(?P<money>[$€£¥₹])?\s?(?P<num>\d+(?:[.,]\d+)*)"""
    r"""|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)?)"""
    r"""|(?P<stop>[.!?;]+)"""
)


class _Features(NamedTuple):
    numbers: tuple[str, ...]
    dates: frozenset[str]
    negated: bool
    entities: frozenset[str]
    words: frozenset[str]
    quoted: frozenset[str]


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
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        if kind == "quote":
            inner = match.group("quote")[1:-1].strip().lower()
            quoted.add(inner)
            words.update(inner.split())
            initial = False
        elif kind == "num":
            numbers.append(_number(match.group("num"), match.group("money")))
            initial = False
        elif kind == "word":
            word = match.group("word")
            lower = word.lower()
            words.add(lower)
            bare = lower.replace("'", "")
            if bare in _NEGATIONS or lower.endswith("n't"):
                negated = True
            elif lower in _NUMBER_WORDS:
                numbers.append(_NUMBER_WORDS[lower])
            elif lower in _DATE_WORDS and (lower not in _AMBIGUOUS_DATE_WORDS or word[0].isupper()):
                dates.add(lower)
            elif word[0].isupper() and not initial and lower not in _NOT_ENTITIES:
                entities.add(lower)
            initial = False
        else:
            initial = True
    return _Features(
        tuple(sorted(numbers)),
        frozenset(dates),
        negated,
        frozenset(entities),
        frozenset(words),
        frozenset(quoted),
    )


def _show(values: tuple[str, ...] | frozenset[str]) -> str:
    return "{" + ", ".join(sorted(values)) + "}" if values else "none"


def conflict(query: str, cached_query: str) -> str | None:
    """Why ``query`` must not be answered with ``cached_query``'s answer, or None.

    The reason names the kind first ("numbers", "dates", "negation", "entities", "quoted"),
    then what differs, e.g. ``"numbers: {100} vs {500}"``.
    """
    if query == cached_query:
        return None
    a, b = _features(query), _features(cached_query)
    if a.numbers != b.numbers:  # sorted, so this compares multisets
        return f"numbers: {_show(a.numbers)} vs {_show(b.numbers)}"
    if a.dates != b.dates:
        return f"dates: {_show(a.dates)} vs {_show(b.dates)}"
    if a.negated != b.negated:
        return "negation: only in the " + ("query" if a.negated else "cached query")
    missing = (a.entities - b.words) | (b.entities - a.words)
    if missing:
        return f"entities: {_show(frozenset(missing))} in one query only"
    if a.quoted != b.quoted:
        return f"quoted: {_show(a.quoted)} vs {_show(b.quoted)}"
    return None
