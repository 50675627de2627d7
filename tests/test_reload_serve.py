"""``gateway serve`` as a real process: SIGHUP reloads the policy file, SIGTERM drains."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import TEAM_KEY, Fakes, policy_for
from tests.serve_process import GatewayProcess, write_policy

AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}
WORDS = [f"word{i} " for i in range(8)]


class SlowStream:
    """An OpenAI-compatible upstream that streams one word every ``gap_s``."""

    def __init__(self, gap_s: float = 0.3) -> None:
        self.gap_s = gap_s
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                "id": "chatcmpl-slow",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        await response.write(chunk({"role": "assistant", "content": ""}))
        for word in WORDS:
            await response.write(chunk({"content": word}))
            await asyncio.sleep(self.gap_s)
        await response.write(chunk({}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        return response

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def slow() -> AsyncIterator[SlowStream]:
    upstream = SlowStream()
    await upstream.start()
    yield upstream
    await upstream.stop()


@pytest.fixture
def started(tmp_path: Path) -> Any:
    processes: list[GatewayProcess] = []

    async def start(policy: dict[str, Any], **env: str) -> GatewayProcess:
        config = tmp_path / "policy.yaml"
        write_policy(config, policy)
        process = GatewayProcess(config, tmp_path / f"gateway-{len(processes)}.log", **env)
        processes.append(process)
        await process.start()
        return process

    yield start
    for process in processes:
        process.stop()


@pytest.mark.timeout(90)
async def test_sigterm_drains_a_stream_in_flight(
    fakes: Fakes, slow: SlowStream, started: Any
) -> None:
    policy = policy_for(fakes).model_dump()
    policy["providers"].append(
        {
            "name": "slow",
            "kind": "openai",
            "base_url": f"http://127.0.0.1:{slow.port}/v1",
            "region": "us",
        }
    )
    policy["models"].append({"name": "slowpoke", "provider": "slow", "id": "slow-model-1"})
    gateway = await started(policy, GATEWAY_DRAIN_DELAY_S="1", GATEWAY_SHUTDOWN_TIMEOUT_S="20")
    body = {"model": "slowpoke", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    url = f"{gateway.url}/v1/chat/completions"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=AUTH) as response,
    ):
        assert response.status == 200
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        gateway.signal(signal.SIGTERM)
        async with (
            aiohttp.ClientSession() as probe,  # a new connection, during the delay
            probe.get(f"{gateway.url}/readyz") as ready,
        ):
            assert ready.status == 503
            assert (await ready.json())["status"] == "draining"
        rest = (first + await response.content.read()).decode()
    text = "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in rest.splitlines()
        if line.startswith("data: {")
    )
    assert text == "".join(WORDS)  # the whole answer arrived after SIGTERM
    assert rest.rstrip().endswith("data: [DONE]")
    assert await gateway.wait(25) == 0
    log = gateway.log()
    assert "draining" in log
    assert "Traceback" not in log


@pytest.mark.timeout(90)
async def test_sighup_reloads_and_a_bad_file_is_refused(
    fakes: Fakes, started: Any, tmp_path: Path
) -> None:
    policy = policy_for(fakes).model_dump()
    gateway = await started(policy)
    policy["routes"].append({"name": "fast", "candidates": ["ollama"]})
    write_policy(gateway.config, policy)
    gateway.signal(signal.SIGHUP)

    async def models(session: aiohttp.ClientSession) -> list[str]:
        async with session.get(f"{gateway.url}/v1/models", headers=AUTH) as response:
            return [m["id"] for m in (await response.json())["data"]]

    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            if "fast" in await models(session):
                break
            await asyncio.sleep(0.1)
        assert "fast" in await models(session)
        policy["models"][0]["provider"] = "nope"
        write_policy(gateway.config, policy)
        gateway.signal(signal.SIGHUP)
        for _ in range(100):
            if "reload refused" in gateway.log():
                break
            await asyncio.sleep(0.1)
        log = gateway.log()
        assert f"{gateway.config}: models[0].provider: unknown provider 'nope'" in log
        assert "fast" in await models(session)  # the running policy stays
        body = {"model": "fast", "messages": [{"role": "user", "content": "Hi"}]}
        async with session.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH
        ) as response:
            assert response.status == 200
    assert gateway.process is not None
    gateway.signal(signal.SIGTERM)
    assert await gateway.wait(20) == 0
