"""The other ingress formats in ``bench.overhead``: what an Anthropic Messages request and an
embeddings request cost on their pass-through paths, beside the chat path.

- (m) ``POST /v1/messages`` to the gateway: an Anthropic body, translated to the same fake
  OpenAI-compatible upstream as (c), its answer rendered back as an Anthropic ``message``. Its
  reference is (a), the same upstream called directly: (m) - (a) against (c) - (a).
- (e) the fake upstream's ``POST /v1/embeddings``, called directly (one 1536-dimension vector,
  base64, as the official SDK asks for by default);
- (f) ``POST /v1/embeddings`` to the gateway in front of it: (f) - (e) against (c) - (a).

Target: each new path's added p50 within 0.1 ms of the chat path's.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

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
        if key in ("e", "f"):
            return bool(body["data"][0]["embedding"] == _PACKED)
        return bool(body["choices"][0]["message"]["content"] == content)
    except (ValueError, KeyError, IndexError, TypeError):
        return False
