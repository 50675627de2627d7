"""Identifiers in a query: the tokens that name one thing (an order, a ticket, a commit, a file).

Two queries that differ only in such a token ("status of consignment A7X-99213" / "... B8K-10442")
embed almost identically, yet their answers never carry over. :func:`identifiers` returns a
query's identifiers, each normalised so that exact set equality is the test; the guard
(:mod:`cache.guard`) flags any identifier present in one query and not in the other.

Kinds and their normalisation (each rule documented in docs/cache.md, "Guard"):

=============  ==========================================  =========================================
kind           looks like                                  normalised
=============  ==========================================  =========================================
``url``        ``https://x.io/a?b=1``, ``www.x.io/a``      scheme and host lower-cased; a bare
                                                           trailing ``/`` dropped; path, query and
                                                           fragment exact
``email``      ``ana@Example.com``                         host lower-cased, local part exact
``code``       `` `getUserById` ``                         exact (inner spaces trimmed)
``ref``        ``#123``, ``#deploys``                      lower-cased
``mention``    ``@alice``                                  lower-cased
``path``       ``/var/log/x``, ``~/.bashrc``, ``src/a.py``  exact; a Windows path (``C:\\x``)
                                                           lower-cased (case-insensitive there)
``version``    ``v2.3.1``, ``2.3.1``, ``version 1.10``     leading ``v`` dropped, lower-cased; a
                                                           plain decimal only after *version*,
                                                           *release*, *build*, *patch* ... or a
                                                           platform (*Python 3.11*, *Ubuntu 22.04*)
``id``         ``A7X-99213``, ``INC0012345``, ``4f3a9c``,  hyphens dropped (``W-2`` is ``W2``);
               UUIDs, ``SK4411``                           lower-cased when all its letters share
                                                           one case or it is hexadecimal; a token
                                                           mixing cases (``aB3dE9``) is exact
``name``       ``os.path.join``, ``example.com``,          lower-cased (``snake_case`` exact); two
               ``user_id``                                 labels need a short lower-case last one
                                                           (``yet.Would`` is prose)
=============  ==========================================  =========================================

Not identifiers: plain numbers (the guard's ``numbers`` rule reads them), numbers with a unit or
ordinal suffix (``10am``, ``24h``, ``5kg``, ``2nd``), times (``7:00pm``) and number-word
compounds (``10-sided``): the numbers rule reads their numbers; nor slash pairs of words
(``and/or``, ``km/h``).
"""

from __future__ import annotations

import re

__all__ = ["identifiers", "may_hold_identifiers"]

_IDENT = re.compile(
    r"""(?P<url>\b(?:https?|ftp)://[^\s<>"'`]+|\bwww\.[^\s<>"'`]+)"""
    r"""|(?P<email>[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"""
    r"""|(?P<code>`[^`\n]+`)"""
    r"""|(?P<ref>(?<![\w&])\#\w[\w-]*)"""
    r"""|(?P<mention>(?<![\w])@\w+)"""
    r"""|(?P<winpath>\b[A-Za-z]:\\[^\s"'`<>]+)"""
    r"""|(?P<path>(?:~|\.{1,2})?/[\w.~-][^\s"'`<>,;]*|\w[\w.-]*(?:/[\w.-]+)+/?)"""
    r"""|(?P<token>\w+(?:[-.:+]\w+)*)"""
)
_TOKEN_ONLY = re.compile(r"(?P<token>\w+(?:[-.:+]\w+)*)")  # _IDENT's last alternative
_NOT_TOKEN = re.compile(r"[@#/\\`]|www\.")  # what each of _IDENT's others needs
_MAYBE = re.compile(r"[\d@#/\\_`]|\.\w")  # what every identifier has somewhere
# What every identifier has somewhere, digits aside: a sign of a name or path, a dot before a
# word character, or a digit joined to a letter (directly or by one of -:+). A lone number
# ("book 2 tickets for 15:30") is read by the numbers rule; a text with only such numbers is
# not scanned (_token returns nothing for a run of digits without a dot). ASCII texts only:
# elsewhere str.isdigit and \d disagree ("x²" is a mixed token to _token). The character
# class leads, so that the regex engine scans for it in C; look-behinds test the letter
# before a digit.
_SIGN = re.compile(
    r"[\d@#/\\`_.](?:(?<=[@#/\\`_])|(?<=\.)(?=\w)"
    r"|(?<=\d)(?:[-:+]?[^\W\d]|(?<=[^\W\d]\d)|(?<=[^\W\d][-:+]\d)))"
)
# A whitespace-separated chunk holding one of _MAYBE's signs: found in one pass of the text.
_MAYBE_CHUNK = re.compile(r"(?<!\S)\S*?(?:[\d@#/\\_`]|\.\w)\S*")
_CODE = re.compile(r"`[^`\n]+`")
# A number followed by a unit or an ordinal suffix is a quantity, not a name.
_QUANTITY = re.compile(r"\d+(?:[.,]\d+)?([A-Za-z]+)")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SUFFIXES = _words(
    """st nd rd th am pm h hr hrs hour hours m min mins s sec secs ms d day days w wk wks y yr yrs
    k bn kg g mg lb lbs oz km cm mm mi ft in ml l gb mb kb tb gbps mbps mhz ghz hz kw kwh v mah
    p fps x c f yo"""
)
# "7:00pm" is a time and "10-sided" a compound word: the numbers rule reads their numbers.
_TIME = re.compile(r"\d{1,2}(?::\d{2}){1,2}(?:am|pm)?", re.IGNORECASE)
_COMPOUND = re.compile(r"\d+(?:[.,]\d+)?-[a-z]{3,}")
_VERSION = re.compile(r"[vV]?\d+(?:\.\d+){1,3}(?:[-+][0-9A-Za-z.]+)?|[vV]\d+")
_PLAIN_DECIMAL = re.compile(r"\d+\.\d+")
# A plain decimal right after one of these words is a version ("Python 3.11", "release 2.4").
_VERSION_CUES = _words(
    """version release ver build patch rev revision python node nodejs java php ios android
    kubernetes k8s ubuntu debian fedora macos windows chrome firefox safari go golang rust ruby
    rails django postgres postgresql mysql redis kotlin swift dotnet react angular vue terraform
    helm docker nginx openssl linux kernel gcc clang llvm cuda numpy pandas"""
)
_HEX = re.compile(r"(?:0[xX])?[0-9a-fA-F-]+")
# For ASCII tokens: a digit, a letter, a lower-case and an upper-case letter.
_DIGIT, _LETTER = re.compile(r"\d"), re.compile(r"[A-Za-z]")
_LOWER, _UPPER = re.compile(r"[a-z]"), re.compile(r"[A-Z]")
_TRAILING = ".,;:!?)]}'\""
# Slash pairs that are prose, not paths: "and/or", "km/h", "input/output".
_PROSE_SLASH = re.compile(r"[^\W\d_]{1,12}/[^\W\d_]{1,12}")


def _url(text: str) -> str:
    text = text.rstrip(_TRAILING)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    host, slash, tail = rest.partition("/")
    tail = "" if slash and not tail else slash + tail  # "x.io/" is "x.io"
    return f"{scheme.lower()}{sep}{host.lower()}{tail}"


def _token(text: str, start: int, source: str) -> tuple[str, str] | None:
    """Classify a word-like token: an id, a version, a dotted or snake_case name, or nothing."""
    ascii_ = text.isascii()  # then one regex search answers each question below, in C
    if ascii_:
        has_digit = _DIGIT.search(text) is not None
        has_alpha = _LETTER.search(text) is not None
    else:
        has_digit = any(c.isdigit() for c in text)
        has_alpha = any(c.isalpha() for c in text)
    if has_digit and _VERSION.fullmatch(text):
        before = source[max(0, start - 24) : start].split()
        cued = bool(before) and before[-1].lower() in _VERSION_CUES
        if _PLAIN_DECIMAL.fullmatch(text) and not cued:
            return None  # "1.5 kg": an amount, the numbers rule reads it
        if text[0] in "vV" or text.count(".") >= 2 or cued:
            return ("version", text.lstrip("vV").lower())
        return None
    if has_digit and has_alpha:
        quantity = _QUANTITY.fullmatch(text)
        if quantity is not None and quantity.group(1).lower() in _SUFFIXES:
            return None
        if _TIME.fullmatch(text) or _COMPOUND.fullmatch(text):
            return None
        bare = text.replace("-", "")  # "W-2" is "W2", "AB12-CD34" is "AB12CD34"
        if ascii_:
            upper, lower = _LOWER.search(text) is None, _UPPER.search(text) is None
        else:
            letters = [c for c in text if c.isalpha()]
            upper = all(c.isupper() for c in letters)
            lower = all(c.islower() for c in letters)
        if _HEX.fullmatch(text) or upper or lower:
            return ("id", bare.lower())
        return ("id", bare)  # mixed case: may be case-sensitive (base62 codes)
    if not has_alpha:
        return None
    if "_" in text.strip("_"):
        return ("name", text)  # snake_case: code, whose case matters
    if "." in text:
        labels = text.split(".")
        # Two labels joined by a missing space ("yet.Would") are prose: a two-label name needs
        # a short lower-case last label (a TLD, an extension, "os.path").
        if all(len(label) >= 2 for label in labels) and (
            len(labels) >= 3 or (len(labels[1]) <= 4 and labels[1].islower())
        ):
            return ("name", text.lower())
    return None


_NONE: frozenset[str] = frozenset()


def may_hold_identifiers(text: str) -> bool:
    """Whether ``text`` has a sign of an identifier (see _SIGN): False means that
    :func:`identifiers` finds none. One regex search: the guard's reader of plain texts asks it
    before scanning a text whose only signs may be its amounts."""
    return (_SIGN if text.isascii() else _MAYBE).search(text) is not None


def identifiers(text: str) -> frozenset[str]:
    """The identifiers in ``text``, each as ``kind:normalised`` (see the module docstring)."""
    found: set[str] = set()
    if "`" in text:  # a code span may hold spaces: read before the text is cut into chunks
        found.update("code:" + span[1:-1].strip() for span in _CODE.findall(text))
    # Only chunks with a digit or a sign of a name can hold one: the scan of a plain question is
    # one pass of a simple pattern, and the full one runs on those chunks alone (in place, so
    # look-behinds and version cues still see what precedes them).
    if _MAYBE.search(text) is None:
        return _NONE  # (a code span has a sign: found is empty)
    for chunk in _MAYBE_CHUNK.finditer(text):
        _read(text, chunk.start(), chunk.end(), found)
    return frozenset(found)


def _read(text: str, start: int, end: int, found: set[str]) -> None:
    # Every kind but the word-like token needs one of these signs ("://" has a "/"): a chunk
    # without them ("SK4411", "A7X-99213") is matched by that alternative alone, which spares
    # the regex engine trying the seven others at each of its characters.
    pattern = _IDENT if _NOT_TOKEN.search(text, start, end) else _TOKEN_ONLY
    for match in pattern.finditer(text, start, end):
        kind = match.lastgroup
        value = match.group()
        if kind == "token":
            if value.isalpha() or value.isdigit():
                continue  # the common case: a plain word or number
            classified = _token(value.strip("._-:+"), match.start(), text)
            if classified is not None:
                found.add(f"{classified[0]}:{classified[1]}")
        elif kind == "url":
            found.add("url:" + _url(value))
        elif kind == "email":
            local, _, host = value.rpartition("@")
            found.add(f"email:{local}@{host.lower()}")
        elif kind == "code":
            found.add("code:" + value[1:-1].strip())
        elif kind in ("ref", "mention"):
            found.add(f"{kind}:{value.lower()}")
        elif kind == "winpath":
            found.add("path:" + value.rstrip(_TRAILING).lower())
        else:  # path
            path = value.rstrip(_TRAILING)
            if not path.startswith(("/", "~", ".")):
                parts = path.split("/")
                if all(p.isdigit() for p in parts if p):
                    continue  # a date or a fraction: the numbers rule reads it
                if _PROSE_SLASH.fullmatch(path):
                    continue
            if len(path) > 1:
                found.add("path:" + path)
