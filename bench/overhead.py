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
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench import overhead_cache as cached
from bench import overhead_ingress as ingress
from gateway.policy.model import hash_key

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
TEAM_KEY = "bench-team-key-0001"
ALIAS = "bench-chat"
UPSTREAM_MODEL = "gpt-4o-mini-2024-07-18"
FAKE_CONTENT = "The capital of France is Paris."
WARMUP_S = 2.0
OVERHEAD_SAMPLES = 500
TARGET_ADDED_P50_MS = 0.35
TARGET_THROUGHPUT_SHARE = 0.50

# A realistic non-streaming answer (~400 bytes), fixed so every request costs the same.
FAKE_BODY = json.dumps(
    {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": UPSTREAM_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": FAKE_CONTENT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 24,
            "completion_tokens": 8,
            "total_tokens": 32,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
        "system_fingerprint": "fp_06737a9306",
    },
    separators=(",", ":"),
).encode()

REQUEST_BODY = json.dumps(
    {
        "model": ALIAS,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    },
    separators=(",", ":"),
)
REQUEST_HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {TEAM_KEY}"}

LABELS = {
    "a": "(a) fake upstream, direct",
    "b": "(b) bare aiohttp forwarder",
    "c": "(c) gateway pass-through",
    **cached.LABELS,
    "m": "(m) gateway /v1/messages",
    "e": "(e) upstream embeddings",
    "g": "(g) bare forwarder, embeddings",
    "f": "(f) gateway /v1/embeddings",
}
# Body and headers each target is sent (a, b, c: the chat request).
REQUESTS: dict[str, tuple[str, dict[str, str]]] = {
    **dict.fromkeys("abchu", (REQUEST_BODY, REQUEST_HEADERS)),
    **ingress.requests(ALIAS, TEAM_KEY),
}
REQUESTS["g"] = REQUESTS["e"]
GATEWAY_PATHS = {"c": PATH, "m": ingress.MESSAGES_PATH, "f": ingress.EMBED_PATH}
CACHE_TARGETS = "hu"  # served by a second gateway, with the cache on and Redis


class BenchError(Exception):
    """A setup or correctness failure that makes the figures meaningless."""


# --------------------------------------------------------------------------- server roles


async def _fake_completion(request: web.Request) -> web.Response:
    body = await request.read()
    if (answer := cached.unique_answer(body)) is not None:  # (u): each question its answer
        unique = FAKE_BODY.replace(FAKE_CONTENT.encode(), answer.encode())
        return web.Response(body=unique, content_type="application/json")
    return web.Response(body=FAKE_BODY, content_type="application/json")


async def _fake_embeddings(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ingress.FAKE_EMBEDDING_BODY, content_type="application/json")


def serve_upstream(port: int) -> None:
    """(a), (e): answers every chat completion with ``FAKE_BODY`` and every embeddings request
    with one fixed vector; no sleeps."""
    app = web.Application()
    app.router.add_post(PATH, _fake_completion)
    app.router.add_post(ingress.EMBED_PATH, _fake_embeddings)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


SESSION = web.AppKey("session", aiohttp.ClientSession)


def forwarder_app(upstream_base: str) -> web.Application:
    """(b), (g): read the body, POST it to the same path upstream on one shared session, return
    body and status."""

    async def session_lifetime(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app[SESSION].post(
            upstream_base + request.path, data=body, headers={"Content-Type": "application/json"}
        ) as response:
            payload = await response.read()
            return web.Response(
                body=payload, status=response.status, content_type="application/json"
            )

    app = web.Application()
    app.cleanup_ctx.append(session_lifetime)
    app.router.add_post(PATH, forward)
    app.router.add_post(ingress.EMBED_PATH, forward)
    return app


def serve_forwarder(port: int, upstream_base: str) -> None:
    web.run_app(forwarder_app(upstream_base), host=HOST, port=port, access_log=None, print=None)


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


ROLES: dict[str, Callable[[list[str]], None]] = {
    "_upstream": lambda a: serve_upstream(int(a[0])),
    "_forwarder": lambda a: serve_forwarder(int(a[0]), a[1]),
    "_loadgen": lambda a: serve_loadgen(a[0], float(a[1]), int(a[2]), int(a[3]), *a[4:5]),
    "_collector": lambda a: _telemetry().serve_collector(int(a[0])),
}


def _telemetry() -> Any:
    """``bench.overhead_telemetry`` (imported late: it imports this module)."""
    from bench import overhead_telemetry

    return overhead_telemetry


# --------------------------------------------------------------------------- orchestration


@dataclass
class Result:
    rps: float
    latency_ms: dict[int, float]
    requests: int
    errors: int


class Procs:
    """Every subprocess started; ``close`` stops them all (SIGINT, then SIGKILL)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Path:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=Path(__file__).resolve().parent.parent,
            )
        self.procs.append((name, proc))
        return log

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Stop one process (SIGINT, then SIGKILL)."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def close(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(
    name: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 15.0
) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise BenchError(f"{name} exited with code {proc.returncode} at start:\n{tail}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise BenchError(f"{name} did not listen on {HOST}:{port} within {timeout_s:g} s (log: {log})")


SERVER_OF = {"a": "upstream", "e": "upstream", "b": "forwarder", "g": "forwarder"}
SERVER_OF |= dict.fromkeys(GATEWAY_PATHS, "gateway") | dict.fromkeys(CACHE_TARGETS, "gateway-cache")


def server_pids(procs: Procs) -> dict[str, int]:
    """The process id of the server behind each target."""
    by_name = {name: proc.pid for name, proc in procs.procs}
    return {key: by_name[name] for key, name in SERVER_OF.items() if name in by_name}


def policy_yaml(upstream_port: int, extra: str = "") -> str:
    return f"""\
providers:
  - name: fake
    kind: openai
    base_url: http://{HOST}:{upstream_port}/v1
    region: us
models:
  - name: {ALIAS}
    provider: fake
    id: {UPSTREAM_MODEL}
{ingress.policy_models("fake")}teams:
  - name: bench
    key_sha256: {hash_key(TEAM_KEY)}
    routes: ["*"]
{extra}"""


def start_servers(procs: Procs, selected: str) -> dict[str, str]:
    """Start the upstream and what ``selected`` needs; the URL of each target."""
    me = [sys.executable, "-m", "bench.overhead"]
    upstream_port = free_port()
    log = procs.start("upstream", [*me, "_upstream", str(upstream_port)])
    wait_ready("fake upstream", upstream_port, procs.procs[-1][1], log)
    urls = {
        "a": f"http://{HOST}:{upstream_port}{PATH}",
        "e": f"http://{HOST}:{upstream_port}{ingress.EMBED_PATH}",
    }
    if "b" in selected or "g" in selected:  # one forwarder serves (b) and (g)
        port = free_port()
        upstream_base = f"http://{HOST}:{upstream_port}"
        log = procs.start("forwarder", [*me, "_forwarder", str(port), upstream_base])
        wait_ready("forwarder", port, procs.procs[-1][1], log)
        urls["b"] = f"http://{HOST}:{port}{PATH}"
        urls["g"] = f"http://{HOST}:{port}{ingress.EMBED_PATH}"
    if set(selected) & set(GATEWAY_PATHS):  # one gateway serves (c), (m) and (f)
        chat = start_gateway(procs, upstream_port, [sys.executable, "-m", "gateway"])
        base = chat.removesuffix(PATH)
        urls.update({key: f"{base}{path}" for key, path in GATEWAY_PATHS.items()})
    if set(selected) & set(CACHE_TARGETS):  # one gateway with the cache and Redis: (h), (u)
        redis_url = _telemetry().start_redis(procs)
        chat = start_gateway(
            procs,
            upstream_port,
            [sys.executable, "-m", "gateway"],
            name="gateway-cache",
            extra_policy=cached.policy_cache_section(),
            extra_env=cached.gateway_env(redis_url),
        )
        urls.update(dict.fromkeys(CACHE_TARGETS, chat))
    return {k: v for k, v in urls.items() if k in selected}


def start_gateway(
    procs: Procs,
    upstream_port: int,
    launcher: list[str],
    *,
    name: str = "gateway",
    extra_policy: str = "",
    extra_env: dict[str, str] | None = None,
) -> str:
    config = procs.workdir / f"{name}.yaml"
    config.write_text(policy_yaml(upstream_port, extra_policy), encoding="utf-8")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_LOG_LEVEL"] = "WARNING"
    env.update(extra_env or {})
    cmd = [*launcher, "serve", "--config", str(config), "--host", HOST, "--port", str(port)]
    log = procs.start(name, cmd, env)
    # The cache's gateway loads the embedder before it listens.
    wait_ready(name, port, procs.procs[-1][1], log, 120.0 if extra_env else 15.0)
    return f"http://{HOST}:{port}{PATH}"


async def _check(urls: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        for key, url in urls.items():
            body, headers = REQUESTS[key]
            if key == "h" and (verdict := await cached.check_hit(url, body, headers)) != "hit":
                raise BenchError(f"(h) is not answered from the cache: x-gateway-cache {verdict}")
            expected = FAKE_CONTENT
            if key == "u":
                body = cached.unique_body(json.loads(body), os.getpid(), 0)
                expected = cached.unique_answer(body.encode()) or ""
            async with session.post(url, data=body, headers=headers) as response:
                text = await response.text()
                status = response.status
            if status != 200 or not ingress.answer_ok(key, text, expected):
                raise BenchError(
                    f"correctness check failed for {LABELS[key]} ({url}): HTTP {status}, "
                    f"expected 200 with the fake's content in the client's shape; "
                    f"body: {text[:400]}"
                )


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
            cmd = [sys.executable, "-m", "bench.overhead", "_loadgen", url, str(duration)]
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
            asyncio.run(_check(urls))
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
                    began = _telemetry().cpu_seconds(pids[key])
                    metrics_url = url.removesuffix(PATH) + "/metrics"
                    if key in CACHE_TARGETS:
                        before = asyncio.run(cached.counters(metrics_url))
                    results[key] = loadgen.run(url, conns, args.duration, key)
                    if conns == args.connections:  # the server's CPU time per request
                        spent = _telemetry().cpu_seconds(pids[key]) - began
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
    _telemetry().add_arguments(parser)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ROLES:
        with contextlib.suppress(KeyboardInterrupt):
            ROLES[argv[0]](argv[1:])
        return 0
    try:
        args = parse_args(argv)
        if args.telemetry:
            _telemetry().check_tools()
            return int(_telemetry().run(args))
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
