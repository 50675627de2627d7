"""Profile the gateway's pass-through path with cProfile under c=1 wrk load.

Starts the fake upstream and ``python -m cProfile -o OUT -m gateway serve ...``, drives it with
``wrk -t1 -c1`` for ``--seconds``, stops the gateway with SIGINT (cProfile writes OUT on exit) and
prints the top cumulative entries under gateway/ and providers/, then aiohttp's::

    python -m bench.profile_gateway [--seconds 5] [--out /tmp/gw.prof] [--top 25]
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.overhead import (
    BenchError,
    LoadGen,
    Procs,
    _check,
    free_port,
    start_gateway,
    wait_ready,
)


def profile(seconds: float, out: Path, top: int, connections: int = 1) -> None:
    with tempfile.TemporaryDirectory(prefix="gw-prof-") as tmp:
        procs = Procs(Path(tmp))
        loadgen = LoadGen(Path(tmp))
        if loadgen.wrk is None:
            print("wrk not found (apt-get install -y wrk); using the Python load generator")
        try:
            port = free_port()
            log = procs.start(
                "upstream", [sys.executable, "-m", "bench.overhead", "_upstream", str(port)]
            )
            wait_ready("fake upstream", port, procs.procs[-1][1], log)
            launcher = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "gateway"]
            url = start_gateway(procs, port, launcher)
            asyncio.run(_check({"c": url}))
            result = loadgen.run(url, connections, seconds)
            print(
                f"profiled load: {result.requests} requests, {result.rps:.0f} req/s "
                f"(c={connections})"
            )
            gateway = procs.procs[-1][1]
            gateway.send_signal(signal.SIGINT)
            try:
                gateway.wait(timeout=15)
            except subprocess.TimeoutExpired as exc:
                raise BenchError("the gateway did not exit on SIGINT; no profile written") from exc
        finally:
            procs.close()
    stats = pstats.Stats(str(out))
    stats.sort_stats("cumulative").print_stats(r"/(gateway|providers)/", top)
    stats.sort_stats("cumulative").print_stats(r"/aiohttp/", top)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_gateway", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gw.prof"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--connections", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        profile(args.seconds, args.out, args.top, args.connections)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
