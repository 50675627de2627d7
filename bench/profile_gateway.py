"""Profile the gateway with cProfile under wrk load: the pass-through path, or the cache's.

Starts the fake upstream and ``python -m cProfile -o OUT -m gateway serve ...``, drives it with
``wrk -t1 -c1`` for ``--seconds``, stops the gateway with SIGINT (cProfile writes OUT on exit) and
prints the top cumulative entries under gateway/, providers/ and cache/, then aiohttp's::

    python -m bench.profile_gateway [--seconds 5] [--out /tmp/gw.prof] [--top 25]
        [--target c|h|u] [--connections 1]

``--target h`` profiles exact cache hits, ``u`` unique-question misses (bench/overhead_cache.py:
the cache on, a throwaway ``redis-server``).
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

from bench import overhead_cache as cached
from bench.overhead_load import LoadGen
from bench.overhead_servers import (
    CACHE_TARGETS,
    BenchError,
    Procs,
    check_targets,
    free_port,
    start_gateway,
    wait_ready,
)
from bench.overhead_telemetry import start_redis


def profile(seconds: float, out: Path, top: int, connections: int = 1, target: str = "c") -> None:
    with tempfile.TemporaryDirectory(prefix="gw-prof-") as tmp:
        procs = Procs(Path(tmp))
        loadgen = LoadGen(Path(tmp))
        if loadgen.wrk is None:
            print("wrk not found (apt-get install -y wrk); using the Python load generator")
        try:
            port = free_port()
            log = procs.start(
                "upstream", [sys.executable, "-m", "bench.overhead_servers", "_upstream", str(port)]
            )
            wait_ready("fake upstream", port, procs.procs[-1][1], log)
            launcher = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "gateway"]
            if target in CACHE_TARGETS:
                redis_url = start_redis(procs)
                url = start_gateway(
                    procs,
                    port,
                    launcher,
                    name="gateway-cache",
                    extra_policy=cached.policy_cache_section(),
                    extra_env=cached.gateway_env(redis_url),
                )
            else:
                url = start_gateway(procs, port, launcher)
            asyncio.run(check_targets({target: url}))
            loadgen.run(url, connections, 1.0, target)  # warm: the model's first passes
            result = loadgen.run(url, connections, seconds, target)
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
    stats.sort_stats("cumulative").print_stats(r"/(gateway|providers|cache)/", top)
    stats.sort_stats("cumulative").print_stats(r"/aiohttp/", top)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_gateway", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/gw.prof"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--target", choices=["c", *CACHE_TARGETS], default="c")
    args = parser.parse_args(argv)
    try:
        profile(args.seconds, args.out, args.top, args.connections, args.target)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
