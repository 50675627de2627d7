"""The load a ``bench.overhead`` run puts on its targets, and the figures it reads back.

``LoadGen`` drives ``wrk`` with a Lua script for the POST or, when ``wrk`` is missing, the
Python load generator below in its own process (``python -m bench.overhead_load URL DURATION
CONNECTIONS MAX_REQUESTS [KEY]``, which prints one JSON line); ``parse_wrk`` turns ``wrk``'s
output into a ``Result``. The servers it loads are in bench/overhead_servers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import overhead_cache as cached
from bench.overhead_servers import REQUESTS, BenchError


@dataclass
class Result:
    rps: float
    latency_ms: dict[int, float]
    requests: int
    errors: int


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def _python_load(
    url: str, duration: float, connections: int, max_requests: int, key: str = "c"
) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    sent = 0
    deadline = time.perf_counter() + duration
    text, headers = REQUESTS[key]
    body = text.encode()
    nonce, template = int(time.time() * 1000) % 10**9, json.loads(text)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal failures, sent
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                data = cached.unique_body(template, nonce, sent).encode() if key == "u" else body
                start = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                failures += not ok

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": failures,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {str(p): percentile(latencies, p) * 1000 for p in (50, 75, 90, 99)},
    }


def serve_loadgen(
    url: str, duration: float, connections: int, max_requests: int, key: str = "c"
) -> None:
    """The fallback load generator: prints one JSON line with its figures."""
    result = asyncio.run(_python_load(url, duration, connections, max_requests, key))
    print(json.dumps(result), flush=True)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> Result:
    latency = {
        int(m[1]): float(m[2]) * _UNITS[m[3]]
        for m in re.finditer(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    }
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rps is None or total is None:
        raise BenchError(f"cannot parse wrk's output:\n{output}")
    errors = 0
    if non2xx := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output):
        errors += int(non2xx[1])
    if sock := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(sock[i]) for i in range(1, 5))
    return Result(float(rps[1]), latency, int(total[1]), errors)


class LoadGen:
    """``wrk`` with a Lua script for the POST, or the Python fallback in its own process."""

    def __init__(self, workdir: Path) -> None:
        self.wrk = shutil.which("wrk")
        self.scripts: dict[str, Path] = {}
        for key, (body, request_headers) in REQUESTS.items():
            script = self.scripts[key] = workdir / f"post-{key}.lua"
            headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in request_headers.items())
            script.write_text(
                f'wrk.method = "POST"\nwrk.body = [==[{body}]==]\n{headers}', encoding="utf-8"
            )
        self.script = self.scripts["c"]
        self.workdir = workdir

    def describe(self) -> str:
        if self.wrk is None:
            return "python fallback (aiohttp, own process)"
        out = subprocess.run([self.wrk, "-v"], capture_output=True, text=True, check=False)
        return (out.stdout or out.stderr).splitlines()[0].strip()

    def run(self, url: str, connections: int, duration: float, key: str = "c") -> Result:
        if self.wrk is None:
            cmd = [sys.executable, "-m", "bench.overhead_load", url, str(duration)]
            cmd += [str(connections), str(max(1000, int(duration * 50_000))), key]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
            if out.returncode != 0:
                raise BenchError(f"the Python load generator failed:\n{out.stderr[-2000:]}")
            data = json.loads(out.stdout.strip().splitlines()[-1])
            latency = {int(k): v for k, v in data["latency_ms"].items()}
            return Result(data["rps"], latency, data["requests"], data["errors"])
        if key == "u":  # a new nonce: the questions of one run are never asked again
            body, request_headers = REQUESTS[key]
            text = cached.unique_script(body, request_headers)
            self.scripts[key].write_text(text, encoding="utf-8")
        seconds = max(1, round(duration))
        cmd = [self.wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
        cmd += ["-s", str(self.scripts[key]), url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise BenchError(f"wrk failed ({out.returncode}):\n{out.stderr}{out.stdout}")
        return parse_wrk(out.stdout)


def loadgen_warm(loadgen: LoadGen, url: str, key: str) -> None:
    """A short warm-up of one target (connections open, caches warm) before it is measured."""
    loadgen.run(url, 1, 1.0, key)


def machine_context(loadgen: LoadGen) -> list[str]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return [
        f"nproc:    {affinity or os.cpu_count()} (cpu_count {os.cpu_count()})",
        f"python:   {sys.version.split()[0]} ({sys.executable})",
        f"aiohttp:  {aiohttp.__version__}",
        f"loadgen:  {loadgen.describe()}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """The Python load generator's process: URL DURATION CONNECTIONS MAX_REQUESTS [KEY]."""
    a = list(sys.argv[1:] if argv is None else argv)
    with contextlib.suppress(KeyboardInterrupt):
        serve_loadgen(a[0], float(a[1]), int(a[2]), int(a[3]), *a[4:5])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
