"""How much latency and throughput the gateway costs over a bare aiohttp forwarder.

Compares, in one run and on 127.0.0.1 only:

  (a) a fake OpenAI-compatible upstream, called directly;
  (b) a bare aiohttp forwarder in front of it (the floor any aiohttp proxy pays);
  (c) ``gateway serve`` on the OpenAI pass-through path in front of it;
  (m) the same gateway's ``/v1/messages`` (an Anthropic client) in front of the same upstream;
  (e) the fake upstream's ``/v1/embeddings``, called directly;
  (g) the bare forwarder in front of that;
  (f) the gateway's ``/v1/embeddings`` in front of it (bench/overhead_ingress.py).

Each server runs in its own process; the load comes from ``wrk`` (or, when it is missing, a
Python load generator in its own process). Run from the repository root::

    python -m bench.overhead [--duration 10] [--connections 32] [--only a,b,c,m,e,g,f]

``--ingress``: (a), (c), (m), (e), (f) in interleaved c=1 rounds, the new paths' added p50 beside
the chat path's (bench/overhead_ingress.py).

``--telemetry``: the gateway with telemetry off and on instead (bench/overhead_telemetry.py).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench import overhead_cache as cached
from bench import overhead_ingress as ingress
from bench import overhead_telemetry as telemetry
from bench.overhead_load import LoadGen, Result, machine_context, percentile
from bench.overhead_servers import (
    CACHE_TARGETS,
    GATEWAY_PATHS,
    LABELS,
    PATH,
    REQUESTS,
    WARMUP_S,
    BenchError,
    Procs,
    check_targets,
    server_pids,
    start_servers,
)

OVERHEAD_SAMPLES = 500
TARGET_ADDED_P50_MS = 0.35
TARGET_THROUGHPUT_SHARE = 0.50


async def _overhead_samples(url: str, count: int, key: str = "c") -> list[float]:
    values: list[float] = []
    body, headers = REQUESTS[key]
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                header = response.headers.get("x-gateway-overhead-ms")
            if response.status != 200 or header is None:
                raise BenchError(f"gateway answered {response.status} without the overhead header")
            values.append(float(header))
    return sorted(values)


def _fmt(value: float | None, width: int = 9, digits: int = 3, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "-".rjust(width)
    return f"{value:+.{digits}f}".rjust(width) if sign else f"{value:.{digits}f}".rjust(width)


def report(c1: dict[str, Result], cn: dict[str, Result], connections: int) -> list[str]:
    lines = [
        "",
        f"{'target':<30}{'p50 ms':>9}{'p75 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
        f"{'req/s c=1':>11}{f'req/s c={connections}':>13}",
    ]
    for key, label in LABELS.items():
        if key not in c1:
            continue
        lat = c1[key].latency_ms
        lines.append(
            f"{label:<30}{_fmt(lat.get(50))}{_fmt(lat.get(75))}{_fmt(lat.get(90))}"
            f"{_fmt(lat.get(99))}{_fmt(c1[key].rps, 11, 0)}{_fmt(cn[key].rps, 13, 0)}"
        )
    failed = {k: r.errors for d in (c1, cn) for k, r in d.items() if r.errors}
    if failed:
        lines.append(f"WARNING: non-2xx or socket errors during load: {failed}")

    def added(x: str, y: str) -> tuple[float, float] | None:
        if x not in c1 or y not in c1:
            return None
        return c1[x].latency_ms[50] - c1[y].latency_ms[50], (
            c1[x].latency_ms[99] - c1[y].latency_ms[99]
        )

    lines += ["", f"{'derived (c=1 latency)':<30}{'p50 ms':>9}{'p99 ms':>9}"]
    pairs = (
        ("c", "a", ""),
        ("c", "b", "target"),
        ("b", "a", ""),
        ("m", "b", ""),
        ("f", "g", ""),
        ("g", "e", ""),
    )
    for x, y, target in pairs:
        diff = added(x, y)
        if diff is None:
            continue
        note = ""
        if target:
            verdict = "MET" if diff[0] <= TARGET_ADDED_P50_MS else "MISSED"
            note = f"   target added p50 <= {TARGET_ADDED_P50_MS} ms: {verdict}"
        lines.append(
            f"{f'added by ({x}) over ({y})':<30}{_fmt(diff[0], sign=True)}"
            f"{_fmt(diff[1], sign=True)}{note}"
        )
    chat = added("c", "b")
    for (x, y), name in ((("m", "b"), "/v1/messages"), (("f", "g"), "/v1/embeddings")):
        other = added(x, y)
        if chat is None or other is None:
            continue
        delta = other[0] - chat[0]
        verdict = "MET" if delta <= ingress.TARGET_ADDED_P50_DELTA_MS else "MISSED"
        lines.append(
            f"{f'{name} added - chat added':<30}{_fmt(delta, sign=True)}{'':>9}"
            f"   target <= +{ingress.TARGET_ADDED_P50_DELTA_MS} ms: {verdict}"
        )
    if "b" in cn and "c" in cn and cn["b"].rps > 0:
        share = cn["c"].rps / cn["b"].rps
        verdict = "MET" if share >= TARGET_THROUGHPUT_SHARE else "MISSED"
        lines.append(
            f"{f'throughput (c)/(b), c={connections}':<30}{share * 100:>8.1f}%"
            f"{'':>9}   target >= {TARGET_THROUGHPUT_SHARE * 100:.0f} %: {verdict}"
        )
    if "a" in cn and "b" in cn and cn["a"].rps > 0:
        lines.append(
            f"{f'throughput (b)/(a), c={connections}':<30}{cn['b'].rps / cn['a'].rps * 100:>8.1f}%"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    selected = "".join(k for k in LABELS if k in args.only.replace(",", ""))
    if not selected:
        raise BenchError(f"--only must name at least one of {', '.join(LABELS)}")
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        workdir = Path(tmp)
        procs = Procs(workdir)
        loadgen = LoadGen(workdir)
        try:
            print("\n".join(machine_context(loadgen)), flush=True)
            if loadgen.wrk is None:
                print(
                    "wrk not found: install it with `apt-get install -y wrk`; using the Python "
                    "load generator (higher own cost, figures are less precise)",
                    flush=True,
                )
            if (os.cpu_count() or 1) < 4:
                print(
                    "note: fewer than 4 CPUs; load generator, proxy and upstream share cores, "
                    "so absolute figures (throughput most) are pessimistic",
                    flush=True,
                )
            urls = start_servers(procs, selected)
            asyncio.run(check_targets(urls))
            print("correctness: every selected target answers 200 with the fake's content")
            c1: dict[str, Result] = {}
            cn: dict[str, Result] = {}
            high: dict[str, Result] = {}
            cpu: dict[str, float] = {}
            pids = server_pids(procs)
            counted: dict[str, dict[str, int]] = {}
            passes = [(1, c1), (args.connections, cn)]
            if args.cache_connections and set(urls) & set(CACHE_TARGETS):
                passes.append((args.cache_connections, high))
            for conns, results in passes:
                for key, url in urls.items():
                    if results is high and key not in CACHE_TARGETS:
                        continue
                    print(f"  {LABELS[key]}: c={conns}, {args.duration:g} s ...", flush=True)
                    loadgen.run(url, conns, WARMUP_S, key)
                    began = telemetry.cpu_seconds(pids[key])
                    metrics_url = url.removesuffix(PATH) + "/metrics"
                    if key in CACHE_TARGETS:
                        before = asyncio.run(cached.counters(metrics_url))
                    results[key] = loadgen.run(url, conns, args.duration, key)
                    if conns == args.connections:  # the server's CPU time per request
                        spent = telemetry.cpu_seconds(pids[key]) - began
                        cpu[key] = spent / max(1, results[key].requests)
                    if key in CACHE_TARGETS:
                        after = asyncio.run(cached.counters(metrics_url))
                        counted[f"{key} c={conns}"] = cached.delta(before, after)
            print("\n".join(report(c1, cn, args.connections)))
            print("\n".join(cached.report(c1, cn, args.connections, counted, _fmt)))
            print(
                f"server CPU per request at c={args.connections} (user+system, background work "
                "included; less moved by the host's load than req/s): "
                + ", ".join(f"({k}) {v * 1e6:.0f} us" for k, v in cpu.items())
            )
            for key, found in high.items():
                print(
                    f"{LABELS[key]} at c={args.cache_connections}: {found.rps:.0f} req/s, "
                    f"p50 {found.latency_ms.get(50, math.nan):.3f} ms, {found.errors} errors"
                )
            if set(urls) & set(CACHE_TARGETS):
                lines = cached.too_many_connections(workdir / "gateway-cache.log")
                print(f"gateway-cache log: {lines} 'Too many connections' line(s)")
            for key in GATEWAY_PATHS:
                if key not in urls:
                    continue
                samples = asyncio.run(_overhead_samples(urls[key], OVERHEAD_SAMPLES, key))
                print(
                    f"{LABELS[key]}: self-reported x-gateway-overhead-ms over {len(samples)} "
                    f"sequential requests: p50 {percentile(samples, 50):.3f} ms, "
                    f"p99 {percentile(samples, 99):.3f} ms"
                )
        finally:
            procs.close()
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32, help="the throughput run's -c")
    parser.add_argument(
        "--only", default="a,b,c,h,u,m,e,g,f", help="targets to run, e.g. a,c,m (default: all)"
    )
    parser.add_argument(
        "--cache-connections",
        type=int,
        default=256,
        help="one more run of (h) and (u) at this many connections (0: none)",
    )
    telemetry.add_arguments(parser)
    parser.add_argument(
        "--ingress",
        action="store_true",
        help="(a), (c), (m), (e), (f) in interleaved c=1 rounds (--rounds, --slice): the "
        "side-by-side comparison of the ingress paths (bench/overhead_ingress.py)",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1:
        parser.error("--duration must be > 0 and --connections >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.telemetry:
            telemetry.check_tools()
            return int(telemetry.run(args))
        if args.ingress:
            return ingress.run_interleaved(args)
        return run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
