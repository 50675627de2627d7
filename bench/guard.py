"""The cache guard on its labelled pairs: what it catches, what it lets share, what it costs.

Reads tests/data/guard_pairs.tsv (pairs that must never share an answer, and paraphrases that
may, by class) and runs every pair through ``cache.guard.conflict`` as the cache stage calls it.
Prints, per class, the must-not-share pairs caught and missed and the paraphrases still allowed;
then the guard's cost per lookup: ``conflict(query, cached_query)`` with the cached query's
features already read (they are read when the entry is stored) and the query new, as a lookup
pays. Three sets of pairs:

- *suite*: the labelled pairs, both orders (dense in identifiers, amounts and names: a worst
  case);
- *banking77*, *clinc150*: each test question against the previous question of its intent (a
  near neighbour's stand-in: real traffic, read from ../shared/benchmarks when present).

Per set: p50 of the per-call times (wall clock, ``perf_counter_ns``: the median is robust to the
waits for a core of a shared machine) and the mean over the set in CPU time (best of
``--repeat`` rounds). ``--against CHECKOUT`` loads another checkout's guard (its ``cache``
package) beside this one and times both, round by round in the same process (each first in
every other round, each slice after a garbage collection), for before/after figures::

    python -m bench.guard [--repeat 7] [--against ../main]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType

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


def _load_guard(checkout: Path) -> ModuleType:
    """Another checkout's ``cache.guard``, imported beside this one's (its own ``cache``
    package; this process's modules are put back afterwards)."""
    saved = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] == "cache"}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(checkout.resolve()))
    try:
        return importlib.import_module("cache.guard")
    finally:
        sys.path.pop(0)
        for name in [n for n in sys.modules if n.split(".")[0] == "cache"]:
            del sys.modules[name]
        sys.modules.update(saved)


def stream_pairs(dataset: str) -> list[tuple[str, str]]:
    """Each test question with the previous one of its intent (empty without the data)."""
    from bench.cache import DATA
    from bench.cache import load as load_stream

    if not DATA.exists():
        return []
    last: dict[str, str] = {}
    pairs = []
    for text, intent in load_stream(dataset, "test"):
        if intent in last:
            pairs.append((text, last[intent]))
        last[intent] = text
    return pairs


def cost(
    guards: dict[str, ModuleType], pairs: list[tuple[str, str]], repeat: int
) -> dict[str, tuple[float, float]]:
    """Per guard: (p50, mean) µs per lookup, the cached side's features read beforehand."""
    samples: dict[str, list[int]] = {name: [] for name in guards}
    best = {name: float("inf") for name in guards}
    for r in range(repeat):
        pad = " " * (r + 2)  # a new memo key each round, the same tokens
        queries = [(a + pad, b) for a, b in pairs]
        # Each guard first in every other round: the one timed second would otherwise pay for
        # more of the garbage collections that the first one's allocations bring on.
        order = list(guards.items()) if r % 2 == 0 else list(reversed(guards.items()))
        for name, module in order:
            decide, clock, times, cpu = module.conflict, time.perf_counter_ns, samples[name], 0
            # In slices that the smallest memo (4,096 texts) holds, both sides of every pair:
            # the cached sides read first, as when their entries were stored.
            for at in range(0, len(queries), 1000):
                part = queries[at : at + 1000]
                for _, b in part:
                    decide(b, b + " ")
                gc.collect()  # each slice starts from a collected heap, whoever ran before
                start = time.process_time_ns()
                for a, b in part:
                    t0 = clock()
                    decide(a, b)
                    times.append(clock() - t0)
                cpu += time.process_time_ns() - start
            best[name] = min(best[name], cpu / len(pairs))
    return {name: (statistics.median(samples[name]) / 1000, best[name] / 1000) for name in guards}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--against", type=Path, help="another checkout: its guard timed too")
    args = parser.parse_args()
    rows = load()
    print(f"{PAIRS.name}: {len(rows)} pairs; guard from {guard.__file__}\n")
    print("\n".join(table(rows)))
    guards: dict[str, ModuleType] = {"this": guard}
    if args.against:
        guards = {"before": _load_guard(args.against), "this": guard}
        print(f"\nbefore: {guards['before'].__file__}")
    sets = {"suite": [(a, b) for _, _, a, b in rows] + [(b, a) for _, _, a, b in rows]}
    for dataset in ("banking77", "clinc150"):
        if pairs := stream_pairs(dataset):
            sets[dataset] = pairs
    print(f"\nguard cost per lookup (µs; p50 of calls, mean in CPU time best of {args.repeat}):")
    header = "".join(f" {name + ' p50':>12} {name + ' mean':>12}" for name in guards)
    print(f"{'pairs':>18}{header}")
    for name, pairs in sets.items():
        measured = cost(guards, pairs, args.repeat)
        cells = "".join(f" {p50:12.2f} {mean:12.2f}" for p50, mean in measured.values())
        print(f"{name + f' ({len(pairs)})':>18}{cells}", flush=True)


if __name__ == "__main__":
    main()
