"""The flapping run: short faults, one model at a time, rotating through the fault kinds.

What a new user sees when providers come and go: every ``FAULT_S`` seconds the next provider (in
turn) takes the next fault kind — 503s, a 429 storm, a hang, streams cut mid-way — and heals when
its time is up. The policy is the gateway's defaults (breakers, timeouts, attempts), so that what
the run measures is what a fresh install does. Each request is judged against the fault timeline:
was at least one of its allowed candidates healthy for its whole life? Availability is reported
over all requests and over those, with streams cut after their first content counted apart (no
router can save them). Used by ``python -m bench.chaos --schedule flapping``.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway.api.app import create_app
from gateway.policy.model import Policy
from gateway.policy.settings import Settings
from tests.chaos.harness import (
    ALL_REGIONS,
    QUESTIONS,
    SLACK_S,
    TEAMS,
    Tally,
    _judge,
    check_residency,
    key_for,
    make_fakes,
    world,
)
from tests.fakes.base import Behaviour, CutStream, Fail, FakeProvider, Hang, Ok

FAULT_S = 3.0  # each fault lasts this long
GAP_S = 1.0  # then every provider is healthy for this long
KINDS: list[tuple[str, Behaviour]] = [
    ("503", Fail(503)),
    ("429 storm", Fail(429, retry_after=2.0)),
    ("hang", Hang(60.0)),
    ("mid-stream cut", CutStream()),
]
DEADLINES_S = [3.0, 5.0]


def flapping_policy(fakes: dict[str, FakeProvider]) -> Policy:
    """The chaos world's providers and teams under the gateway's default routing settings."""
    return Policy.model_validate(world(fakes))


@dataclass
class FlapTally:
    """Per request: status, whether a healthy candidate was allowed, cut after content, time."""

    base: Tally = field(default_factory=Tally)
    outcomes: list[tuple[bool, bool, bool]] = field(default_factory=list)  # ok, healthy, cut
    timeline: list[tuple[str, str, float, float]] = field(default_factory=list)
    current: dict[str, float] = field(default_factory=dict)  # provider -> fault began
    regions: dict[str, str] = field(default_factory=dict)  # provider -> region
    failures: list[str] = field(default_factory=list)

    def faulty(self, start: float, end: float) -> set[str]:
        """Providers under a fault at any time between ``start`` and ``end``."""
        done = {name for name, _, on, off in self.timeline if on < end and off > start}
        return done | {name for name, on in self.current.items() if on < end}

    def availability(self) -> dict[str, tuple[int, int]]:
        kept = [(ok, healthy) for ok, healthy, cut in self.outcomes if not cut]
        return {
            "all": (sum(ok for ok, _ in kept), len(kept)),
            "healthy candidate allowed": (
                sum(ok for ok, healthy in kept if healthy),
                sum(1 for _, healthy in kept if healthy),
            ),
        }

    def lines(self) -> list[str]:
        lines = []
        for name, (ok, total) in self.availability().items():
            share = 100 * ok / total if total else 100.0
            lines.append(f"availability ({name}): {ok}/{total} = {share:.2f} %")
        cuts = sum(1 for _, _, cut in self.outcomes if cut)
        lines.append(f"streams cut after first content (apart): {cuts}")
        return lines + self.base.lines()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return


async def _flap(fakes: dict[str, FakeProvider], tally: FlapTally, stop: asyncio.Event) -> None:
    names = list(fakes)
    step = 0
    while not stop.is_set():
        name = names[step % len(names)]
        # Kinds rotate against providers so that every provider meets every kind.
        label, fault = KINDS[(step + step // len(names)) % len(KINDS)]
        fakes[name].default = fault
        began = time.monotonic()
        tally.current[name] = began
        tally.base.faults[label] += 1
        await _sleep_unless(stop, FAULT_S)
        fakes[name].default = Ok()
        del tally.current[name]
        tally.timeline.append((name, label, began, time.monotonic()))
        await _sleep_unless(stop, GAP_S)
        step += 1


async def _ask(
    session: aiohttp.ClientSession, url: str, rng: random.Random, tally: FlapTally, n: int
) -> None:
    base = tally.base
    team = rng.choice(list(TEAMS))
    regions = TEAMS[team] or ALL_REGIONS
    tag = f"[team:{team}|regions:{','.join(sorted(regions))}]"
    stream = rng.random() < 0.4
    deadline_s = rng.choice(DEADLINES_S)
    headers = {
        "Authorization": f"Bearer {key_for(team)}",
        "x-gateway-deadline-ms": str(int(deadline_s * 1000)),
    }
    body = {
        "model": "main",
        "messages": [{"role": "user", "content": f"{tag} #{n} {rng.choice(QUESTIONS)}"}],
        "stream": stream,
    }
    base.requests += 1
    base.streamed += stream
    started = time.monotonic()
    label = f"{tag} stream={stream}"
    try:
        async with session.post(
            url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=deadline_s + 15)
        ) as response:
            text = await response.text()
            status, content_type = response.status, response.content_type
    except (aiohttp.ClientError, TimeoutError) as exc:
        base.lost.append(f"{label}: {type(exc).__name__}: {exc}")
        return
    ended = time.monotonic()
    elapsed = ended - started
    base.latencies.append(elapsed)
    base.max_overshoot_s = max(base.max_overshoot_s, elapsed - deadline_s)
    if elapsed > deadline_s + SLACK_S:
        base.late.append(f"{label}: {elapsed:.2f} s for a {deadline_s} s deadline ({status})")
    cuts_before = base.stream_errors
    answer = _judge(status, content_type, text, stream, label, base)
    cut = base.stream_errors > cuts_before
    allowed = {name for name, region in tally.regions.items() if region in regions}
    healthy = bool(allowed - tally.faulty(started, ended))
    tally.outcomes.append((answer is not None, healthy, cut))
    if answer is None and not cut and healthy and len(tally.failures) < 20:
        tally.failures.append(f"{label} {status} after {elapsed:.1f} s: {text[:300]}")


async def run_flapping(
    requests: int, *, seed: int, concurrency: int = 8, rate: float = 40.0
) -> FlapTally:
    """``requests`` requests (``rate`` a second) while the faults flap; the fakes' view checks
    residency."""
    rng = random.Random(seed)
    fakes = make_fakes()
    for fake in fakes.values():
        await fake.start()
    tally = FlapTally(regions={name: fake.region for name, fake in fakes.items()})
    app = create_app(Settings(), flapping_policy(fakes), {"CHAOS_KEY": "sk-upstream"})
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)  # as `serve` does
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
    stop = asyncio.Event()
    flapper = asyncio.create_task(_flap(fakes, tally, stop))
    counter = iter(range(requests))
    began = time.monotonic()

    async def worker(session: aiohttp.ClientSession, worker_rng: random.Random) -> None:
        # Paced at ``rate`` a second whatever the answers take, so that runs of different code
        # meet the same fault timeline (fast errors do not end a run early).
        for n in counter:
            await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
            await _ask(session, url, worker_rng, tally, n)

    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(
                *(worker(session, random.Random(rng.random())) for _ in range(concurrency))
            )
    finally:
        stop.set()
        await flapper
        await runner.cleanup()
        for fake in fakes.values():
            await fake.stop()
    check_residency(fakes, tally.base)
    return tally


async def time_to_answer_with_a_hung_primary(requests: int = 8) -> list[tuple[int, float]]:
    """(status, seconds) of requests on a two-candidate route whose primary hangs, under the
    default policy (30 s deadline, 60 s first-byte timeout)."""
    fakes = make_fakes()
    for fake in fakes.values():
        await fake.start()
    fakes["gpt-us"].default = Hang(120.0)
    policy = flapping_policy(fakes).model_dump()
    policy["routes"] = [{"name": "main", "candidates": ["gpt", "claude"]}]
    app = create_app(Settings(), Policy.model_validate(policy), {"CHAOS_KEY": "sk-upstream"})
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"

    async def one(session: aiohttp.ClientSession, n: int) -> tuple[int, float]:
        started = time.monotonic()
        async with session.post(
            url,
            json={"model": "main", "messages": [{"role": "user", "content": f"hi #{n}"}]},
            headers={"Authorization": f"Bearer {key_for('global')}"},
            timeout=aiohttp.ClientTimeout(total=90),
        ) as response:
            await response.read()
            return response.status, time.monotonic() - started

    try:
        async with aiohttp.ClientSession() as session:
            return list(await asyncio.gather(*(one(session, n) for n in range(requests))))
    finally:
        await runner.cleanup()
        for fake in fakes.values():
            await fake.stop()


def summarize_hung(results: list[tuple[int, float]]) -> str:
    times = [t for _, t in results]
    statuses = ", ".join(
        f"{s}: {sum(1 for x, _ in results if x == s)}" for s in sorted(set(s for s, _ in results))
    )
    return (
        f"hung primary, default policy: {len(results)} requests, statuses {statuses}; "
        f"time to answer p50 {statistics.median(times):.1f} s, max {max(times):.1f} s"
    )
