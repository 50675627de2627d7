"""Soak: a million requests through the pass-through path, the gateway's RSS sampled throughout.

``gateway serve`` runs in its own process in front of a fast loopback fake (the upstream of
bench/overhead_servers.py, no sleeps); ``wrk`` (or the Python load generator when it is missing)
sends back-to-back chunks of load, and between chunks the gateway's resident set size is read from
``/proc/<pid>/status``. A leak shows as RSS growing with the request count; the target is RSS at
the end within 10 % of RSS after warm-up. Run from the repository root (it takes minutes)::

    nice python -m bench.soak [--requests 1000000] [--warmup 100000] [--chunk-s 10]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.overhead_load import LoadGen, Result, parse_wrk
from bench.overhead_servers import (
    BenchError,
    Procs,
    check_targets,
    free_port,
    start_gateway,
    wait_ready,
)

TARGET_GROWTH = 0.10


def rss_mib(pid: int) -> float:
    """The process's resident set size (``VmRSS``) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def load_chunk(loadgen: LoadGen, url: str, connections: int, seconds: float) -> tuple[Result, str]:
    """One chunk of load; with wrk, its error breakdown too (a 10 s timeout per request, not
    wrk's 2 s: on a machine shared with other jobs a stall is not an error of the gateway)."""
    if loadgen.wrk is None:
        result = loadgen.run(url, connections, seconds)
        return result, f"{result.errors} failed"
    cmd = [
        loadgen.wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
    ]
    cmd += ["-s", str(loadgen.script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise BenchError(f"wrk failed ({out.returncode}):\n{out.stderr}{out.stdout}")
    detail = [
        line.strip() for line in out.stdout.splitlines() if "Non-2xx" in line or "Socket" in line
    ]
    return parse_wrk(out.stdout), "; ".join(detail)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="gw-soak-") as tmp:
        workdir = Path(tmp)
        procs = Procs(workdir)
        try:
            upstream_port = free_port()
            me = [sys.executable, "-m", "bench.overhead_servers"]
            log = procs.start("upstream", [*me, "_upstream", str(upstream_port)])
            wait_ready("fake upstream", upstream_port, procs.procs[-1][1], log)
            url = start_gateway(procs, upstream_port, [sys.executable, "-m", "gateway"])
            gateway_pid = procs.procs[-1][1].pid
            asyncio.run(check_targets({"c": url}))
            loadgen = LoadGen(workdir)
            print(f"loadgen: {loadgen.describe()}; {args.connections} connections", flush=True)
            print(f"{'requests':>10} {'rss MiB':>8} {'req/s':>8} {'errors':>7} {'elapsed s':>9}")
            total = errors = 0
            samples: list[tuple[int, float]] = [(0, rss_mib(gateway_pid))]
            began = time.monotonic()
            while total < args.requests:
                result, detail = load_chunk(loadgen, url, args.connections, args.chunk_s)
                total += result.requests
                errors += result.errors
                samples.append((total, rss_mib(gateway_pid)))
                print(
                    f"{total:>10,} {samples[-1][1]:>8.1f} {result.rps:>8.0f} {errors:>7} "
                    f"{time.monotonic() - began:>9.0f}" + (f"  {detail}" if result.errors else ""),
                    flush=True,
                )
        finally:
            procs.close()
    return report(samples, errors, args.warmup)


def report(samples: list[tuple[int, float]], errors: int, warmup: int) -> int:
    after_warmup = next((rss for count, rss in samples if count >= warmup), samples[-1][1])
    end = samples[-1][1]
    peak = max(rss for count, rss in samples if count >= warmup)
    growth = (end - after_warmup) / after_warmup
    met = abs(growth) <= TARGET_GROWTH and errors == 0
    print(
        f"\nrequests {samples[-1][0]:,}, errors {errors}; RSS at start {samples[0][1]:.1f} MiB, "
        f"after {warmup:,} (warm-up) {after_warmup:.1f} MiB, peak {peak:.1f} MiB, "
        f"end {end:.1f} MiB"
    )
    print(
        f"target: end within {TARGET_GROWTH:.0%} of warm-up RSS and no errors: "
        f"{growth:+.1%}, {'met' if met else 'NOT met'}"
    )
    return 0 if met else 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=100_000, help="requests before the baseline")
    parser.add_argument("--chunk-s", type=float, default=10.0, help="load between RSS samples")
    parser.add_argument("--connections", type=int, default=32)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except BenchError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
