"""A routing world: loopback fakes in two regions and a policy over them (a pytest plugin)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.policy.model import Policy, hash_key
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import FakeProvider
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI

KEY = "sk-routing-team"
EU_KEY = "sk-routing-eu-team"
HELLO = [{"role": "user", "content": "Where is my parcel?"}]


@dataclass
class Region:
    """Fakes in three regions; gpt-us and gpt-eu share the OpenAI family."""

    gpt_us: FakeOpenAI
    gpt_eu: FakeOpenAI
    claude_us: FakeAnthropic
    gemini_eu: FakeGemini

    def all(self) -> dict[str, FakeProvider]:
        return dict(vars(self))


@pytest.fixture
async def world() -> AsyncIterator[Region]:
    region = Region(
        gpt_us=FakeOpenAI(region="us"),
        gpt_eu=FakeOpenAI(region="eu"),
        claude_us=FakeAnthropic(region="us"),
        gemini_eu=FakeGemini(region="eu"),
    )
    for fake in region.all().values():
        await fake.start()
    yield region
    for fake in region.all().values():
        await fake.stop()


def policy(world: Region, *, routes: list[dict[str, Any]] | None = None, **routing: Any) -> Policy:
    return Policy.model_validate(
        {
            "providers": [
                {
                    "name": "gpt-us",
                    "kind": "openai",
                    "base_url": world.gpt_us.api_base,
                    "region": "us",
                    "family": "openai",
                },
                {
                    "name": "gpt-eu",
                    "kind": "openai",
                    "base_url": world.gpt_eu.api_base,
                    "region": "eu",
                    "family": "openai",
                },
                {
                    "name": "claude-us",
                    "kind": "anthropic",
                    "base_url": world.claude_us.base_url,
                    "region": "us",
                },
                {
                    "name": "gemini-eu",
                    "kind": "gemini",
                    "base_url": world.gemini_eu.base_url,
                    "region": "eu",
                },
            ],
            "models": [
                {
                    "name": "gpt",
                    "provider": "gpt-us",
                    "id": "gpt-4o-mini-2024-07-18",
                    "price": {"input": 0.15, "output": 0.6},
                },
                {
                    "name": "gpt-eu",
                    "provider": "gpt-eu",
                    "id": "gpt-4o-mini-2024-07-18",
                    "price": {"input": 0.15, "output": 0.6},
                },
                {
                    "name": "claude",
                    "provider": "claude-us",
                    "id": "claude-sonnet-4-20250514",
                    "price": {"input": 3, "output": 15},
                },
                {
                    "name": "gemini",
                    "provider": "gemini-eu",
                    "id": "gemini-2.0-flash-001",
                    "price": {"input": 0.1, "output": 0.4},
                },
            ],
            "routes": routes
            or [
                {"name": "main", "candidates": ["gpt", "gpt-eu", "claude", "gemini"]},
                {"name": "eu-first", "candidates": ["gpt", "gemini", "gpt-eu"]},
            ],
            "teams": [
                {"name": "ops", "key_sha256": hash_key(KEY)},
                {"name": "eu-only", "key_sha256": hash_key(EU_KEY), "regions": ["eu"]},
            ],
            "routing": routing,
        }
    )
