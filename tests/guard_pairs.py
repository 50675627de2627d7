"""The cache guard's labelled pairs (tests/data/guard_pairs.tsv), for the tests and bench/guard.py.

Each line: ``expect`` (``conflict``: must never share an answer; ``share``: a paraphrase that may),
the class (``id-*`` kinds of identifier, ``roles``, ``amounts``, ``units``, ``dates``,
``negation``, ``entities``, ``general``) and the two queries, tab-separated.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

PAIRS_FILE = Path(__file__).resolve().parent / "data" / "guard_pairs.tsv"


class Pair(NamedTuple):
    """One labelled pair of queries."""

    expect: str  # "conflict" or "share"
    kind: str
    a: str
    b: str

    @property
    def hard(self) -> bool:
        """An identifier or role class: the guard must catch every such pair."""
        return self.kind.startswith("id-") or self.kind == "roles"


def load_pairs(path: Path = PAIRS_FILE) -> list[Pair]:
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 4 or fields[0] not in ("conflict", "share"):
            raise ValueError(f"{path.name}:{number}: expected 4 tab-separated fields")
        pairs.append(Pair(*fields))
    return pairs
