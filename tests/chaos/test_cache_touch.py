"""Found by the chaos run: a cache hit's background bookkeeping failing against Redis left
"Task exception was never retrieved" errors behind (the hit was served; the failure was lost).

Here a real ``redis-server`` refuses ``HINCRBY`` (renamed away), so every hit's touch fails while
lookups and stores work.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.cli.localmodel import free_port
from gateway.core.runtime import RUNTIME
from tests.conftest import TEAM_KEY, Fakes, policy_for


@pytest.fixture
def redis_without_hincrby() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--rename-command", "HINCRBY", ""]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.kill()
    process.wait()


async def test_a_failing_hit_touch_is_a_counted_cache_error(
    make_gateway: Any, fakes: Fakes, embedder: Any, redis_without_hincrby: str
) -> None:
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unretrieved.append(context))
    try:
        policy = policy_for(fakes, cache={"static_threshold": 0.9})
        gateway = await make_gateway(policy, embedder=embedder, redis_url=redis_without_hincrby)
        body = {"model": "gpt", "messages": [{"role": "user", "content": "Where is my parcel?"}]}
        headers = {"Authorization": f"Bearer {TEAM_KEY}"}
        stage = gateway.app[RUNTIME].interceptors[0]
        hits = []
        for i in range(3):
            response = await gateway.post("/v1/chat/completions", json=body, headers=headers)
            assert response.status == 200
            hits.append(response.headers["x-gateway-cache"])
            if i == 0:
                await stage.drain()  # type: ignore[attr-defined]  # the miss is stored
        await asyncio.sleep(0.5)  # the hits' touches finish on their own (nobody awaits them)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert hits == ["miss", "hit", "hit"]
    assert unretrieved == []
    # Hits are counted in memory and flushed in batches (every 50 ms), so the two hits' touches may
    # fail as one flush: at least one counted error, none lost.
    errors = gateway.app[RUNTIME].metrics.cache_errors.labels("touch")._value.get()
    assert 1 <= errors <= 2
