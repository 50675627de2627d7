"""Slow clients do not hold sockets: a request's headers trickled at 1 byte a second, a socket
that sends nothing, and a body that stalls are cut off by the header and body read timeouts
(``GATEWAY_HEADER_TIMEOUT_S``, ``GATEWAY_BODY_TIMEOUT_S``); a stalled body gets a 408 in the
client's error shape. Also: metric labels stay bounded whatever task names clients send."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from gateway.policy.model import hash_key
from tests.conftest import TEAM_KEY
from tests.rawhttp import parse

ADMIN_KEY = "slow-admin-key-0123456789"
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


async def slow_gateway(make_gateway: Any) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await make_gateway(
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        admin_key_sha256=hash_key(ADMIN_KEY),
    )
    return client


async def closed_after(reader: asyncio.StreamReader, limit_s: float) -> tuple[float, bytes]:
    """Seconds until the server closes the connection (EOF), and what it sent before."""
    started = time.perf_counter()
    async with asyncio.timeout(limit_s):
        data = await reader.read(-1)
    return time.perf_counter() - started, data


async def test_headers_trickled_at_one_byte_a_second_are_cut_off(make_gateway: Any) -> None:
    gateway = await slow_gateway(make_gateway)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    head = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer x\r\n"

    async def trickle() -> None:
        for byte in head:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.25)  # 4 B/s: faster than the brief's 1 B/s, still too slow

    sender = asyncio.create_task(trickle())
    try:
        # Generous slack on a loaded host; without the timeout it would never close.
        elapsed, _ = await closed_after(reader, 15)
    finally:
        sender.cancel()
        writer.close()
    assert HEADER_TIMEOUT_S * 0.8 <= elapsed < 10


async def test_a_socket_that_sends_nothing_is_closed(make_gateway: Any) -> None:
    gateway = await slow_gateway(make_gateway)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        elapsed, data = await closed_after(reader, 15)
    finally:
        writer.close()
    assert data == b""
    assert elapsed < 10


async def test_a_stalled_body_gets_a_408_and_the_connection_closes(make_gateway: Any) -> None:
    gateway = await slow_gateway(make_gateway)
    for path, key in (
        ("/v1/chat/completions", TEAM_KEY),
        ("/v1/messages", TEAM_KEY),
        ("/admin/quality/promote", ADMIN_KEY),
        ("/admin/quality/promote", "not-the-admin-key"),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        body = orjson.dumps({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]  # then nothing more
        )
        await writer.drain()
        try:
            elapsed, data = await closed_after(reader, 15)
        finally:
            writer.close()
        if key != TEAM_KEY and key != ADMIN_KEY:
            # Refused before its body is read: the connection closes after aiohttp's lingering
            # read (10 s at most) of the unread body.
            assert parse(data).status == 401
            assert elapsed < 20
            continue
        assert elapsed < 8, (path, elapsed)  # the body timeout, then at once
        response = parse(data)
        assert response.status == 408, data[:300]
        assert response.headers["content-type"].startswith("application/json")
        error = orjson.loads(response.body)
        if path == "/v1/messages":
            assert error["type"] == "error"
        else:
            assert error["error"]["code"] == "request_timeout"


async def test_a_prompt_client_is_not_affected(make_gateway: Any) -> None:
    gateway = await slow_gateway(make_gateway)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        for _ in range(2):  # keep-alive: a second request on the same connection
            auth = f"Authorization: Bearer {TEAM_KEY}\r\n"
            writer.write(f"GET /v1/models HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
            assert b" 200 " in status_line
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            await asyncio.sleep(HEADER_TIMEOUT_S * 1.5)  # idle between requests: keep-alive
    finally:
        writer.close()


async def test_client_task_names_do_not_grow_the_metrics(gateway: TestClient[Any, Any]) -> None:
    headers = {"Authorization": f"Bearer {TEAM_KEY}"}
    chat = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
    for i in range(3):  # the series every request creates, before counting
        response = await gateway.post(
            "/v1/chat/completions", json=chat, headers={**headers, "x-gateway-task": f"w{i}"}
        )
        assert response.status == 200
    before = await (await gateway.get("/metrics")).text()
    for i in range(300):
        response = await gateway.post(
            "/v1/chat/completions",
            json=chat,
            headers={**headers, "x-gateway-task": f"task-{i:03}"},
        )
        assert response.status == 200
        assert response.headers.get("x-gateway-task", f"task-{i:03}") == f"task-{i:03}"
    after = await (await gateway.get("/metrics")).text()
    assert "task-" not in after
    assert 'task_type="other"' in after
    series = [line for line in after.splitlines() if line and not line.startswith("#")]
    series_before = [line for line in before.splitlines() if line and not line.startswith("#")]
    assert len(series) == len(series_before), set(series) ^ set(series_before)
    assert len(after) < len(before) * 1.2  # counts grow in digits, not in series
