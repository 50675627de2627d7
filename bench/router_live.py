"""A trained tier model routing live traffic: RouteLLM's MMLU and GSM8K through the running gateway.

    python -m bench.router_live [--only mmlu,gsm8k] [--limit N] [--train-limit N] [--seed 0]
                                [--reuse-model] [--stack serving|full] [--no-online]
                                [--in-process SEEDS]

For each dataset, the split of ``bench.router`` (contaminated prompts dropped, a seeded random
half trains, the other half is held out; the data is read from ../shared/benchmarks and never
copied into the repository):

1. ``gateway router train`` fits the stack on the TRAIN half and writes the model file;
2. the held-out prompts (all of them, or a seeded random ``--limit`` of them) are sent one by
   one through a real gateway (aiohttp, on a loopback port) to a tiered route whose two models
   are served by a loopback fake; for each answer the client posts the dataset's quality of
   the tier that answered (Mixtral-8x7B for the cheap tier, GPT-4 for the frontier) to
   ``POST /v1/feedback``, so the route learns from live outcomes as in service;
3. twice: the route with ``tiering.model`` (the offline model as the prior, live outcomes
   weighed in as they come) and without it (the online router alone, as today), both with the
   knob at ``--share`` (default: 0.45 on MMLU, 0.55 on GSM8K) and 5 % exploration.

It prints each run's quality as a share of always-frontier's and its frontier share, beside the
offline model's own ranking at the same frontier share (its scores of the held-out prompts, the
top share sent to the frontier), and the tier decision's latency with the model loaded
(``TierRouter.decide`` with the route's memory as the run left it; the embedding not included).
Embeddings are cached in ``--work``/emb.npz. ``--in-process 0-9`` runs the same loop without
HTTP (``TierRouter.decide``, then the answer's quality learnt) once per seed of exploration's
draws, and prints each run and the spread over them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from bench.router import DEFAULT_DATA, _routellm_rows, _seeds, _split
from gateway.api.app import create_app
from gateway.cli.main import main as gateway_main
from gateway.cli.router import embed_prompts
from gateway.core.background import single_thread_blas
from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy, hash_key
from gateway.policy.settings import Settings
from gateway.tiering.deployed import TierModel
from gateway.tiering.features import prompt_features
from gateway.tiering.router import TierRouter

KEY = "bench-live-key"
SHARES = {"mmlu": 0.45, "gsm8k": 0.55}
EXPLORATION = 0.05


def upstream() -> web.Application:
    """An OpenAI-compatible fake serving both tiers' models with a fixed short answer."""

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(
            {
                "id": "chatcmpl-live",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "The answer is (B)."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 8, "total_tokens": 108},
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def policy(base_url: str, share: float, model: Path | None) -> Policy:
    tiering: dict[str, Any] = {"max_frontier_share": share, "exploration": EXPLORATION}
    if model is not None:
        tiering["model"] = str(model)
    return Policy.model_validate(
        {
            "providers": [{"name": "fake", "kind": "openai", "base_url": f"{base_url}/v1"}],
            "models": [
                {"name": "cheap", "provider": "fake", "id": "cheap-1", "tier": "cheap"},
                {"name": "frontier", "provider": "fake", "id": "frontier-1", "tier": "frontier"},
            ],
            "teams": [{"name": "bench", "key_sha256": hash_key(KEY)}],
            "routes": [
                {"name": "default", "candidates": ["cheap", "frontier"], "tiering": tiering}
            ],
        }
    )


async def live_run(
    rows: list[dict[str, Any]], share: float, model: Path | None, embedder: Any
) -> dict[str, Any]:
    """The held-out ``rows`` through a gateway; each answer graded with its tier's quality."""
    up = web.AppRunner(upstream(), access_log=None)
    await up.setup()
    await web.TCPSite(up, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{up.addresses[0][1]}"
    app = create_app(
        Settings(embedder="torch"), policy(base, share, model), environ={}, embedder=embedder
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    headers = {"Authorization": f"Bearer {KEY}"}
    quality, frontier, shares = [], 0, []
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession() as session:
            for done, row in enumerate(rows, start=1):
                if done % 100 == 0:
                    print(f"  {done} of {len(rows)} sent ({time.perf_counter() - started:.0f} s)")
                messages = [{"role": "user", "content": row["prompt"]}]
                body = {"model": "default", "messages": messages}
                async with session.post(
                    f"{url}/v1/chat/completions", json=body, headers=headers
                ) as response:
                    assert response.status == 200, await response.text()
                    tier = response.headers["x-gateway-tier"]
                    request_id = response.headers["x-request-id"]
                score = row["quality"][tier]
                quality.append(score)
                frontier += tier == "frontier"
                grade = {"request_id": request_id, "score": score}
                async with session.post(
                    f"{url}/v1/feedback", json=grade, headers=headers
                ) as graded:
                    assert graded.status == 200, await graded.text()
                decision = app[RUNTIME].decisions.find(request_id)
                if decision is not None and "model_share" in decision.tiering:
                    shares.append(decision.tiering["model_share"])
        took = time.perf_counter() - started
        latency = decision_latency(app[RUNTIME].tiers, rows[:300], embedder)
    finally:
        await runner.cleanup()
        await up.cleanup()
    return {
        "quality": float(np.mean(quality)),
        "frontier_share": frontier / len(rows),
        "model_share": (shares[0], shares[-1]) if shares else None,
        "seconds": took,
        "latency": latency,
    }


def decision_latency(tiers: Any, rows: list[dict[str, Any]], embedder: Any) -> tuple[float, float]:
    """(p50, p99) ms of one tier decision (text features and ``decide``), the embedding given."""
    texts = [r["prompt"] for r in rows]
    vectors = embedder.encode(texts)
    timings = []
    for text, vector in zip(texts * 3, np.vstack([vectors] * 3), strict=True):
        started = time.perf_counter()
        features = np.array(prompt_features(text))
        tiers.decide("default", "general", vector, {"cheap", "frontier"}, features, text)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return statistics.median(timings), timings[int(0.99 * (len(timings) - 1))]


def in_process(
    rows: list[dict[str, Any]],
    vectors: np.ndarray,
    share: float,
    model: TierModel,
    seed: int,
) -> dict[str, Any]:
    """The loop of ``live_run`` without HTTP: ``TierRouter.decide`` for each held-out prompt in
    turn, then the answering tier's quality learnt, so many seeds (exploration's draws) fit in
    minutes. The same route config as through the gateway."""
    route = policy("http://127.0.0.1:9", share, None)
    router = TierRouter(route, seed=seed, models={"default": model})
    quality, frontier, codes = [], 0, Counter[str]()
    for i, (row, vector) in enumerate(zip(rows, vectors, strict=True)):
        features = np.array(prompt_features(row["prompt"]))
        decision = router.decide(
            "default", "general", vector, {"cheap", "frontier"}, features, row["prompt"]
        )
        assert decision is not None
        router.remember(str(i), "default", vector, features)
        router.served(str(i), decision.tier, (row["quality"][decision.tier], 1.0))
        quality.append(row["quality"][decision.tier])
        frontier += decision.tier == "frontier"
        codes[decision.code] += 1
    return {
        "quality": float(np.mean(quality)),
        "frontier_share": frontier / len(rows),
        "codes": dict(codes),
    }


def ranked_quality(scores: np.ndarray, rows: list[dict[str, Any]], share: float) -> float:
    """The quality of sending the top ``share`` of prompts by ``scores`` to the frontier."""
    order = np.argsort(-scores, kind="stable")
    top = set(order[: round(share * len(rows))].tolist())
    return float(
        np.mean([r["quality"]["frontier" if i in top else "cheap"] for i, r in enumerate(rows)])
    )


def train(
    work: Path, name: str, rows: list[dict[str, Any]], reuse: bool = False, stack: str = "serving"
) -> tuple[Path, float]:
    """``gateway router train --stack STACK`` on ``rows``: the model file and the seconds it
    took (0 when ``reuse`` found one from an earlier run)."""
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.jsonl").open("w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    model = folder / f"model-{stack}.npz"
    if reuse and model.exists():
        return model, 0.0
    started = time.perf_counter()
    code = gateway_main(
        [
            "router", "train", "--train", str(folder / "train.jsonl"), "--out", str(model),
            "--embedder", "torch", "--embedding-cache", str(work / "emb.npz"), "--threads", "1",
            "--stack", stack,
        ]
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"{name}: training failed")
    return model, time.perf_counter() - started


async def run(args: argparse.Namespace) -> None:
    from cache.embedder import SentenceEmbedder

    embedder = SentenceEmbedder()
    for name in args.only.split(","):
        rows = _routellm_rows(args.data, name)
        train_rows, test = _split(rows, args.seed)
        if args.train_limit and args.train_limit < len(train_rows):
            train_rows = random.Random(args.seed).sample(train_rows, args.train_limit)
        if args.limit and args.limit < len(test):
            test = random.Random(args.seed).sample(test, args.limit)
        share = args.share if args.share is not None else SHARES[name]
        # In a thread: the command runs its own event loop to close the embedder it loads.
        model_path, fit_s = await asyncio.to_thread(
            train, args.work, name, train_rows, args.reuse_model, args.stack
        )
        model = TierModel.load(model_path, "all-MiniLM-L6-v2", 384)
        texts = [r["prompt"] for r in test]
        vectors = await asyncio.to_thread(embed_prompts, texts, "torch", args.work / "emb.npz")
        scores, timings = [], []
        for text, vector in zip(texts, vectors, strict=True):
            started = time.perf_counter()
            scores.append(model.score(text, vector, np.array(prompt_features(text))))
            timings.append((time.perf_counter() - started) * 1000)
        timings.sort()
        frontier_q = float(np.mean([r["quality"]["frontier"] for r in test]))
        cheap_q = float(np.mean([r["quality"]["cheap"] for r in test]))
        print(
            f"== {name}: trained on {len(train_rows)} in {fit_s:.0f} s; held out "
            f"{len(test)} prompts (seed {args.seed}); always-frontier {frontier_q:.4f}, "
            f"always-cheap {cheap_q:.4f}; knob {share}, exploration {EXPLORATION}\n"
            f"model score alone: p50 {statistics.median(timings):.2f} ms, "
            f"p99 {timings[int(0.99 * (len(timings) - 1))]:.2f} ms",
            flush=True,
        )
        if args.in_process:
            report_in_process(test, vectors, share, model, np.array(scores), args.in_process)
            continue
        runs = (("model + live", model_path), ("online only", None))
        for label, path in runs if args.online else runs[:1]:
            result = await live_run(test, share, path, embedder)
            ranked = ranked_quality(np.array(scores), test, result["frontier_share"])
            p50, p99 = result["latency"]
            print(
                f"{label:<13} quality {result['quality']:.4f} = "
                f"{result['quality'] / frontier_q:.1%} of always-frontier, frontier share "
                f"{result['frontier_share']:.1%}; the offline model's ranking at that share "
                f"{ranked:.4f} = {ranked / frontier_q:.1%}; model share of decisions "
                f"{result['model_share']}; decision p50 {p50:.2f} ms p99 {p99:.2f} ms; "
                f"{result['seconds']:.0f} s",
                flush=True,
            )


def report_in_process(
    rows: list[dict[str, Any]],
    vectors: np.ndarray,
    share: float,
    model: TierModel,
    scores: np.ndarray,
    seeds: list[int],
) -> None:
    """``in_process`` once per seed: each run's quality (share of always-frontier), frontier
    share and gap to the offline ranking at that share, then their mean ± sd and the lowest."""
    frontier_q = float(np.mean([r["quality"]["frontier"] for r in rows]))
    found: dict[str, list[float]] = {"quality": [], "share": [], "gap": []}
    started = time.process_time()
    for seed in seeds:
        result = in_process(rows, vectors, share, model, seed)
        ranked = ranked_quality(scores, rows, result["frontier_share"])
        found["quality"].append(result["quality"] / frontier_q)
        found["share"].append(result["frontier_share"])
        found["gap"].append((result["quality"] - ranked) / frontier_q)
        print(
            f"in-process seed {seed}: {result['quality'] / frontier_q:.2%} of always-frontier, "
            f"frontier share {result['frontier_share']:.1%}, offline at that share "
            f"{ranked / frontier_q:.2%}; {result['codes']}",
            flush=True,
        )
    quality, share_, gap = (np.array(found[k]) * 100 for k in ("quality", "share", "gap"))

    def spread(values: np.ndarray) -> float:
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    print(
        f"in-process, {len(seeds)} seeds: quality {quality.mean():.2f} % ± {spread(quality):.2f} "
        f"(lowest {quality.min():.2f} %, {int((quality >= 95).sum())} of {len(seeds)} at 95 % "
        f"or over), frontier share {share_.mean():.1f} % ± {spread(share_):.1f}, gap to the "
        f"offline ranking {gap.mean():+.2f} ± {spread(gap):.2f} points; "
        f"{time.process_time() - started:.0f} s CPU, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the RouteLLM data and the work files are, which benchmarks, and the split's seed
    (shared with bench/tier_model.py, which reads the same split)."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/router_live"))
    parser.add_argument("--only", default="mmlu,gsm8k")
    parser.add_argument("--seed", type=int, default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    parser.add_argument("--limit", type=int, help="a seeded random subset of the held-out half")
    parser.add_argument("--train-limit", type=int, help="a seeded random subset of TRAIN")
    parser.add_argument(
        "--reuse-model", action="store_true", help="keep a model trained by an earlier run"
    )
    parser.add_argument("--share", type=float, help="the knob (default 0.45 MMLU, 0.55 GSM8K)")
    parser.add_argument(
        "--no-online",
        dest="online",
        action="store_false",
        help="skip the run without the model (the online router alone)",
    )
    parser.add_argument(
        "--stack", choices=("serving", "full"), default="serving", help="router train's --stack"
    )
    parser.add_argument(
        "--in-process",
        type=_seeds,
        metavar="SEEDS",
        help="instead of the gateway, the same loop in-process once per seed (0-9, 0,3,5)",
    )
    args = parser.parse_args(argv)
    single_thread_blas()  # as `gateway serve` runs: BLAS threads waiting on busy cores cost ms
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
