"""The chaos suite at scale: >= 5,000 requests under the seeded fault schedule, tallies printed.

The same run as ``tests/chaos/test_chaos.py`` (CI runs 600 requests): loopback fakes in three
regions under outages, 429 storms, hangs, mid-stream cuts, malformed bodies, moderation blocks
and version swaps; a throwaway ``redis-server`` killed at 35 % and restarted at 60 %; a Qdrant
that is not there; four teams with different residency. Run from the repository root::

    python -m bench.chaos [--requests 5000] [--seed 20261127] [--concurrency 8]

Exit status 0 when every invariant held: 0 requests lost, 0 residency violations, 0 cross-team
cache hits, every request answered within its deadline (+ the slack).

``--schedule flapping`` runs ``tests/chaos/flapping.py`` instead: faults of a few seconds, one
provider at a time, rotating through 503s, a 429 storm, a hang and mid-stream cuts, under the
default routing settings; it reports availability over all requests and over those with a healthy
allowed candidate (target >= 99.5 %), cut streams apart, and the time to answer with a hung
primary under the default policy. Exit status 0 when the invariants held and the target was met.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import time
from collections.abc import Sequence

from cache.embedder import SentenceEmbedder
from tests.chaos.flapping import run_flapping, summarize_hung, time_to_answer_with_a_hung_primary
from tests.chaos.harness import SLACK_S, run_chaos
from tests.conftest import RedisServer


async def _run(args: argparse.Namespace) -> int:
    embedder = SentenceEmbedder()
    redis = RedisServer()
    redis.start()
    began = time.monotonic()
    try:
        tally = await run_chaos(
            args.requests,
            seed=args.seed,
            embedder=embedder,
            concurrency=args.concurrency,
            redis=redis,
        )
    finally:
        redis.stop()
        await embedder.close()
    print(
        f"chaos: {args.requests} requests, seed {args.seed}, concurrency {args.concurrency}, "
        f"{time.monotonic() - began:.0f} s, deadline slack {SLACK_S:g} s"
    )
    print("\n".join(tally.lines()))
    for kind, items in (
        ("lost", tally.lost),
        ("cross-team", tally.cross_team_hits),
        ("residency", tally.residency_violations),
        ("late", tally.late),
    ):
        for item in items[:10]:
            print(f"  {kind}: {item}")
    return 0 if not any(tally.violations().values()) else 1


TARGET = 0.995


async def _run_flapping(args: argparse.Namespace) -> int:
    began = time.monotonic()
    tally = await run_flapping(args.requests, seed=args.seed, concurrency=args.concurrency)
    print(
        f"chaos (flapping): {args.requests} requests, seed {args.seed}, concurrency "
        f"{args.concurrency}, {time.monotonic() - began:.0f} s, deadline slack {SLACK_S:g} s"
    )
    print("\n".join(tally.lines()))
    for failure in tally.failures[:10]:
        print(f"  failed with a healthy candidate: {failure}")
    for kind, items in (
        ("lost", tally.base.lost),
        ("residency", tally.base.residency_violations),
        ("late", tally.base.late),
    ):
        for item in items[:10]:
            print(f"  {kind}: {item}")
    print(summarize_hung(await time_to_answer_with_a_hung_primary()))
    ok, total = tally.availability()["healthy candidate allowed"]
    met = total == 0 or ok / total >= TARGET
    return 0 if met and not any(tally.base.violations().values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--schedule", choices=["seeded", "flapping"], default="seeded")
    args = parser.parse_args(argv)
    if args.schedule == "flapping":
        logging.basicConfig(level=logging.CRITICAL)  # every fault logs; the tallies say it all
        return asyncio.run(_run_flapping(args))
    if shutil.which("redis-server") is None:
        print("chaos: redis-server is not installed", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)  # the faults make the gateway log a lot
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
