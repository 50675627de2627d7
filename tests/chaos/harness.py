"""The chaos run: a seeded fault schedule over loopback fakes in three regions, a Redis that is
killed and restarted, a Qdrant that is not there, four teams with different residency, streaming
and non-streaming requests; then the invariants, counted from what clients and fakes saw.

Every prompt carries a tag, ``[team:<name>|regions:<r1,r2>]``, naming its team and the regions it
may be sent to. The fakes answer ``Ok`` with that tag echoed, so a cached answer served to another
team (or another residency scope) shows in its text, and every request a fake received says by
its tag whether that fake's region was allowed. Used by ``tests/chaos/test_chaos.py`` (CI size)
and ``bench/chaos.py`` (>= 5,000 requests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.api.app import create_app
from gateway.cli.localmodel import free_port
from gateway.policy.model import Policy, hash_key
from gateway.policy.settings import Settings
from tests.conftest import RedisServer
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import (
    Behaviour,
    Blocked,
    CutStream,
    Drop,
    Fail,
    FakeProvider,
    Hang,
    Malformed,
    Ok,
    RecordedRequest,
)
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI

TAG = re.compile(r"\[team:([a-z]+)\|regions:([a-z,]+)\]")
TEAMS: dict[str, list[str] | None] = {  # team -> allowed regions (None: any)
    "global": None,
    "eu": ["eu"],
    "onprem": ["onprem"],
    "euop": ["eu", "onprem"],
}
ALL_REGIONS = ["us", "eu", "onprem"]
QUESTIONS = [
    "How do I reset my password?",
    "What is the refund window for annual plans?",
    "Summarise the travel policy for trains.",
    "Which laptop models can engineers order?",
    "How many days of parental leave are there?",
    "Where do I file an expense report?",
    "Who approves access to the finance share?",
    "What is the on-call rota for the payments team?",
]
PROVIDER_TIMEOUTS = {"connect": 0.5, "first_byte": 0.8, "total": 5.0}
HANG_S = 3.0
PHASES = ["redis up", "redis down", "redis back"]  # indexed by the events so far
SLACK_S = 1.0  # event-loop and scheduling lag on a shared two-core machine


def key_for(team: str) -> str:
    return f"sk-chaos-{team}-0123456789"


class _EchoTag:
    """A fake mixin: a normal answer repeats the prompt's tag, proving whose answer it is."""

    async def record(self, request: web.Request) -> tuple[Any, Behaviour]:
        body, behaviour = await super().record(request)  # type: ignore[misc]
        if isinstance(behaviour, Ok):
            found = TAG.search(orjson.dumps(body).decode())
            tag = found.group(0) if found else "[untagged]"
            behaviour = dataclasses.replace(behaviour, text=f"{tag} Here is the answer.")
        return body, behaviour


class ChaosOpenAI(_EchoTag, FakeOpenAI):
    pass


class ChaosAnthropic(_EchoTag, FakeAnthropic):
    pass


class ChaosGemini(_EchoTag, FakeGemini):
    pass


class ChaosOllama(_EchoTag, FakeOllama):
    pass


def make_fakes() -> dict[str, FakeProvider]:
    """Provider name -> fake; the name ends in the fake's region."""
    return {
        "gpt-us": ChaosOpenAI(region="us"),
        "claude-us": ChaosAnthropic(region="us"),
        "gpt-eu": ChaosOpenAI(region="eu"),
        "gemini-eu": ChaosGemini(region="eu"),
        "ollama-onprem": ChaosOllama(region="onprem"),
    }


def world(
    fakes: dict[str, FakeProvider],
    *,
    timeouts: dict[str, float] | None = None,
    on_drift: str | None = None,
) -> dict[str, Any]:
    """The chaos world as a policy document: the fakes as providers (their own regions), one
    model each, the route ``main`` over all five and the teams of ``TEAMS``. ``timeouts`` and
    ``on_drift`` (for the two OpenAI models) are left to the gateway's defaults when ``None``."""
    kinds: dict[type[FakeProvider], str] = {
        ChaosOpenAI: "openai",
        ChaosAnthropic: "anthropic",
        ChaosGemini: "gemini",
    }
    providers = []
    for name, fake in fakes.items():
        kind = kinds.get(type(fake), "ollama")
        base = fake.api_base if isinstance(fake, FakeOpenAI) else fake.base_url
        providers.append(
            {
                "name": name,
                "kind": kind,
                "base_url": base,
                "region": fake.region,
                **({"timeouts": timeouts} if timeouts is not None else {}),
                **({"api_key_env": "CHAOS_KEY"} if kind != "ollama" else {}),
            }
        )
    drift = {"on_drift": on_drift} if on_drift is not None else {}
    models = [
        {"name": "gpt", "provider": "gpt-us", "id": "gpt-4o-mini-2024-07-18", **drift},
        {"name": "claude", "provider": "claude-us", "id": "claude-sonnet-4-20250514"},
        {"name": "gpt-eu", "provider": "gpt-eu", "id": "gpt-4o-mini-2024-07-18", **drift},
        {"name": "gemini", "provider": "gemini-eu", "id": "gemini-2.0-flash-001"},
        {"name": "qwen", "provider": "ollama-onprem", "id": "qwen2.5:7b-instruct-q4_K_M"},
    ]
    return {
        "providers": providers,
        "models": models,
        "routes": [{"name": "main", "candidates": ["gpt", "claude", "gpt-eu", "gemini", "qwen"]}],
        "teams": [
            {"name": team, "key_sha256": hash_key(key_for(team)), "routes": ["*"]}
            | ({"regions": regions} if regions else {})
            for team, regions in TEAMS.items()
        ],
    }


def chaos_policy(fakes: dict[str, FakeProvider]) -> Policy:
    return Policy.model_validate(
        {
            **world(fakes, timeouts=PROVIDER_TIMEOUTS, on_drift="fail_over"),
            "routing": {
                "max_attempts": 3,
                "max_deadline_s": 10,
                "breaker": {
                    "consecutive_failures": 3,
                    "window_s": 5,
                    "min_requests": 5,
                    "open_s": 0.5,
                    "max_open_s": 2,
                },
            },
            "cache": {"static_threshold": 0.9},
            "knowledge": {"collection": "chaos-kb", "retry_after_s": 1},
        }
    )


FAULTS: list[Behaviour] = [
    Fail(503),  # outage
    Drop(),  # outage: connection reset before a byte
    Fail(429, retry_after=1.0),  # 429 storm with Retry-After
    Hang(HANG_S),  # past the providers' first-byte timeout
    CutStream(),  # mid-stream cut
    Malformed(),  # HTTP 200, not the provider's format
    Blocked(),  # moderation / safety block
    Ok(served_model="swapped-model-2099-01-01"),  # version swap
]


def fault_schedule(rng: random.Random, fakes: list[str], steps: int) -> list[tuple[str, Behaviour]]:
    """``steps`` (provider, new default behaviour) changes, at most two providers faulty at once;
    faults are drawn from a shuffled bag, so every kind comes up in every ``len(FAULTS)``."""
    faulty: set[str] = set()
    bag: list[Behaviour] = []
    schedule: list[tuple[str, Behaviour]] = []
    for _ in range(steps):
        if faulty and (len(faulty) >= 2 or rng.random() < 0.45):
            name = rng.choice(sorted(faulty))
            faulty.discard(name)
            schedule.append((name, Ok()))
            continue
        if not bag:
            bag = rng.sample(FAULTS, len(FAULTS))
        fault = bag.pop()
        eligible = [
            f
            for f in fakes
            if f not in faulty and not (isinstance(fault, Blocked) and f.startswith("ollama"))
        ]  # Ollama has no moderation layer
        name = rng.choice(eligible)
        faulty.add(name)
        schedule.append((name, fault))
    return schedule


def fault_name(behaviour: Behaviour) -> str:
    if isinstance(behaviour, Fail):
        return f"Fail{behaviour.status}"
    if isinstance(behaviour, Ok):
        return "VersionSwap" if behaviour.served_model else "Heal"
    return type(behaviour).__name__


@dataclass
class Tally:
    """What the run saw; ``violations`` must all be zero."""

    requests: int = 0
    answered: int = 0
    streamed: int = 0
    stream_errors: int = 0  # streams ended by an error event after content
    errors: Counter[str] = field(default_factory=Counter)  # "status code" -> count
    cache_hits: int = 0
    lost: list[str] = field(default_factory=list)
    cross_team_hits: list[str] = field(default_factory=list)
    residency_violations: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    max_overshoot_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    upstream_calls: int = 0
    events: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)
    errors_by_phase: Counter[str] = field(default_factory=Counter)

    def clock(self) -> str:
        return f"{time.monotonic() - self.began:.1f} s"

    def violations(self) -> dict[str, int]:
        return {
            "lost": len(self.lost),
            "cross_team_hits": len(self.cross_team_hits),
            "residency_violations": len(self.residency_violations),
            "late": len(self.late),
        }

    def lines(self) -> list[str]:
        lat = sorted(self.latencies) or [0.0]
        pct = {p: lat[min(len(lat) - 1, int(len(lat) * p / 100))] for p in (50, 99)}
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none"
        faults = ", ".join(f"{k}: {v}" for k, v in sorted(self.faults.items()))
        return [
            f"requests {self.requests} ({self.streamed} streamed), answered {self.answered}, "
            f"errors {sum(self.errors.values())}, stream error events {self.stream_errors}",
            f"errors by status and code: {errors}",
            "errors by phase: " + ", ".join(f"{k}: {v}" for k, v in self.errors_by_phase.items()),
            f"cache hits {self.cache_hits}; upstream calls {self.upstream_calls}",
            f"faults applied: {faults}",
            f"events: {'; '.join(self.events)}",
            f"latency p50 {pct[50] * 1000:.0f} ms, p99 {pct[99] * 1000:.0f} ms; "
            f"max past deadline {self.max_overshoot_s * 1000:.0f} ms (slack {SLACK_S * 1000:.0f})",
            "violations: " + ", ".join(f"{k} {v}" for k, v in self.violations().items()),
        ]


def allowed(tag_regions: str) -> set[str]:
    return set(tag_regions.split(","))


def check_residency(fakes: dict[str, FakeProvider], tally: Tally) -> None:
    """Every request a fake received was allowed in that fake's region (by its prompt's tag)."""
    for name, fake in fakes.items():
        requests: list[RecordedRequest] = fake.requests
        tally.upstream_calls += len(requests)
        for recorded in requests:
            found = TAG.search(orjson.dumps(recorded.body).decode())
            if found is None or fake.region not in allowed(found.group(2)):
                tally.residency_violations.append(f"{name} ({fake.region}) got {found}")


async def _ask(session: aiohttp.ClientSession, url: str, rng: random.Random, tally: Tally) -> None:
    team = rng.choice(list(TEAMS))
    regions = TEAMS[team] or ALL_REGIONS
    if len(regions) > 1 and rng.random() < 0.25:  # narrow with x-gateway-regions
        regions = [rng.choice(regions)]
    tag = f"[team:{team}|regions:{','.join(sorted(regions))}]"
    stream = rng.random() < 0.4
    deadline_s = rng.choice([2.0, 3.0, 5.0])
    headers = {
        "Authorization": f"Bearer {key_for(team)}",
        "x-gateway-deadline-ms": str(int(deadline_s * 1000)),
    }
    if TEAMS[team] is None or regions != TEAMS[team]:
        headers["x-gateway-regions"] = ",".join(regions)
    body = {
        "model": "main",
        "messages": [{"role": "user", "content": f"{tag} {rng.choice(QUESTIONS)}"}],
        "stream": stream,
    }
    tally.requests += 1
    tally.streamed += stream
    label = f"{tag} stream={stream}"
    started = time.monotonic()
    try:
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=deadline_s + 15)
        ) as response:
            text = await response.text()
            status, content_type = response.status, response.content_type
            hit = response.headers.get("x-gateway-cache") == "hit"
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.lost.append(f"{label}: {type(exc).__name__}: {exc}")
        return
    elapsed = time.monotonic() - started
    tally.latencies.append(elapsed)
    tally.max_overshoot_s = max(tally.max_overshoot_s, elapsed - deadline_s)
    if elapsed > deadline_s + SLACK_S:
        tally.late.append(
            f"{label}: {elapsed:.2f} s for a {deadline_s} s deadline ({status}, "
            f"started at {started - tally.began:.1f} s)"
        )
    answer = _judge(status, content_type, text, stream, label, tally)
    if answer is None:
        return
    tally.cache_hits += hit
    found = TAG.search(answer)
    if found is None or found.group(0) != tag:
        tally.cross_team_hits.append(f"{label} (cache hit: {hit}) got {answer[:80]!r}")


def _judge(
    status: int, content_type: str, text: str, stream: bool, label: str, tally: Tally
) -> str | None:
    """The answer's text, or ``None`` after counting a clear error (or a lost request)."""
    if status != 200:
        try:
            error = orjson.loads(text)["error"]
            code, message = error["code"], error["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            tally.lost.append(f"{label}: {status} without an OpenAI error body: {text[:200]!r}")
            return None
        if status == 500 or not message or content_type != "application/json":
            tally.lost.append(f"{label}: unclear error {status} {code}: {message[:200]}")
        where = re.search(r"in the (\w+) stage", message)
        tally.errors[f"{status} {code}" + (f" (in {where.group(1)})" if where else "")] += 1
        tally.errors_by_phase[PHASES[len(tally.events)]] += 1
        return None
    if not stream:
        try:
            answer = orjson.loads(text)["choices"][0]["message"]["content"]
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            tally.lost.append(f"{label}: 200 with a broken body {text[:200]!r}")
            return None
        tally.answered += 1
        return str(answer)
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        tally.lost.append(f"{label}: stream without [DONE]: {text[-200:]!r}")
        return None
    chunks = [orjson.loads(event) for event in events[:-1]]
    if any("error" in chunk for chunk in chunks):
        tally.stream_errors += 1
        tally.errors["200 stream error event"] += 1
        return None
    tally.answered += 1
    return "".join(
        choice["delta"].get("content") or ""
        for chunk in chunks
        for choice in chunk.get("choices", [])
    )


async def run_chaos(
    requests: int,
    *,
    seed: int,
    embedder: Any,
    concurrency: int = 8,
    redis: RedisServer | None = None,
) -> Tally:
    """``requests`` requests under the fault schedule; Redis (if given) dies at 35 %, returns at
    60 %; the knowledge base points at a Qdrant that is not there."""
    rng = random.Random(seed)
    fakes = make_fakes()
    for fake in fakes.values():
        await fake.start()
    settings = Settings(
        redis_url=redis.url if redis else None,
        redis_prefix=f"chaos{seed}",
        qdrant_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
    )
    app = create_app(settings, chaos_policy(fakes), {"CHAOS_KEY": "sk-upstream"}, embedder=embedder)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)  # as `serve` does
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
    step = 15
    schedule = fault_schedule(rng, list(fakes), requests // step + 1)
    tally = Tally()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession, worker_rng: random.Random) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            if i % step == 0:
                name, behaviour = schedule[i // step]
                fakes[name].default = behaviour
                tally.faults[fault_name(behaviour)] += 1
            if redis is not None and i == int(requests * 0.35):
                await asyncio.to_thread(redis.stop)
                tally.events.append(f"redis killed at request {i} ({tally.clock()})")
            if redis is not None and i == int(requests * 0.6):
                await asyncio.to_thread(redis.start)
                tally.events.append(f"redis restarted at request {i} ({tally.clock()})")
            await _ask(session, url, worker_rng, tally)

    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(
                *(worker(session, random.Random(rng.random())) for _ in range(concurrency))
            )
    finally:
        await runner.cleanup()
        for fake in fakes.values():
            await fake.stop()
    tally.faults.pop("Heal", None)
    check_residency(fakes, tally)
    return tally
