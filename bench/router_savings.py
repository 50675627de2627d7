"""Savings replay: a mixed workload through the gateway, spend and quality against always-frontier.

    python -m bench.router_savings [--requests 1200] [--seed 0] [--feedback 0.5] [--replicas 2]

A fake OpenAI-compatible upstream serves two models at per-token prices (cheap: $0.15 / $0.60 per
1M input / output tokens, like gpt-4o-mini; frontier: $3 / $15, like Claude Sonnet) and keeps the
bill. Every prompt has a hidden difficulty d; an answer is right when a fixed per-(prompt, model)
draw u in [0, 1) is >= d for the cheap model and >= 0.15 d for the frontier one, so the cheap
model fails hard prompts and the frontier rarely does. The workload (seeded):

- 25 % repeats of earlier prompts (the semantic cache's share),
- 15 % questions on the sample knowledge base (examples/kb/policies, ingested into a scratch
  embedded store: curated FAQ answers cost nothing, other questions get passages attached),
- 60 % fresh prompts of mixed difficulty: easy (greetings, summaries, translations, extraction;
  d 0.05-0.2), medium (explanations, comparisons; d 0.35-0.55), hard (proofs, multi-step maths,
  tricky code; d 0.75-0.95).

The client grades a share (``--feedback``) of its answers through ``POST /v1/feedback`` (1 when
right, 0 when wrong): the tier router's only quality signal here besides the heuristics. Modes:
always-frontier (no cache, no knowledge), always-cheap, frontier with cache + knowledge, the
learned tier router alone, and the gateway with cache + knowledge + the learned tier router
(task-type priors from a few labelled examples, which are not workload prompts). Quality is
the share of right answers over all requests, cached ones included.

With ``--replicas N`` the tier router alone is also replayed on N gateways taking the requests in
turn, on a throwaway ``redis-server``, each learning from its own outcomes or from all of them
(``gateway.tiering.sync``). Also prints the tier decision's own latency (classifier + tier router
with a full outcome memory), beyond the embedding the request computes anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from bench.knowledge import QUESTIONS
from gateway.api.app import create_app
from gateway.policy.model import Policy, hash_key
from gateway.policy.settings import Settings

KEY = "bench-router-key"
ROOT = Path(__file__).resolve().parent.parent
PRICES = {"cheap-1": (0.15, 0.6), "frontier-1": (3.0, 15.0)}
FRONTIER_FAILS = 0.15  # the frontier's error rate relative to the cheap model's difficulty
ANSWER_TOKENS = 180
MODES = ("always-frontier", "always-cheap", "frontier+cache+kb", "tier-router", "gateway")
MAX_FRONTIER_SHARE = 0.6  # the route's one knob

EASY = [
    ("Say a friendly hello to the {team} team for {day}.", (0.05, 0.15)),
    (
        "Summarise in one sentence: the {team} team moved its stand-up to {day} mornings.",
        (0.1, 0.2),
    ),
    ("Translate into French: 'the {team} meeting is on {day}'.", (0.1, 0.2)),
    ("Extract the weekday from: 'ship the {team} release on {day}'.", (0.05, 0.15)),
    ("Is this message positive or negative: 'the {team} demo on {day} was great'?", (0.05, 0.15)),
]
MEDIUM = [
    ("Explain the difference between {a} and {b} to a new engineer.", (0.35, 0.55)),
    ("Compare {a} with {b}: when would you choose each?", (0.35, 0.55)),
    ("Write a short design note on using {a} instead of {b} for our {team} service.", (0.4, 0.55)),
]
HARD = [
    ("Prove that the square root of {n} is irrational, step by step.", (0.8, 0.95)),
    ("A train leaves at {h}:00 at {v} km/h and another at {h2}:30 at {v2} km/h on the same "
     "track; when and where does the second catch up? Show every step.", (0.75, 0.9)),
    ("Write a lock-free {a} queue in C++ and prove it linearizable.", (0.85, 0.95)),
    ("Find all integer solutions of x^2 - {n}y^2 = 1 with y < 100 and justify minimality.",
     (0.8, 0.95)),
]  # fmt: skip
TEAMS = ["billing", "search", "payments", "mobile", "platform", "data", "support", "growth"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
TECH = ["Redis", "Postgres", "Kafka", "gRPC", "REST", "SQLite", "Qdrant", "RabbitMQ", "S3"]
# Labelled task examples for the classifier (not workload prompts): the cold-start priors.
TASK_TYPES = {
    "reasoning": {
        "frontier_gain": 0.3,
        "examples": [
            "Prove that there are infinitely many primes.",
            "Solve this multi-step word problem and show your working.",
            "Prove the algorithm below correct and give its complexity.",
        ],
    },
    "chat": {
        "frontier_gain": 0.0,
        "examples": [
            "Write a short thank-you note to my colleague.",
            "Summarise this paragraph in one line.",
            "Translate this sentence into Spanish.",
        ],
    },
}


@dataclass
class Prompt:
    text: str
    difficulty: float
    kind: str


@dataclass
class Ledger:
    tokens: dict[str, list[int]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def usd(self) -> float:
        return sum((p * PRICES[m][0] + c * PRICES[m][1]) / 1e6 for m, (p, c) in self.tokens.items())


def draw(text: str, model: str) -> float:
    digest = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def right(prompt: Prompt, model: str) -> bool:
    d = prompt.difficulty if model == "cheap-1" else FRONTIER_FAILS * prompt.difficulty
    return draw(prompt.text, model) >= d


def workload(n: int, seed: int) -> list[Prompt]:
    rng = random.Random(seed)
    out: list[Prompt] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.25 and out:
            out.append(rng.choice(out))
            continue
        if roll < 0.40:
            out.append(Prompt(rng.choice(QUESTIONS), 0.1, "knowledge"))
            continue
        kind = rng.choices(["easy", "medium", "hard"], weights=[0.5, 0.25, 0.25])[0]
        template, (low, high) = rng.choice({"easy": EASY, "medium": MEDIUM, "hard": HARD}[kind])
        text = template.format(
            team=rng.choice(TEAMS), day=rng.choice(DAYS), a=rng.choice(TECH),
            b=rng.choice(TECH), n=rng.choice([2, 3, 5, 6, 7, 10, 11, 13]), h=rng.randint(6, 11),
            h2=rng.randint(6, 11), v=rng.randint(60, 120), v2=rng.randint(80, 160),
        )  # fmt: skip
        out.append(Prompt(text, rng.uniform(low, high), kind))
    return out


def upstream(truth: dict[str, Prompt], ledger: Ledger) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        model = body["model"]
        question = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        prompt_tokens = sum(len(str(m["content"])) for m in body["messages"]) // 4 + 8
        prompt = truth.get(question)
        ok = prompt is not None and right(prompt, model)
        tokens = ledger.tokens.setdefault(model, [0, 0])
        tokens[0] += prompt_tokens
        tokens[1] += ANSWER_TOKENS
        ledger.calls[model] = ledger.calls.get(model, 0) + 1
        return web.json_response(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": f"{'ok' if ok else 'bad'}: {model} answers. " * 8,
                        },
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": ANSWER_TOKENS,
                    "total_tokens": prompt_tokens + ANSWER_TOKENS,
                },
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def policy(base_url: str, mode: str, share: float = MAX_FRONTIER_SHARE) -> Policy:
    models = [
        {"name": "cheap", "provider": "fake", "id": "cheap-1", "tier": "cheap",
         "price": {"input": PRICES["cheap-1"][0], "output": PRICES["cheap-1"][1]}},
        {"name": "frontier", "provider": "fake", "id": "frontier-1", "tier": "frontier",
         "price": {"input": PRICES["frontier-1"][0], "output": PRICES["frontier-1"][1]}},
    ]  # fmt: skip
    route: dict[str, Any] = {"name": "default", "candidates": ["cheap", "frontier"]}
    data: dict[str, Any] = {
        "providers": [{"name": "fake", "kind": "openai", "base_url": f"{base_url}/v1"}],
        "models": models,
        "teams": [{"name": "bench", "key_sha256": hash_key(KEY)}],
        "routes": [route],
    }
    if mode in ("always-frontier", "frontier+cache+kb"):
        route["candidates"] = ["frontier"]
    elif mode == "always-cheap":
        route["candidates"] = ["cheap"]
    if mode in ("tier-router", "gateway"):
        route["tiering"] = {"max_frontier_share": share, "exploration": 0.05}
        data["task_types"] = TASK_TYPES
    if mode in ("frontier+cache+kb", "gateway"):
        data["cache"] = {"max_error_rate": 0.01}
        data["knowledge"] = {"collection": "bench-kb"}
    return Policy.model_validate(data)


async def ingest_kb(path: Path, embedder: Any) -> None:
    from retrieval.ingest import ingest
    from retrieval.stores import open_store

    store = open_store(collection="bench-kb", url=None, path=path, engine="edge")
    try:
        await ingest(
            [ROOT / "examples/kb/policies"], store=store, embedder=embedder, kb="company",
            teams=["*"], root=ROOT / "examples/kb",
        )  # fmt: skip
    finally:
        await store.close()


async def run_mode(
    mode: str,
    prompts: list[Prompt],
    embedder: Any,
    args: argparse.Namespace,
    kb: Path,
    *,
    replicas: int = 1,
    redis_url: str | None = None,
    shared: bool = True,
) -> dict[str, Any]:
    """One mode's replay; with ``replicas`` > 1, that many gateways on ``redis_url`` take the
    requests in turn (each grade goes to the replica that answered), sharing tier outcomes or
    not (``shared``)."""
    truth = {p.text: p for p in prompts}
    ledger = Ledger()
    up = web.AppRunner(upstream(truth, ledger), access_log=None)
    await up.setup()
    site = web.TCPSite(up, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{up.addresses[0][1]}"
    prefix = f"savings-{mode}-{int(shared)}-{time.time_ns()}"
    settings = Settings(
        knowledge_path=kb, redis_url=redis_url, redis_prefix=prefix, tier_outcome_stream=shared
    )
    apps, runners, urls = [], [], []
    for _ in range(replicas):
        app = create_app(
            settings, policy(base, mode, args.max_frontier_share), environ={}, embedder=embedder
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        apps.append(app)
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    rng = random.Random(args.seed + 1)
    good = 0
    sources: dict[str, int] = {}
    tiers: dict[str, int] = {}
    by_kind: dict[str, list[int]] = {}
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        async with aiohttp.ClientSession() as session:
            for i, prompt in enumerate(prompts):
                app, url = apps[i % replicas], urls[i % replicas]
                body = {"model": "default", "messages": [{"role": "user", "content": prompt.text}]}
                async with session.post(
                    f"{url}/v1/chat/completions", json=body, headers=headers
                ) as response:
                    answer = await response.json()
                    assert response.status == 200, answer
                    source = response.headers.get("x-gateway-source", "provider")
                    tier = response.headers.get("x-gateway-tier", "-")
                    request_id = response.headers["x-request-id"]
                text = answer["choices"][0]["message"]["content"] or ""
                ok = source == "knowledge" or text.startswith("ok")
                good += ok
                by_kind.setdefault(prompt.kind, []).append(int(ok))
                sources[source] = sources.get(source, 0) + 1
                if source == "provider":
                    tiers[tier] = tiers.get(tier, 0) + 1
                if source != "knowledge" and rng.random() < args.feedback:
                    grade = {"request_id": request_id, "score": 1.0 if ok else 0.0}
                    async with session.post(
                        f"{url}/v1/feedback", json=grade, headers=headers
                    ) as graded:
                        assert graded.status == 200, await graded.text()
                for stage in app_runtime(app).interceptors:
                    drain = getattr(stage, "drain", None)
                    if drain is not None:
                        await drain()
    finally:
        for runner in runners:
            await runner.cleanup()
        await up.cleanup()
    return {
        "usd": ledger.usd(),
        "quality": good / len(prompts),
        "sources": sources,
        "tiers": tiers,
        "calls": ledger.calls,
        "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
    }


def app_runtime(app: web.Application) -> Any:
    from gateway.core.runtime import RUNTIME

    return app[RUNTIME]


def decision_latency(
    embedder: Any, texts: Sequence[str], samples: int = 3000
) -> dict[str, tuple[float, float]]:
    """(p50, p99) ms of classifying a task and choosing a tier (the prompt's text features, the
    feature models and the neighbourhood) with a full outcome memory (4096), in wall time and
    in the thread's CPU time (wall time on a loaded machine includes waiting for a core)."""
    from gateway.core.background import single_thread_blas
    from gateway.routing.tasks import TaskClassifier
    from gateway.tiering.features import prompt_features
    from gateway.tiering.router import TierRouter

    single_thread_blas()  # as ``gateway serve`` runs it

    pol = policy("http://127.0.0.1:9", "gateway")
    examples = {n: embedder.encode(t["examples"]) for n, t in TASK_TYPES.items()}
    classifier = TaskClassifier.from_vectors(examples)
    router = TierRouter(pol, seed=0)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4096 + samples, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for i, v in enumerate(vectors[:4096]):
        router.remember(f"r{i}", "default", v, np.array(prompt_features(texts[i % len(texts)])))
        tier = "frontier" if i % 3 == 0 else "cheap"
        router.served(f"r{i}", tier, (float(rng.random()), 1.0))
    wall, cpu = [], []
    for i, v in enumerate(vectors[4096:]):
        text = texts[i % len(texts)]
        started, started_cpu = time.perf_counter(), time.thread_time()
        guess = classifier.classify(v, "general")
        features = np.array(prompt_features(text))
        router.decide("default", guess.task_type, v, {"cheap", "frontier"}, features)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - started_cpu) * 1000)
    return {
        name: (statistics.median(values), sorted(values)[int(0.99 * len(values))])
        for name, values in (("wall", wall), ("cpu", cpu))
    }


async def compare_replicas(
    prompts: list[Prompt], embedder: Any, args: argparse.Namespace, one: dict[str, Any]
) -> None:
    """The tier router alone across ``--replicas`` gateways on one throwaway Redis, each
    learning from its own outcomes or from all of them."""
    from tests.conftest import RedisServer

    redis = RedisServer()
    redis.start()
    try:
        print(f"tier-router on {args.replicas} replicas taking requests in turn:")
        print(f"  one replica              spend ${one['usd']:.4f}, quality {one['quality']:.3f}")
        for shared in (False, True):
            with tempfile.TemporaryDirectory() as scratch:
                r = await run_mode(
                    "tier-router", prompts, embedder, args, Path(scratch) / "kb",
                    replicas=args.replicas, redis_url=redis.url, shared=shared,
                )  # fmt: skip
            label = "outcomes shared" if shared else "each learns alone"
            print(f"  {label:<24} spend ${r['usd']:.4f}, quality {r['quality']:.3f}, "
                  f"tiers {r['tiers']}")  # fmt: skip
    finally:
        redis.stop()


async def main_async(args: argparse.Namespace) -> None:
    from cache.embedder import SentenceEmbedder

    logging.basicConfig(level=logging.WARNING)
    embedder = SentenceEmbedder()
    prompts = workload(args.requests, args.seed)
    kinds = {k: sum(p.kind == k for p in prompts) for k in ("easy", "medium", "hard", "knowledge")}
    print(f"max_frontier_share {args.max_frontier_share}, feedback on {args.feedback:.0%}")
    print(
        f"workload: {len(prompts)} requests, {len(set(p.text for p in prompts))} distinct; {kinds}"
    )
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for mode in MODES:
            kb = Path(scratch) / f"kb-{mode}"
            if mode in ("frontier+cache+kb", "gateway"):
                await ingest_kb(kb, embedder)
            started = time.perf_counter()
            results[mode] = await run_mode(mode, prompts, embedder, args, kb)
            results[mode]["seconds"] = time.perf_counter() - started
    base = results["always-frontier"]
    print(f"{'mode':<16} {'spend $':>9} {'vs frontier':>12} {'quality':>8}  served by")
    for mode, r in results.items():
        saved = 1 - r["usd"] / base["usd"]
        print(
            f"{mode:<16} {r['usd']:9.4f} {saved:11.1%}  {r['quality']:8.3f}  "
            f"sources {r['sources']} tiers {r['tiers']} ({r['seconds']:.0f} s)"
        )
        print(f"{'':<16} quality by kind { ({k: round(v, 3) for k, v in r['by_kind'].items()}) }")
    if args.replicas > 1:
        await compare_replicas(prompts, embedder, args, results["tier-router"])
    for clock, (p50, p99) in decision_latency(embedder, [p.text for p in prompts]).items():
        print(f"tier decision (classifier + tier router, 4096 outcomes), {clock} time: "
              f"p50 {p50:.3f} ms, p99 {p99:.3f} ms")  # fmt: skip
    await embedder.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feedback", type=float, default=0.5, help="share of answers graded")
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="also replay the tier router on this many gateways, sharing outcomes or not",
    )
    parser.add_argument(
        "--max-frontier-share", type=float, default=MAX_FRONTIER_SHARE, help="the route's knob"
    )
    asyncio.run(main_async(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
