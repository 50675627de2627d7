"""Raw HTTP/1.1 over a socket, for what an HTTP client library refuses to send: header bytes that
are not UTF-8, malformed request lines, bodies trickled or stalled."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


def parse(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


async def exchange(port: int, request: bytes, *, timeout_s: float = 10.0) -> RawResponse:
    """Send ``request`` as is on a fresh connection (``Connection: close`` is the caller's) and
    read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            raw = await reader.read(-1)
    finally:
        writer.close()
    return parse(raw)


def request(method: str, path: str, headers: list[tuple[str, bytes]], body: bytes = b"") -> bytes:
    """An HTTP/1.1 request with ``Connection: close``; header values as raw bytes."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
