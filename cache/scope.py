"""Isolation scopes: the exact part of a cache key.

Two requests may share a cached answer only when everything that can change the answer, other than
the wording of the final user turn, is identical: the team, the route, the system prompt, the
earlier turns, the tools, the response format, the answer-changing parameters and the regions the
request may be served from. The scope is a hash of those (``scope_key``; the gateway's cache stage
chooses the parts from its request model); semantic similarity is only ever looked up inside one
scope. (Answers built on knowledge-base context are also tagged with the chunks they used, so
re-ingesting a document invalidates them.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import orjson

_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    """What the exact path compares: case and runs of white space do not matter."""
    return _SPACES.sub(" ", text).strip().casefold()


def temperature_bucket(temperature: float | None) -> str:
    """Temperatures that answer alike share a bucket (unset means the provider default)."""
    if temperature is None:
        return "default"
    return f"{round(temperature, 1):.1f}"


def scope_key(parts: Mapping[str, Any]) -> str:
    """A 32-hex-digit hash of a request's answer-changing parts (the caller chooses them)."""
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:32]


def exact_key(scope: str, query: str) -> str:
    """The exact-path key: the scope and the normalised final user turn."""
    return hashlib.sha256(f"{scope}\x00{normalise(query)}".encode()).hexdigest()[:40]
