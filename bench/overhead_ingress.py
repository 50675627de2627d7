"""The other ingress formats in ``bench.overhead``: what an Anthropic Messages request and an
embeddings request cost on their pass-through paths, beside the chat path.

- (m) ``POST /v1/messages`` to the gateway: an Anthropic body, translated to the same fake
  OpenAI-compatible upstream as (c), its answer rendered back as an Anthropic ``message``;
- (e) the fake upstream's ``POST /v1/embeddings``, called directly (one 1536-dimension vector,
  base64, as the official SDK asks for by default), (g) the bare forwarder in front of it, and
  (f) ``POST /v1/embeddings`` to the gateway in front of it.

"Added" is over the bare forwarder of the same payload, as for the chat path's target: an
embeddings answer is ~8 KB, twenty times a chat answer, and moving it through one more process
costs any proxy (g) - (e) more than (b) - (a); that is the payload, not the gateway. Target:
(m) - (b) and (f) - (g) within 0.1 ms of (c) - (b). ``--ingress`` measures them interleaved.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import struct
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

EMBED_ALIAS = "bench-embed"
EMBED_UPSTREAM_MODEL = "text-embedding-3-small"
EMBED_PATH = "/v1/embeddings"
MESSAGES_PATH = "/v1/messages"
EMBED_DIM = 1536
TARGET_ADDED_P50_DELTA_MS = 0.1

# A fixed vector, so that every answer costs the same: base64 of little-endian float32.
_VECTOR = [((i * 7919) % 1000) / 1000 - 0.5 for i in range(EMBED_DIM)]
_PACKED = base64.b64encode(struct.pack(f"<{EMBED_DIM}f", *_VECTOR)).decode()
FAKE_EMBEDDING_BODY = json.dumps(
    {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": _PACKED}],
        "model": EMBED_UPSTREAM_MODEL,
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    },
    separators=(",", ":"),
).encode()


def requests(chat_alias: str, team_key: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Body and headers per target: (m) an Anthropic client's request, (e)/(f) the SDK's
    embeddings request."""
    messages = json.dumps(
        {
            "model": chat_alias,
            "max_tokens": 64,
            "system": "You are a concise assistant.",
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
        },
        separators=(",", ":"),
    )
    embeddings = json.dumps(
        {
            "model": EMBED_ALIAS,
            "input": "What is the capital of France?",
            "encoding_format": "base64",
        },
        separators=(",", ":"),
    )
    return {
        "m": (
            messages,
            {
                "Content-Type": "application/json",
                "x-api-key": team_key,
                "anthropic-version": "2023-06-01",
            },
        ),
        "e": (embeddings, {"Content-Type": "application/json"}),
        "g": (embeddings, {"Content-Type": "application/json"}),
        "f": (
            embeddings,
            {"Content-Type": "application/json", "Authorization": f"Bearer {team_key}"},
        ),
    }


def policy_models(provider: str) -> str:
    """The YAML model entry of the embedding alias, on the fake's provider."""
    return (
        f"  - name: {EMBED_ALIAS}\n"
        f"    provider: {provider}\n"
        f"    id: {EMBED_UPSTREAM_MODEL}\n"
        "    kind: embedding\n"
    )


def answer_ok(key: str, text: str, content: str) -> bool:
    """Whether target ``key`` answered with the fake's content, in its client's shape."""
    try:
        body: Any = json.loads(text)
        if key == "m":
            return bool(body["type"] == "message" and body["content"][0]["text"] == content)
        if key in ("e", "f", "g"):
            return bool(body["data"][0]["embedding"] == _PACKED)
        return bool(body["choices"][0]["message"]["content"] == content)
    except (ValueError, KeyError, IndexError, TypeError):
        return False


# --------------------------------------------------------------- the interleaved comparison
def run_interleaved(args: Any) -> int:
    """``--ingress``: (a), (c), (m), (e), (f) measured in alternating c=1 slices, round after
    round, and the gateway's self-reported overhead over requests that alternate between its
    three paths, so that the host's noise (other jobs move a run's p50 by milliseconds here)
    falls on every target alike. The verdict is on the median over rounds of each round's
    difference."""
    from bench import overhead_load as load  # late: overhead_servers imports this module
    from bench import overhead_servers as base

    order = ["a", "b", "c", "m", "e", "g", "f"]
    with tempfile.TemporaryDirectory(prefix="gw-bench-ingress-") as tmp:
        procs = base.Procs(Path(tmp))
        loadgen = load.LoadGen(Path(tmp))
        try:
            print("\n".join(load.machine_context(loadgen)), flush=True)
            urls = base.start_servers(procs, "".join(order))
            asyncio.run(base.check_targets(urls))
            p50: dict[str, list[float]] = {key: [] for key in order}
            for round_ in range(args.rounds):
                rotated = order[round_ % len(order) :] + order[: round_ % len(order)]
                for key in rotated:
                    if round_ == 0:  # connections open, the gateway's pool warm
                        load.loadgen_warm(loadgen, urls[key], key)
                    result = loadgen.run(urls[key], 1, args.slice, key)
                    p50[key].append(result.latency_ms[50])
                print(
                    f"  round {round_ + 1}: "
                    + ", ".join(f"({k}) {p50[k][-1]:.3f}" for k in order)
                    + " ms p50",
                    flush=True,
                )
            samples = asyncio.run(_alternating_overhead(urls, base.REQUESTS, args.rounds * 300))
        finally:
            procs.close()
    print("\n".join(_report(p50, samples)))
    return 0


async def _alternating_overhead(
    urls: dict[str, str], bodies: dict[str, tuple[str, dict[str, str]]], count: int
) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {"c": [], "m": [], "f": []}
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            for key in ("c", "m", "f")[i % 3 :] + ("c", "m", "f")[: i % 3]:
                body, headers = bodies[key]
                async with session.post(urls[key], data=body, headers=headers) as response:
                    await response.read()
                    values[key].append(float(response.headers["x-gateway-overhead-ms"]))
    return {key: sorted(found) for key, found in values.items()}


def _report(p50: dict[str, list[float]], samples: dict[str, list[float]]) -> list[str]:
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):8.3f}   ({min(values):.3f} to {max(values):.3f})"

    rounds = len(p50["a"])
    chat = [c - b for c, b in zip(p50["c"], p50["b"], strict=True)]
    messages = [m - b for m, b in zip(p50["m"], p50["b"], strict=True)]
    embeddings = [f - g for f, g in zip(p50["f"], p50["g"], strict=True)]
    payload = [(g - e) - (b - a) for a, b, e, g in zip(*(p50[k] for k in "abeg"), strict=True)]
    lines = ["", f"c=1 p50 over {rounds} interleaved rounds, ms: median (min to max)"]
    labels = {
        "a": "(a) upstream chat, direct",
        "b": "(b) forwarder, chat",
        "c": "(c) gateway chat",
        "m": "(m) gateway /v1/messages",
        "e": "(e) upstream embeddings",
        "g": "(g) forwarder, embeddings",
        "f": "(f) gateway /v1/embeddings",
    }
    lines += [f"  {labels[key]:<30}{spread(values)}" for key, values in p50.items()]
    lines += [
        "added per round over the forwarder of the same payload, ms: median (min to max)",
        f"  {'chat (c)-(b)':<30}{spread(chat)}",
        f"  {'messages (m)-(b)':<30}{spread(messages)}",
        f"  {'embeddings (f)-(g)':<30}{spread(embeddings)}",
        f"  {'8 KB payload: (g)-(e)-((b)-(a))':<30}{spread(payload)}",
    ]
    for name, other in (("messages", messages), ("embeddings", embeddings)):
        delta = [o - c for o, c in zip(other, chat, strict=True)]
        median = statistics.median(delta)
        verdict = "MET" if median <= TARGET_ADDED_P50_DELTA_MS else "MISSED"
        lines.append(
            f"  {f'{name} added - chat added':<30}{spread(delta)}"
            f"   target median <= +{TARGET_ADDED_P50_DELTA_MS} ms: {verdict}"
        )
    lines.append("gateway self-reported x-gateway-overhead-ms, requests alternating c, m, f:")
    for key in ("c", "m", "f"):
        values = samples[key]
        p50_ms = values[len(values) // 2]
        p99_ms = values[min(len(values) - 1, int(len(values) * 0.99))]
        lines.append(
            f"  {labels[key]:<30}p50 {p50_ms:.3f} ms, p99 {p99_ms:.3f} ms ({len(values)} requests)"
        )
    return lines
