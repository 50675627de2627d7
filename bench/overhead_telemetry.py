"""What telemetry costs the hot path: the gateway with telemetry off and on, side by side.

Three gateways run at once on the same fake upstream and the same throwaway ``redis-server``
(Redis also carries breakers, limits and quality state, so all have it configured):

  off:       Prometheus metrics and the in-process decision ring only
             (``GATEWAY_DECISION_STREAM=false``, no decision log, no OTLP endpoint);
  on:        everything: metrics, decision records streamed to Redis (``XADD MAXLEN ~``) and
             appended to a JSON-lines file, OTLP/HTTP traces to a loopback collector (its own
             process), written and exported by the telemetry exporter process (the default);
  on-inproc: the same, written and exported by the gateway itself
             (``GATEWAY_TELEMETRY_PROCESS=false``).

The gateways under test share core 0, pinned; everything else (upstream, collector, Redis, the
load generator, the exporter processes) runs on core 1. Each round starts the gateways afresh
and measures c=1 latency (p50/p99) for each, then saturated throughput (c=N, ``wrk`` or the
Python load generator) in short slices that alternate between them, so noise from the host's
neighbours, which moves one process's speed by up to ~25 % from one minute to the next here,
hits all alike. The figure that counts is each gateway's CPU time per request (user+system from
/proc over all its slices, including its background tasks, read after one more export interval
so the last spans are counted); the exporter process's is printed beside it. The verdict takes
the larger of the ratio of the medians over rounds and the median of the per-round ratios;
target: on within 10 % of off. Then it checks the telemetry really happened (each gateway's
stream length, log lines, spans received).

    python -m bench.overhead --telemetry [--rounds 5] [--slices 8] [--slice 2] [--duration 5]
                                         [--connections 32] [--sample-ratio 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import aiohttp
import redis
import yaml
from aiohttp import web

from bench.overhead_load import LoadGen, Result, machine_context
from bench.overhead_servers import (
    ALIAS,
    HOST,
    PATH,
    REQUEST_BODY,
    UPSTREAM_MODEL,
    WARMUP_S,
    BenchError,
    Procs,
    check_targets,
    free_port,
    policy_yaml,
    wait_ready,
)
from gateway.telemetry.tracing import EXPORT_INTERVAL_S

TARGET_SHARE = 0.10
_COUNT = web.AppKey("count", dict)


def serve_collector(port: int) -> None:
    """A loopback OTLP/HTTP collector: accepts ``/<gateway>/v1/traces`` and counts the exports
    of each gateway."""

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        counts = request.app[_COUNT].setdefault(request.match_info["who"], [0, 0])
        counts[0] += 1
        counts[1] += len(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def count(request: web.Request) -> web.Response:
        return web.json_response(request.app[_COUNT])

    app = web.Application(client_max_size=64 * 1024 * 1024)  # a post is ~160 KB (512 spans)
    app[_COUNT] = {}
    app.router.add_post("/{who}/v1/traces", traces)
    app.router.add_get("/count", count)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(pid: int, helpers: list[int]) -> tuple[float, float]:
    """CPU seconds of a gateway and of its helper processes so far."""
    return cpu_seconds(pid), sum(cpu_seconds(child) for child in helpers)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (the telemetry exporter process)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def start_redis(procs: Procs) -> str:
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    log = procs.start("redis", cmd)
    wait_ready("redis-server", port, procs.procs[-1][1], log)
    return f"redis://{HOST}:{port}/0"


def start_gateway(procs: Procs, name: str, config: Path, env: dict[str, str]) -> tuple[str, int]:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
    cmd += ["--host", HOST, "--port", str(port)]
    log = procs.start(name, cmd, {**base, "GATEWAY_LOG_LEVEL": "WARNING", **env})
    proc = procs.procs[-1][1]
    wait_ready(name, port, proc, log)
    return f"http://{HOST}:{port}{PATH}", proc.pid


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pin(pid: int, cores: set[int]) -> bool:
    """Run ``pid`` (and the threads it starts later) on ``cores`` only; False where unsupported."""
    try:
        os.sched_setaffinity(pid, cores)
    except (AttributeError, OSError):
        return False
    return True


def run(args: argparse.Namespace) -> int:
    # The gateways under test share core 0; everything else (this script, the upstream,
    # collector, Redis and the load generator, which inherit this process's affinity) shares
    # core 1, so the load generator never competes with the gateway it measures.
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pinned = len(cores) >= 2 and pin(0, set(cores[1:]))
    with tempfile.TemporaryDirectory(prefix="gw-bench-telemetry-") as tmp:
        workdir = Path(tmp)
        procs = Procs(workdir)
        loadgen = LoadGen(workdir)
        try:
            print("\n".join(machine_context(loadgen)), flush=True)
            where = f"core {cores[0]}, the rest on {cores[1:]}" if pinned else "not pinned"
            print(f"gateways under test: {where}", flush=True)
            me = [sys.executable, "-m", "bench.overhead_servers"]
            upstream_port = free_port()
            log = procs.start("upstream", [*me, "_upstream", str(upstream_port)])
            wait_ready("fake upstream", upstream_port, procs.procs[-1][1], log)
            collector_port = free_port()
            log = procs.start("collector", [*me, "_collector", str(collector_port)])
            wait_ready("collector", collector_port, procs.procs[-1][1], log)
            redis_url = start_redis(procs)
            config = workdir / "policy.yaml"
            config.write_text(policy_yaml(upstream_port), encoding="utf-8")
            parts = set(args.parts.split(","))
            envs = {
                name: config_env(name, parts, redis_url, workdir, collector_port, args)
                for name in CONFIGS
            }
            c1: dict[str, list[Result]] = {name: [] for name in envs}
            cn: dict[str, list[Result]] = {name: [] for name in envs}
            cpu: dict[str, list[float]] = {name: [] for name in envs}
            side: dict[str, list[float]] = {name: [] for name in envs}  # the exporter's CPU
            for round_ in range(1, args.rounds + 1):
                targets = {
                    name: start_gateway(procs, f"gateway-{name}-{round_}", config, env)
                    for name, env in envs.items()
                }
                helpers = {name: children(pid) for name, (_, pid) in targets.items()}
                if pinned:
                    for name, (_, pid) in targets.items():
                        pin(pid, {cores[0]})
                        for child in helpers[name]:  # off the gateways' core, with the rest
                            pin(child, set(cores[1:]))
                if round_ == 1:
                    for url, _ in targets.values():
                        asyncio.run(check_targets({"c": url}))
                    print("correctness: every gateway answers 200 with the fake's content")
                shift = round_ % len(CONFIGS)
                order = CONFIGS[shift:] + CONFIGS[:shift]
                for name in order:
                    url, pid = targets[name]
                    print(f"  round {round_}: telemetry {name} ...", flush=True)
                    loadgen.run(url, args.connections, WARMUP_S)
                    c1[name].append(loadgen.run(url, 1, args.duration))
                # Saturated: short slices, alternating, so all see the same neighbours' noise.
                # CPU is each process's total over all the slices (its background exports
                # included, wherever they ran), per request it served.
                before = {name: cpu_now(pid, helpers[name]) for name, (_, pid) in targets.items()}
                served = {name: [0, 0.0, 0] for name in targets}  # requests, seconds, errors
                for i in range(args.slices):
                    for name in order if i % 2 == 0 else order[::-1]:
                        result = loadgen.run(targets[name][0], args.connections, args.slice)
                        served[name][0] += result.requests
                        served[name][1] += result.requests / result.rps if result.rps else 0.0
                        served[name][2] += result.errors
                time.sleep(EXPORT_INTERVAL_S + 0.5)  # the last spans are exported
                for name in targets:
                    requests, seconds, errors = served[name]
                    cn[name].append(Result(requests / seconds, {}, requests, errors))
                    own, child = cpu_now(targets[name][1], helpers[name])
                    own0, child0 = before[name]
                    cpu[name].append((own - own0) / max(1, requests) * 1e6)
                    side[name].append((child - child0) / max(1, requests) * 1e6)
                for _, proc in procs.procs[-len(targets) :]:
                    procs.stop(proc)
            print("\n".join(report(c1, cn, cpu, side, args)))
            print("\n".join(evidence(redis_url, workdir, collector_port, parts)))
            print("\n".join(components(redis_url, workdir)))
        finally:
            procs.close()
    return 0


CONFIGS = ["off", "on", "on-inproc"]
DESCRIBED = {
    "off": "metrics and the in-process ring only",
    "on": "telemetry on, written by the exporter process (the default)",
    "on-inproc": "telemetry on, written by the gateway itself (GATEWAY_TELEMETRY_PROCESS=false)",
}


def config_env(
    name: str,
    parts: set[str],
    redis_url: str,
    workdir: Path,
    collector_port: int,
    args: argparse.Namespace,
) -> dict[str, str]:
    """A gateway's environment: each has its own stream, log and collector path (evidence)."""
    env = {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_PREFIX": f"bench-{name}"}
    if name == "off":
        return {**env, "GATEWAY_DECISION_STREAM": "false"}
    env["GATEWAY_DECISION_STREAM"] = str("stream" in parts)
    env["GATEWAY_TELEMETRY_PROCESS"] = str(name == "on")
    if "log" in parts:
        env["GATEWAY_DECISION_LOG"] = str(workdir / f"decisions-{name}.jsonl")
    if "traces" in parts:
        env["GATEWAY_OTLP_ENDPOINT"] = f"http://{HOST}:{collector_port}/{name}/v1/traces"
        env["GATEWAY_OTLP_SAMPLE_RATIO"] = str(args.sample_ratio)
    return env


def report(
    c1: dict[str, list[Result]],
    cn: dict[str, list[Result]],
    cpu: dict[str, list[float]],
    side: dict[str, list[float]],
    args: argparse.Namespace,
) -> list[str]:
    rows: dict[str, dict[str, float]] = {}
    for name in cpu:
        rows[name] = {
            "p50": _median([r.latency_ms[50] for r in c1[name]]),
            "p99": _median([r.latency_ms[99] for r in c1[name]]),
            "rps": _median([r.rps for r in cn[name]]),
            "cpu": _median(cpu[name]),
            "side": _median(side[name]),
        }
    lines = [
        "",
        f"medians over {args.rounds} rounds ({args.duration:g} s at c=1; {args.slices} x "
        f"{args.slice:g} s slices at c={args.connections}); 'on': {args.parts}"
        + (f", {args.sample_ratio:.0%} of requests traced" if "traces" in args.parts else ""),
        *(f"  {name:<10} {DESCRIBED[name]}" for name in rows),
        f"{'telemetry':<12}{'p50 ms c=1':>12}{'p99 ms c=1':>12}"
        f"{f'req/s c={args.connections}':>14}{'CPU us/req':>12}{'exporter':>10}",
    ]
    for name, row in rows.items():
        lines.append(
            f"{name:<12}{row['p50']:>12.3f}{row['p99']:>12.3f}{row['rps']:>14.0f}"
            f"{row['cpu']:>12.0f}{row['side']:>10.0f}"
        )
    off = rows["off"]
    for name in [n for n in rows if n != "off"]:
        on = rows[name]
        # Per round, 'off' and 'on' ran interleaved in the same minutes; across rounds the
        # host's speed drifts (here by up to ~25 %): the paired ratio is the steadier figure,
        # and the verdict needs both.
        paired = _median([b / a - 1 for a, b in zip(cpu["off"], cpu[name], strict=True)])
        checks = {
            "p50 latency": on["p50"] / off["p50"] - 1,
            "throughput": 1 - on["rps"] / off["rps"],
            "CPU per request": max(on["cpu"] / off["cpu"] - 1, paired),
        }
        lines.append("")
        lines.append(f"{name}: the gateway process against 'off'")
        for label, cost in checks.items():
            verdict = "MET" if cost <= TARGET_SHARE else "MISSED"
            lines.append(
                f"  telemetry cost, {label:<16}{cost * 100:+7.1f} %   target <= "
                f"{TARGET_SHARE * 100:.0f} %: {verdict}"
            )
        lines.append(
            f"  CPU per request: ratio of medians {on['cpu'] / off['cpu'] - 1:+.1%}, median of "
            f"per-round ratios {paired:+.1%} (the verdict takes the larger)"
        )
        if on["side"]:
            total = (on["cpu"] + on["side"]) / off["cpu"] - 1
            lines.append(
                f"  plus the exporter process: {on['side']:.0f} us/req on another core; "
                f"both processes together {total:+.1%} against 'off'"
            )
        per_round = [f"{a.rps:.0f}/{b.rps:.0f}" for a, b in zip(cn["off"], cn[name], strict=True)]
        lines.append(f"  req/s off/{name} per round: {', '.join(per_round)}")
        per_round = [f"{a:.0f}/{b:.0f}" for a, b in zip(cpu["off"], cpu[name], strict=True)]
        lines.append(f"  CPU us/req off/{name} per round: {', '.join(per_round)}")
    errors = {n: sum(r.errors for r in c1[n] + cn[n]) for n in rows}
    if any(errors.values()):
        lines.append(f"WARNING: non-2xx or socket errors during load: {errors}")
    return lines


def evidence(redis_url: str, workdir: Path, collector_port: int, parts: set[str]) -> list[str]:
    """Proof that each 'on' gateway did its telemetry work during the run."""

    async def spans() -> dict[str, list[int]]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{HOST}:{collector_port}/count") as response,
        ):
            found: dict[str, list[int]] = await response.json()
            return found

    received = asyncio.run(spans())
    client = redis.Redis.from_url(redis_url)
    found = []
    try:
        for name in CONFIGS[1:]:
            streamed = client.xlen(f"bench-{name}:decisions")
            log = workdir / f"decisions-{name}.jsonl"
            lines = sum(1 for _ in log.open("rb")) if log.exists() else 0
            exports, size = received.get(name, [0, 0])
            got = {"stream": streamed, "log": lines, "traces": exports}
            if not all(got[part] for part in parts):
                raise BenchError(f"{name}: telemetry did not happen: {got}")
            found.append(
                f"evidence ({name}): {streamed} records in the Redis stream (MAXLEN ~ 10000), "
                f"{lines} JSON lines in the log, {exports} OTLP exports ({size} bytes)"
            )
    finally:
        client.close()
    return found


def components(redis_url: str, workdir: Path, count: int = 5000) -> list[str]:
    """CPU per request of each telemetry part, in-process (``time.process_time``: the least
    noisy figure on a shared machine), for a decision like the bench's request makes."""
    from gateway.core.background import tune_gc
    from gateway.core.decision import Attempt, CandidateVerdict, Decision
    from gateway.policy.model import Policy
    from gateway.policy.settings import Settings
    from gateway.telemetry.decision_store import DecisionSinks
    from gateway.telemetry.otlp import OTLPHttpExporter
    from gateway.telemetry.tracing import Tracing
    from providers.schema import ChatRequest

    tune_gc(Settings().gc_gen0_threshold)  # as the gateway does at start-up
    body = json.loads(REQUEST_BODY)
    chat = ChatRequest.from_body(body)
    policy = Policy.model_validate(yaml.safe_load(policy_yaml(1)))

    def decision(i: int) -> Decision:
        made = Decision(request_id=f"{i:032x}", team="bench", route=ALIAS, task_type="general")
        made.candidates = [CandidateVerdict(ALIAS, "fake", "us", True, "priority 1")]
        made.attempts = [Attempt(ALIAS, "fake", "us", "ok", 1.2, served_model=UPSTREAM_MODEL)]
        made.served_by, made.served_model = ALIAS, UPSTREAM_MODEL
        made.total_ms, made.upstream_ms, made.overhead_ms = 1.6, 1.2, 0.4
        made.prompt_tokens, made.completion_tokens, made.ended_at = 24, 8, time.time()
        made.messages = body["messages"]
        return made

    class Sink(OTLPHttpExporter):
        """The OTLP exporter minus the HTTP post."""

        async def export(self, data: bytes) -> bool:
            return True

    tracing = Tracing(Sink("http://127.0.0.1:9/v1/traces"))
    figures: dict[str, float] = {}

    def timed(name: str, work: Any) -> None:
        began = time.process_time()
        work()
        figures[name] = (time.process_time() - began) / count * 1e6

    decisions = [decision(i) for i in range(count)]
    timed(
        "trace queued (request path)",
        lambda: [tracing.record(policy, d, chat, {}) for d in decisions],
    )
    handing = Tracing(None, link=cast(Any, "the exporter process"))  # record() only queues
    timed(
        "trace queued as span data (ditto)",
        lambda: [handing.record(policy, d, chat, {}) for d in decisions],
    )
    timed("spans encoded (exporter task)", lambda: asyncio.run(tracing.flush()))
    timed("record JSON (writer task)", lambda: [d.to_json() for d in decisions])

    async def sinks() -> None:
        sink = DecisionSinks(
            redis_url=redis_url, prefix=f"bench-{uuid.uuid4().hex[:6]}", path=workdir / "c.jsonl"
        )
        await sink.start()
        batches = [decisions[i : i + 256] for i in range(0, count, 256)]
        blobs = [b"".join([d.to_json() + b"\n" for d in batch]) for batch in batches]
        began = time.process_time()
        for batch, blob in zip(batches, blobs, strict=True):
            await sink._xadd("".join([f"{d.request_id}\n" for d in batch]), blob)
        figures["redis stream (writer task)"] = (time.process_time() - began) / count * 1e6
        began = time.process_time()
        for blob in blobs:
            sink._append(blob)
        figures["JSON-lines file (writer thread)"] = (time.process_time() - began) / count * 1e6
        await sink.close()

    asyncio.run(sinks())
    lines = [f"in-process CPU per request, {count} decisions:"]
    lines += [f"  {name:<34}{value:>7.1f} us" for name, value in figures.items()]
    handed = "trace queued as span data (ditto)"
    gateway_side = figures[handed] + figures["record JSON (writer task)"]
    in_process = sum(v for name, v in figures.items() if name != handed)
    lines.append(f"  {'the gateway, telemetry in-process':<34}{in_process:>7.1f} us")
    lines.append(f"  {'the gateway, with the exporter':<34}{gateway_side:>7.1f} us")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--telemetry",
        action="store_true",
        help="compare the gateway with telemetry off and on (bench/overhead_telemetry.py)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="--telemetry: rounds")
    parser.add_argument(
        "--parts",
        default="stream,log,traces",
        help="--telemetry: what 'on' turns on (default all: stream,log,traces)",
    )
    parser.add_argument(
        "--slices", type=int, default=8, help="--telemetry: saturated slices per gateway and round"
    )
    parser.add_argument(
        "--slice", type=float, default=2.0, help="--telemetry: seconds per saturated slice"
    )
    parser.add_argument(
        "--sample-ratio", type=float, default=1.0, help="--telemetry: share of requests traced"
    )


def check_tools() -> None:
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        raise BenchError("--telemetry needs redis-server (apt-get install redis-server)")
