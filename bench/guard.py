"""The cache guard on its labelled pairs: what it catches, what it lets share, what it costs.

Reads tests/data/guard_pairs.tsv (pairs that must never share an answer, and paraphrases that
may, by class) and runs every pair through ``cache.guard.conflict`` as the cache stage calls it.
Prints, per class, the must-not-share pairs caught and missed and the paraphrases still allowed;
then the guard's cost per lookup in microseconds of this process's CPU time (the machine is
shared: CPU time leaves out the waits for a core), best of ``--repeat`` rounds over all pairs:

- *new query*: the cached query's features memoised, the incoming query's computed: what a
  lookup pays (the cached side repeats; the query is new);
- *both cold*: neither side memoised (the memo cleared before each call);
- *both warm*: both memoised (the comparison alone).

Only ``conflict`` is used, so the same file measures another checkout's guard too (the "before"
figures of bench/README.md): from that checkout's root,
``python -c "import runpy; runpy.run_path('/path/to/bench/guard.py', run_name='__main__')"``::

    python -m bench.guard [--repeat 7]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from cache import guard
from cache.guard import conflict

PAIRS = Path(__file__).resolve().parents[1] / "tests" / "data" / "guard_pairs.tsv"


def load() -> list[tuple[str, str, str, str]]:
    rows = []
    for line in PAIRS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            expect, kind, a, b = line.split("\t")
            rows.append((expect, kind, a, b))
    return rows


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for expect, kind, a, b in rows:
        flagged = conflict(a, b) is not None
        c = counts[kind]
        if expect == "conflict":
            c[0 if flagged else 1] += 1
        else:
            c[2 if not flagged else 3] += 1
    lines = [
        "| class | must not share | caught | missed | paraphrases | allowed |",
        "|---|---|---|---|---|---|",
    ]
    total = [0, 0, 0, 0]
    for kind in sorted(counts, key=lambda k: (not k.startswith("id-"), k)):
        caught, missed, allowed, refused = counts[kind]
        total = [t + v for t, v in zip(total, counts[kind], strict=True)]
        shared = allowed + refused
        lines.append(f"| {kind} | {caught + missed} | {caught} | {missed} | {shared} | {allowed} |")
    caught, missed, allowed, refused = total
    lines.append(
        f"| **all** | {caught + missed} | {caught} | {missed} | {allowed + refused} | "
        f"{allowed} ({100 * allowed / max(1, allowed + refused):.1f} %) |"
    )
    return lines


def _features_memo() -> Any:
    return guard._features  # the memoised per-text features (an lru_cache)


def cost(rows: list[tuple[str, str, str, str]], repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` mean microseconds per ``conflict`` call, three ways."""
    pairs = [(a, b) for _, _, a, b in rows] + [(b, a) for _, _, a, b in rows]
    memo = _features_memo()
    best = {"new query": float("inf"), "both cold": float("inf"), "both warm": float("inf")}
    for r in range(repeat):
        # New query: the cached side warm, the query a text never seen (trailing spaces make a
        # new memo key without changing a token).
        for _, b in pairs:
            conflict(b, b + " ")
        pad = " " * (r + 2)
        start = time.process_time_ns()
        for a, b in pairs:
            conflict(a + pad, b)
        best["new query"] = min(best["new query"], (time.process_time_ns() - start) / len(pairs))
        elapsed = 0
        for a, b in pairs:
            memo.cache_clear()
            start = time.process_time_ns()
            conflict(a, b)
            elapsed += time.process_time_ns() - start
        best["both cold"] = min(best["both cold"], elapsed / len(pairs))
        for a, b in pairs:
            conflict(a, b)
        start = time.process_time_ns()
        for a, b in pairs:
            conflict(a, b)
        best["both warm"] = min(best["both warm"], (time.process_time_ns() - start) / len(pairs))
    return {k: v / 1000 for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rows = load()
    print(f"{PAIRS.name}: {len(rows)} pairs; guard from {guard.__file__}\n")
    print("\n".join(table(rows)))
    calls = 2 * len(rows)
    print(f"\nguard cost per lookup (µs, best of {args.repeat} rounds over {calls} calls):")
    for name, micros in cost(rows, args.repeat).items():
        print(f"  {name:10} {micros:7.2f} µs")


if __name__ == "__main__":
    main()
