"""Reading a text's features for the lexical guard (:mod:`cache.guard`), once per text.

:func:`read` reads any text token by token; :func:`plain` reads a *plain* text (ASCII, no quote,
sign of an identifier or arrow: most questions) in a few C-level passes, amounts included, and
gives exactly what :func:`read` gives (None for a text it leaves to :func:`read`). The guard
memoises what they return; its comparison reads the flat fields of :class:`Features`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from cache.guard_ids import identifiers, may_hold_identifiers
from cache.guard_roles import DIRECTION_WORDS, Roles, roles_of
from cache.guard_words import (
    AMBIGUOUS_DATE_WORDS,
    CURRENCY,
    CURRENCY_WORDS,
    DATE_WORDS,
    LEXICON,
    NEGATIONS,
    NOT_ENTITIES,
    NUMBER_WORDS,
    UNITS,
)

__all__ = ["Features", "plain", "read"]

# One token per match, its kind told by its first character (see read). The alternatives
# and their order are the guard's grammar: quotes, an amount (a currency sign may lead), a word
# (with one inner apostrophe: "don't", "Alice's"), a sentence stop, an arrow.
_TOKEN = re.compile(
    r""""[^"]+"|“[^”]+”|(?<!\w)'[^']+'(?!\w)|`[^`]+`"""
    r"""|[$€£¥₹]?\s?\d+(?:[.,]\d+)*"""
    r"""|[^\W\d_]+(?:'[^\W\d_]+)?"""
    r"""|[.!?;]+"""
    r"""|->|→"""
)
_QUOTE_OPENERS = frozenset("\"“'`")
_STOPS = frozenset(".!?;")
# A plain text: ASCII, starting with a letter or a digit, with no quote, sign of an identifier
# or arrow. Most questions are plain: they have no identifiers or quotes to read, so their words
# (and their capitalised words, for the entities) and their amounts are all the guard needs
# (see plain). One translation of the text's bytes finds the characters that rule it out and
# gives its words; the rest is tested only when the character it is about occurs.
_BLOCKING = set('"`$>@#/\\_')


def _plain_byte(code: int) -> int:
    """A byte's image in a plain text's translation: NUL if it rules the text out, 1 for a
    digit (an amount, see _amounts), the lower-case letter for a letter, a space otherwise."""
    char = chr(code)
    if char in _BLOCKING:
        return 0
    if code >= 128:
        return 32  # never read: a plain text is ASCII
    if char.isdigit():
        return 1
    return code | 32 if char.isalpha() else 32


_PLAIN_BYTES = bytes(_plain_byte(code) for code in range(256))
_DOT_WORD = re.compile(r"\.\w")  # "example.com", "os.path", "1.5": left to read
_OPEN_QUOTE = re.compile(r"(?<!\w)'|'[A-Z]")  # may open a 'quote'; "x'Y": left to read
# Any capital but a bare "I" ("How do I ..."): a text without one has no capitalised word to
# read (the pronoun is never one). The character class leads, so that the regex engine scans
# for it in C.
_CAPITAL = re.compile(r"[A-Z](?:(?<!I)|(?=[A-Za-z']))")
# A word that starts with a capital (its first letter not inside a word), as read cuts it.
_CAPITAL_WORD = re.compile(r"[A-Z](?<![A-Za-z'].)[A-Za-z]*(?:'[A-Za-z]+)?")
_LONE_A = re.compile(r"A(?<![A-Za-z'].)(?![A-Za-z]|'[A-Za-z])")  # the word "A", as read cuts it
_I_FORMS = frozenset({"I", "I'm", "I've", "I'll", "I'd", "I's"})  # the pronoun, never a name
# What may stand between a sentence stop and the next sentence's first word: any ASCII
# character but a letter, a digit (an amount is a token: the word after it is not initial) or
# a stop.
_GAP = "".join(c for c in map(chr, range(128)) if not c.isalnum() and c not in ".!?;")
# An amount of a plain text and the word right after it (its unit, if it is one), as _TOKEN
# cuts them: nothing but spaces and signs that start no token between the two.
_AMOUNT = re.compile(r"(\d+(?:[.,]\d+)*)(?:[^A-Za-z\d.!?;]*([A-Za-z]+(?:'[A-Za-z]+)?))?")
_SEQUENCE = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")  # words and amounts, in order
_ASCII_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_WORD_OR_STOP = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|[.!?;]+")
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# NamedTuple's own __new__ is a Python function: features are built with tuple's.
_new = tuple.__new__


class Features(NamedTuple):
    """A text's features: what each rule of the guard compares."""

    numbers: tuple[str, ...]
    dates: frozenset[str]
    negated: bool
    entities: frozenset[str]
    words: frozenset[str]
    quoted: frozenset[str]
    identifiers: frozenset[str]
    # identifiers, numbers, dates, negated, quoted: one equality test tells a pair that agrees
    # on all five (most near neighbours) from one that needs the rule-by-rule comparison.
    key: tuple[object, ...]
    # The roles (cache.guard_roles.Roles) flat, the set of their tokens and the words that fill
    # a role: the comparison tells from these alone whether the roles can differ
    # (cache.guard._compare) before calling swapped.
    fillers: frozenset[tuple[str, str]]
    tokens: tuple[str, ...]
    tokenset: frozenset[str]
    filled: frozenset[str]


def _make(
    numbers: list[str] | tuple[str, ...],
    dates: frozenset[str],
    negated: bool,
    entities: frozenset[str],
    words: frozenset[str],
    quoted: frozenset[str],
    ids: frozenset[str],
    roles: Roles,
    tokenset: frozenset[str],
) -> Features:
    ordered = tuple(sorted(numbers)) if numbers else ()
    if ordered or dates or negated or quoted or ids:
        key: tuple[object, ...] = (ids, ordered, dates, negated, quoted)
    else:
        key = _BARE  # one object: most pairs compare keys by identity
    fillers, tokens = roles
    filled = frozenset([word for _, word in fillers]) if fillers else _EMPTY
    values = (ordered, dates, negated, entities, words, quoted, ids, key, fillers, tokens)
    return _new(Features, (*values, tokenset, filled))


def _number(text: str, money: str | None) -> str:
    if "," in text:
        if _THOUSANDS.fullmatch(text):
            text = text.replace(",", "")
        elif text.count(",") == 1 and "." not in text:
            text = text.replace(",", ".")  # a decimal comma
    try:
        value = float(text) if text.count(".") <= 1 else None
    except ValueError:  # pragma: no cover - the pattern only yields numeric text
        value = None
    normal = text if value is None else format(value, "g") if value < 1e15 else text
    return f"{CURRENCY[money]}:{normal}" if money else normal


def plain(text: str) -> Features | None:
    """The features of a plain text (see _BLOCKING) from its lower-cased words and its
    capitalised ones, in a few C-level passes; None for any other text (or for the rare plain
    one it leaves to :func:`read`). Gives what :func:`read` gives, faster. Digits are read
    here too (:func:`_amounts`), so "book 2 tickets for 7pm" skips the token loop."""
    first = text[:1]
    if not text.isascii() or not first.isalnum():
        return None
    spaced = text.encode().translate(_PLAIN_BYTES)
    if (
        0 in spaced
        or ("." in text and _DOT_WORD.search(text))
        or ("'" in text and _OPEN_QUOTE.search(text))
    ):
        return None
    if "A" in text and _names_with_a(text):
        return None  # "Team A", "A7X", "00:1A": a capital "A" naming something (see _capitals)
    digits = 1 in spaced
    if "'" in text:  # "Alice's" names Alice; "don't", "isn't" negate
        tokens = [t[:-2] if t.endswith("'s") else t for t in _ASCII_WORD.findall(text.lower())]
        words = frozenset(tokens)
        negated = not NEGATIONS.isdisjoint(words) or any(
            t.endswith("n't") or t.replace("'", "") in NEGATIONS for t in words if "'" in t
        )
    else:
        tokens = (spaced.replace(b"\1", b" ") if digits else spaced).decode().split()
        words = frozenset(tokens)
        negated = False  # see below: a negation is one of the special words
    # One set intersection tells most texts (no negation, date, number or direction word) from
    # the few whose special words need the tests below.
    special = _EMPTY if _SPECIAL.isdisjoint(words) else words & _SPECIAL
    numbered = False
    dates = _EMPTY
    if special:
        negated = negated or not NEGATIONS.isdisjoint(special)
        dates = _PLAIN_DATES & special or _EMPTY
        numbered = not _NUMBER_WORD_SET.isdisjoint(special)
    if first.isupper() and tokens[0] in _MAY_MARCH:
        dates = dates | {tokens[0]}  # "May I ...": a capitalised "may" is read as the month
    numbers: list[str] = []
    units: frozenset[int] = _NO_UNITS
    sequence: list[str] = tokens
    if digits:
        if numbered:
            return None  # "5 hundred", "two 3-packs": left to read's token loop
        sequence, units = _amounts(text, numbers)
    entities = _EMPTY
    if _CAPITAL.search(text, 1):
        capitals = _capitals(text, numbered, units)
        if capitals is None:
            return None
        entities, named_dates = capitals
        dates = dates | named_dates if named_dates else dates
    if numbered:
        _number_words(text.lower(), numbers)
    if special and not DIRECTION_WORDS.isdisjoint(special):
        roles = roles_of(sequence)
    else:  # no direction word: no fillers, only the order (cache.guard_roles)
        roles = _new(Roles, (_NO_FILLERS, tuple(sequence)))
    if digits:
        tokenset = frozenset(sequence)
        ids = identifiers(text) if may_hold_identifiers(text) else _EMPTY  # "2 tickets": none
        return _make(numbers, dates, negated, entities, words, _EMPTY, ids, roles, tokenset)
    if dates or negated or entities or numbers:
        return _make(numbers, dates, negated, entities, words, _EMPTY, _EMPTY, roles, words)
    # The commonest text: nothing but words (its tokens, whose set is the word set), built
    # directly (no identifier without a digit, see _BLOCKING).
    fillers, order = roles
    filled = frozenset([word for _, word in fillers]) if fillers else _EMPTY
    e = _EMPTY
    return _new(Features, ((), e, False, e, words, e, e, _BARE, fillers, order, words, filled))


def _amounts(text: str, numbers: list[str]) -> tuple[list[str], frozenset[int]]:
    """A plain text's amounts (digits, each with the unit or currency word right after it, as
    :func:`read` reads them) into ``numbers``; returns the text's words and amounts in order
    (for the roles) and where each capitalised unit word starts (not an entity: "15 USD")."""
    normal: dict[str, str] = {}
    units: set[int] = set()
    renamed = False  # an amount whose number is not its text ("1,000" is 1000)
    for match in _AMOUNT.finditer(text):
        digits, word = match.group(1, 2)
        number = _plain_number(digits)
        normal[digits] = number
        renamed = renamed or number != digits
        if word is not None:
            lower = word.lower()
            if lower.endswith("'s"):
                lower = lower[:-2]
            if unit := CURRENCY_WORDS.get(lower):
                number = f"{unit}:{number}"  # "5 dollars" is "$5"
            elif unit := UNITS.get(lower):
                number = f"{number}:{unit}"
            else:
                word = None
            if word is not None and word[0].isupper():
                units.add(match.start(2))
        numbers.append(number)
    sequence = _SEQUENCE.findall(text.lower())
    if "'" in text:
        sequence = [t[:-2] if t.endswith("'s") else t for t in sequence]
    if renamed:  # an amount reads in the sequence as its number, without its unit
        sequence = [normal.get(t, t) for t in sequence]
    return sequence, frozenset(units) if units else _NO_UNITS


@lru_cache(maxsize=1024)
def _plain_number(digits: str) -> str:
    """:func:`_number` of an amount without a currency sign: the few that recur ("1", "2",
    "10") are formatted once."""
    return _number(digits, None)


def _names_with_a(text: str) -> bool:
    """Whether a capital "A" stands alone past a sentence's start (a name, which the roles keep
    apart from the article; :func:`_capitals` would leave the text to :func:`read`), told
    before the reader's other passes: ids and hex ("A7X-99213", "00:1A:2B") have one often."""
    for match in _LONE_A.finditer(text, 1):
        if text[: match.start()].rstrip(_GAP)[-1:] not in _STOPS:
            return True
    return False


def _capitals(
    text: str, numbered: bool, units: frozenset[int]
) -> tuple[frozenset[str], frozenset[str]] | None:
    """A plain text's entities (capitalised words not starting a sentence, as :func:`read`
    reads them) and capitalised "May" or "March"; ``units``: where the unit words of amounts
    start (skipped). None, to leave the text to :func:`read`, for a capital "A" naming
    something ("Team A", which the roles keep apart from the article) and for a capitalised
    word in a text with a number word (it may be its unit: "five Dollars")."""
    entities: set[str] = set()
    dates: set[str] = set()
    for match in _CAPITAL_WORD.finditer(text, 1):
        word, start = match.group(), match.start()
        if word in _I_FORMS and not text.startswith("'", match.end()):
            continue  # the pronoun: never a name ("I'" before a quote is a word, as in read)
        if units and start in units:
            continue  # "15 USD": the amount's currency, not a name
        # Sentence-initial: a stop before it, with nothing between but spaces and signs.
        initial = text[:start].rstrip(_GAP)[-1:] in _STOPS
        if numbered or (word == "A" and not initial):
            return None
        lower = word.lower()
        if lower.endswith("'s"):
            lower = lower[:-2]
        if "'" in lower:
            kind = "neg" if lower.replace("'", "") in NEGATIONS or lower.endswith("n't") else None
        else:
            kind = LEXICON.get(lower)
        if kind is None:
            if not initial and lower not in NOT_ENTITIES:
                entities.add(lower)
        elif kind == "date" and lower in _MAY_MARCH:
            dates.add(lower)
    return frozenset(entities) if entities else _EMPTY, frozenset(dates) if dates else _EMPTY


_PLAIN_DATES = DATE_WORDS - AMBIGUOUS_DATE_WORDS
_MAY_MARCH = AMBIGUOUS_DATE_WORDS & DATE_WORDS
_NUMBER_WORD_SET = frozenset(NUMBER_WORDS)
_EMPTY: frozenset[str] = frozenset()
_BARE = (_EMPTY, (), _EMPTY, False, _EMPTY)  # the key of a text with none of those five
_NO_UNITS: frozenset[int] = frozenset()
_NO_FILLERS: frozenset[tuple[str, str]] = frozenset()
# The words a plain text's features need more than its word set for.
_SPECIAL = NEGATIONS | _PLAIN_DATES | _NUMBER_WORD_SET | DIRECTION_WORDS


def _number_words(lower: str, numbers: list[str]) -> None:
    """Number words of a plain text with the unit or currency word right after each."""
    slot = False
    for token in _WORD_OR_STOP.findall(lower):
        if token[0] in _STOPS:
            slot = False
            continue
        token = token[:-2] if token.endswith("'s") else token
        if slot:
            slot = False
            if unit := CURRENCY_WORDS.get(token):
                numbers[-1] = f"{unit}:{numbers[-1]}"
                continue
            if unit := UNITS.get(token):
                numbers[-1] = f"{numbers[-1]}:{unit}"
                continue
        if LEXICON.get(token) == "num":
            numbers.append(NUMBER_WORDS[token])
            slot = True


def read(text: str) -> Features:
    """The features of any text, token by token."""
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
    for token in _TOKEN.findall(text):
        first = token[0]
        kind = _FIRST.get(first) or ("num" if first.isdecimal() or first.isspace() else "word")
        if kind == "word":
            lower = token.lower()
            if lower.endswith("'s"):
                lower = lower[:-2]  # "Alice's" names Alice
            words.add(lower)
            # A capital "A" past a sentence's start names something ("Team A"): not "a".
            sequence.append("A" if token == "A" and not initial else lower)
            if unit_slot:
                unit_slot = False
                if unit := CURRENCY_WORDS.get(lower):
                    numbers[-1] = f"{unit}:{numbers[-1]}"  # "5 dollars" is "$5"
                    continue
                if unit := UNITS.get(lower):
                    numbers[-1] = f"{numbers[-1]}:{unit}"
                    continue
            if "'" in lower:
                bare = lower.replace("'", "")
                cls = "neg" if bare in NEGATIONS or lower.endswith("n't") else None
            else:
                cls = LEXICON.get(lower)
            if cls is None:
                if not initial and first.isupper() and lower not in NOT_ENTITIES:
                    entities.add(lower)
            elif cls == "neg":
                negated = True
            elif cls == "num":
                numbers.append(NUMBER_WORDS[lower])
                unit_slot = True
            elif lower not in AMBIGUOUS_DATE_WORDS or first.isupper():
                dates.add(lower)  # "may" and "march" only capitalised
            initial = False
        elif kind == "num":
            money = first if first in CURRENCY else None
            digits = token if first.isdecimal() else token[1:].lstrip()  # "$ 5", " 5"
            numbers.append(_number(digits, money))
            sequence.append(numbers[-1])
            unit_slot = money is None
            initial = False
        elif kind == "quote":
            inner = token[1:-1].strip().lower()
            quoted.add(inner)
            words.update(inner.split())
            initial = unit_slot = False
        elif kind == "arrow":
            sequence.append("->")
            unit_slot = False
        else:  # a sentence stop
            initial, unit_slot = True, False
    return _make(
        numbers,
        frozenset(dates),
        negated,
        frozenset(entities),
        frozenset(words),
        frozenset(quoted),
        identifiers(text),
        roles_of(sequence),
        frozenset(sequence),
    )


# A token's kind by its first character; anything else: an amount if a digit or a space (before
# an amount's digits) leads, a word otherwise.
_FIRST = {
    **dict.fromkeys(_QUOTE_OPENERS, "quote"),
    **dict.fromkeys(_STOPS, "stop"),
    **dict.fromkeys("-→", "arrow"),
    **dict.fromkeys(CURRENCY, "num"),
    **dict.fromkeys("0123456789", "num"),
    **dict.fromkeys("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "word"),
}
