"""Shared fixtures: loopback fake providers, a policy wired to them, the in-process gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.policy import Policy, hash_key
from gateway.settings import Settings
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import FakeProvider
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI

pytest_plugins = ["tests.worlds"]

TEAM_KEY = "sk-team-alpha-0123456789"
EU_TEAM_KEY = "sk-team-eu-0123456789"
LIMITED_TEAM_KEY = "sk-team-limited-0123456789"
PROVIDER_KEYS = {
    "FAKE_OPENAI_KEY": "sk-provider-openai-SECRET",
    "FAKE_ANTHROPIC_KEY": "sk-ant-provider-SECRET",
    "FAKE_GEMINI_KEY": "AIza-provider-SECRET",
    "FAKE_OLLAMA_KEY": "ollama-provider-SECRET",
}

# Model alias -> (provider name, pinned upstream id)
MODELS = {
    "gpt": ("openai", "gpt-4o-mini-2024-07-18"),
    "claude": ("anthropic", "claude-sonnet-4-20250514"),
    "gemini": ("gemini", "gemini-2.0-flash-001"),
    "ollama": ("ollama", "qwen2.5:7b-instruct-q4_K_M"),
}


@dataclass
class Fakes:
    openai: FakeOpenAI
    anthropic: FakeAnthropic
    gemini: FakeGemini
    ollama: FakeOllama

    def by_provider(self, name: str) -> FakeProvider:
        fake: FakeProvider = getattr(self, name)
        return fake


def policy_for(fakes: Fakes, **overrides: Any) -> Policy:
    """A policy with one provider per fake, an alias per provider and three teams."""
    data: dict[str, Any] = {
        "providers": [
            {
                "name": "openai",
                "kind": "openai",
                "base_url": fakes.openai.api_base,
                "api_key_env": "FAKE_OPENAI_KEY",
                "region": "us",
            },
            {
                "name": "anthropic",
                "kind": "anthropic",
                "base_url": fakes.anthropic.base_url,
                "api_key_env": "FAKE_ANTHROPIC_KEY",
                "region": "us",
            },
            {
                "name": "gemini",
                "kind": "gemini",
                "base_url": fakes.gemini.base_url,
                "api_key_env": "FAKE_GEMINI_KEY",
                "region": "eu",
            },
            {
                "name": "ollama",
                "kind": "ollama",
                "base_url": fakes.ollama.base_url,
                "region": "onprem",
            },
        ],
        "models": [
            {"name": alias, "provider": provider, "id": upstream}
            for alias, (provider, upstream) in MODELS.items()
        ],
        "routes": [{"name": "default", "candidates": ["gpt", "claude"]}],
        "teams": [
            {"name": "alpha", "key_sha256": hash_key(TEAM_KEY)},
            {"name": "eu", "key_sha256": hash_key(EU_TEAM_KEY), "regions": ["eu", "onprem"]},
            {"name": "limited", "key_sha256": hash_key(LIMITED_TEAM_KEY), "routes": ["gpt"]},
        ],
    }
    data.update(overrides)
    return Policy.model_validate(data)


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    started = Fakes(
        openai=FakeOpenAI(region="us"),
        anthropic=FakeAnthropic(region="us"),
        gemini=FakeGemini(region="eu"),
        ollama=FakeOllama(region="onprem"),
    )
    for fake in vars(started).values():
        await fake.start()
    yield started
    for fake in vars(started).values():
        await fake.stop()


GatewayFactory = Callable[..., Any]


@pytest.fixture
def make_gateway(aiohttp_client: Callable[..., Any], fakes: Fakes) -> Callable[..., Any]:
    """Build an in-process gateway on the fakes; keyword arguments override Settings fields."""

    async def build(policy: Policy | None = None, **settings: Any) -> TestClient[Any, Any]:
        app = create_app(Settings(**settings), policy or policy_for(fakes), environ=PROVIDER_KEYS)
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return build


@pytest.fixture
async def gateway(make_gateway: Callable[..., Any]) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway()
    return client


SdkFactory = Callable[..., openai.AsyncOpenAI]


@pytest.fixture
async def sdk_for() -> AsyncIterator[SdkFactory]:
    """The official OpenAI SDK pointed at a gateway: what an internal team changes is base_url."""
    clients: list[openai.AsyncOpenAI] = []

    def build(gateway: TestClient[Any, Any], key: str = TEAM_KEY) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            base_url=str(gateway.make_url("/v1")), api_key=key, max_retries=0
        )
        clients.append(client)
        return client

    yield build
    for client in clients:
        await client.close()


@pytest.fixture
def sdk(gateway: TestClient[Any, Any], sdk_for: SdkFactory) -> openai.AsyncOpenAI:
    return sdk_for(gateway)
