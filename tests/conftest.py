"""Shared fixtures: loopback fake providers, a policy wired to them, the in-process gateway."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient

from gateway.api.app import create_app
from gateway.cli.localmodel import free_port
from gateway.policy.model import Policy, hash_key
from gateway.policy.settings import Settings
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
    """Build an in-process gateway on the fakes; keyword arguments override Settings fields.

    The interceptors' budget (``stage_timeout_s``) is 30 s unless a test sets it: at the default
    1 s a cache or knowledge lookup on a loaded CI machine is skipped now and then, and a test
    about what the lookup does then fails for a reason it is not about. Tests of the budget
    itself set it."""

    async def build(
        policy: Policy | None = None, *, embedder: Any = None, **settings: Any
    ) -> TestClient[Any, Any]:
        settings.setdefault("stage_timeout_s", 30.0)
        app = create_app(
            Settings(**settings),
            policy or policy_for(fakes),
            environ=PROVIDER_KEYS,
            embedder=embedder,
        )
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


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The real embedding model, loaded once per test session (~6 s)."""
    from cache.embedder import SentenceEmbedder

    # Its worker is a daemon thread: nothing to tear down at the end of the session.
    return SentenceEmbedder()


class RedisServer:
    """A throwaway ``redis-server`` on a free port, for outage tests (kill, restart)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


SHARED_REDIS_PORT = 6379  # the suites that share one Redis (REDIS_URL in their modules)
_shared_redis: subprocess.Popen[bytes] | None = None
_no_shared_redis: str | None = None  # why the shared Redis is missing, when it is


def _redis_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False


def pytest_sessionstart(session: pytest.Session) -> None:
    """Redis on 127.0.0.1:6379 for the shared-Redis suites: the machine's when it runs, else a
    throwaway ``redis-server`` for this session; without redis-server those suites skip."""
    global _shared_redis, _no_shared_redis
    if _redis_answers(SHARED_REDIS_PORT):
        return
    if shutil.which("redis-server") is None:
        _no_shared_redis = (
            "no Redis on 127.0.0.1:6379 and redis-server is not installed "
            "(apt-get install redis-server)"
        )
        return
    _shared_redis = subprocess.Popen(
        [
            *("redis-server", "--port", str(SHARED_REDIS_PORT), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _redis_answers(SHARED_REDIS_PORT):
        if time.monotonic() > deadline or _shared_redis.poll() is not None:
            _no_shared_redis = "could not start redis-server on 127.0.0.1:6379"
            return
        time.sleep(0.05)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _shared_redis is not None:
        _shared_redis.kill()
        _shared_redis.wait()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _no_shared_redis is None:
        return
    skip = pytest.mark.skip(reason=_no_shared_redis)
    for item in items:
        module = getattr(item, "module", None)
        if any(hasattr(module, name) for name in ("REDIS_URL", "SHARED_REDIS")):
            item.add_marker(skip)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    yield server
    server.stop()
