"""The semantic cache through the HTTP API, on labelled query streams.

    python -m bench.cache [--dataset banking77|clinc150] [--split test|train] [--seeds 7,8,9]
        [--limit N] [--settings static:0.85,static:0.9,error:0.01] [--embedder onnx-int8]

A fake upstream answers each query with its intent ("answer:<intent>"), so a cache hit is correct
when the served answer names the query's intent (CLINC150's out-of-scope queries are each their
own intent). The stream (a split, shuffled per seed) goes through an in-process gateway over real
HTTP; for each setting and seed a fresh cache. Reported as shares of all requests, mean ± sd over
seeds: hits, false hits (another intent's answer), verification calls. Then: cache-hit latency
through the API (exact and semantic), and embedding throughput one text at a time vs through the
micro-batcher with concurrent callers. Tune on ``--split train`` only. Data is read from
../shared/benchmarks (never copied). The vector index at 1 M entries: ``bench/vector_index.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cache.embedder import Embedder
from cache.embedders import EMBEDDER_KINDS, make_embedder
from gateway.api.app import create_app
from gateway.policy.model import Policy, hash_key
from gateway.policy.settings import Settings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "data" / "cache"
KEY = "bench-cache-key"


def load(dataset: str, split: str) -> list[tuple[str, str]]:
    if dataset == "banking77":
        with (DATA / "banking77" / f"{split}.csv").open(newline="") as handle:
            return [(row["text"], row["category"]) for row in csv.DictReader(handle)]
    data = json.loads((DATA / "clinc150" / "data_full.json").read_text())
    rows = [(text, intent) for text, intent in data[split]]
    # Out-of-scope queries are unrelated questions, not one topic: each is its own intent.
    rows += [(text, f"oos:{i}") for i, (text, _) in enumerate(data[f"oos_{split}"])]
    return rows


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def upstream(intents: dict[str, str]) -> web.Application:
    """An OpenAI-compatible upstream whose answer is fixed by the query's intent."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        question = body["messages"][-1]["content"]
        answer = f"answer:{intents.get(question, 'unknown')}"
        return web.json_response(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "bench-model-2025-01-01",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def policy(base_url: str, setting: str) -> Policy:
    kind, _, value = setting.partition(":")
    cache: dict[str, Any] = (
        {"static_threshold": float(value)} if kind == "static" else {"max_error_rate": float(value)}
    )
    return Policy.model_validate(
        {
            "providers": [{"name": "fake", "kind": "openai", "base_url": f"{base_url}/v1"}],
            "models": [{"name": "bench", "provider": "fake", "id": "bench-model-2025-01-01"}],
            "teams": [{"name": "bench", "key_sha256": hash_key(KEY)}],
            "cache": cache,
        }
    )


async def run_stream(
    rows: list[tuple[str, str]], setting: str, upstream_url: str, embedder: Embedder
) -> dict[str, float]:
    app = create_app(Settings(), policy(upstream_url, setting), environ={}, embedder=embedder)
    runner, url = await start(app)
    hits = false_hits = verifies = 0
    try:
        async with aiohttp.ClientSession() as session:
            for text, intent in rows:
                async with session.post(
                    f"{url}/v1/chat/completions",
                    json={"model": "bench", "messages": [{"role": "user", "content": text}]},
                    headers={"Authorization": f"Bearer {KEY}"},
                ) as response:
                    body = await response.json()
                    state = response.headers.get("x-gateway-cache")
                if state == "hit":
                    hits += 1
                    served = body["choices"][0]["message"]["content"].removeprefix("answer:")
                    false_hits += served != intent
                await _settle(app)  # the answer is stored before the next query
        verifies = _verifications(app)
    finally:
        await runner.cleanup()
    n = len(rows)
    return {"hits": hits / n, "false": false_hits / n, "verify": verifies / n}


async def _settle(app: web.Application) -> None:
    from gateway.core.runtime import RUNTIME

    for stage in app[RUNTIME].interceptors:
        drain = getattr(stage, "drain", None)
        if drain is not None:
            await drain()


def _verifications(app: web.Application) -> int:
    from gateway.core.runtime import RUNTIME

    metrics = app[RUNTIME].metrics
    sample = next(iter(metrics.cache_lookups.collect())).samples
    return int(
        sum(
            s.value
            for s in sample
            if s.labels.get("result") == "verify" and s.name.endswith("_total")
        )
    )


async def hit_latency(embedder: Embedder, upstream_url: str) -> dict[str, list[float]]:
    app = create_app(Settings(), policy(upstream_url, "static:0.85"), environ={}, embedder=embedder)
    runner, url = await start(app)
    samples: dict[str, list[float]] = {"exact": [], "semantic": []}
    try:
        async with aiohttp.ClientSession() as session:

            async def ask(text: str) -> str:
                start_ = time.perf_counter()
                async with session.post(
                    f"{url}/v1/chat/completions",
                    json={"model": "bench", "messages": [{"role": "user", "content": text}]},
                    headers={"Authorization": f"Bearer {KEY}"},
                ) as response:
                    await response.read()
                    state = response.headers.get("x-gateway-cache", "")
                elapsed = (time.perf_counter() - start_) * 1000
                return f"{state}:{elapsed}"

            await ask("How do I reset my card PIN?")
            await _settle(app)
            for i in range(200):
                state, ms = (await ask("How do I reset my card PIN?")).split(":")
                samples["exact"].append(float(ms))
                variant = f"How can I reset the PIN of my card{'?' * (1 + i % 3)}"
                state, ms = (await ask(variant)).split(":")
                if state == "hit":
                    samples["semantic"].append(float(ms))
    finally:
        await runner.cleanup()
    return samples


async def embedding_throughput(embedder: Embedder, texts: list[str]) -> tuple[float, float]:
    """Texts per second embedded one after another, and by 64 concurrent callers."""
    sample = texts[:256]
    start_ = time.perf_counter()
    for text in sample[:128]:
        await embedder.embed(text)
    single = 128 / (time.perf_counter() - start_)
    start_ = time.perf_counter()
    for offset in range(0, len(sample), 64):
        await asyncio.gather(*(embedder.embed(t) for t in sample[offset : offset + 64]))
    concurrent = len(sample) / (time.perf_counter() - start_)
    return single, concurrent


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):6.2%} ± {sd:.2%}"


async def main_async(args: argparse.Namespace) -> None:
    base = load(args.dataset, args.split)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    intents = dict(base)
    print(
        f"dataset: {args.dataset} {args.split}, {len(base)} queries "
        f"(limit {args.limit or 'none'}), seeds {seeds}, embedder {args.embedder}"
    )
    embedder = make_embedder(args.embedder, Path("data"))
    runner, upstream_url = await start(upstream(intents))
    try:
        print(f"\n{'setting':16s} {'hits':>16s} {'false hits':>16s} {'verifications':>16s}")
        for setting in filter(None, args.settings.split(",")):  # "" : latency only
            results = []
            for seed in seeds:
                rows = list(base)
                random.Random(seed).shuffle(rows)
                rows = rows[: args.limit] if args.limit else rows
                results.append(await run_stream(rows, setting, upstream_url, embedder))
            print(
                f"{setting:16s} "
                + " ".join(
                    f"{_mean_sd([r[k] for r in results]):>16s}" for k in ("hits", "false", "verify")
                ),
                flush=True,
            )
        print(
            "target (banking77 test): <= 1 % false hits at >= 36 % hits; "
            "static 0.90 -> 24 % / 0.9 %"
        )
        latency = await hit_latency(embedder, upstream_url)
        for kind, values in latency.items():
            if values:
                print(
                    f"\ncache-hit latency through the API ({kind}): p50 {pct(values, 50):.2f} ms, "
                    f"p99 {pct(values, 99):.2f} ms, mean {statistics.fmean(values):.2f} ms "
                    f"(n={len(values)}; target p50 <= 5 ms)"
                )
        single, concurrent = await embedding_throughput(embedder, [text for text, _ in base])
        batch = getattr(embedder, "max_batch", 1)
        print(
            f"\nembedding throughput: one at a time {single:.0f} texts/s, 64 concurrent callers "
            f"{concurrent:.0f} texts/s (micro-batches of up to {batch})"
        )
    finally:
        await runner.cleanup()
        await embedder.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache", description=__doc__)
    parser.add_argument("--dataset", choices=["banking77", "clinc150"], default="banking77")
    parser.add_argument("--settings", default="static:0.85,static:0.9,error:0.01")
    parser.add_argument("--split", choices=["test", "train"], default="test")
    parser.add_argument("--seeds", default="7", help="comma-separated shuffle seeds")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument(
        "--embedder", choices=EMBEDDER_KINDS, default=Settings.model_fields["embedder"].default
    )
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
