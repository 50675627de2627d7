"""Loopback fake providers: real HTTP servers on 127.0.0.1 speaking a provider's wire format.

Each fake records every request it receives (``requests``) and answers from a script of
behaviours (``script``), falling back to ``default`` when the script is empty. Subclasses render
the provider's own formats for each behaviour; the behaviours themselves are shared so that one
conformance suite can drive every provider the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class Ok:
    """A normal answer; with ``tool_call`` (name, arguments) and tools in the request, a call."""

    text: str = "Hello from the fake provider."
    tool_call: tuple[str, dict[str, Any]] | None = None
    served_model: str | None = None  # default: echo the requested model
    prompt_tokens: int = 11
    completion_tokens: int = 7
    finish: str = "stop"  # "stop" or "length"
    delay_s: float = 0.0  # between streamed pieces (OpenAI fake): a long generation


@dataclass(frozen=True)
class Fail:
    """An HTTP error in the provider's documented error body."""

    status: int
    message: str = "simulated failure"
    retry_after: float | None = None


@dataclass(frozen=True)
class Malformed:
    """HTTP 200 with a body that is not the provider's format (an HTML error page)."""


@dataclass(frozen=True)
class CutStream:
    """A streamed answer that stops mid-way: some content, then the connection closes."""

    text: str = "Hello from the"


@dataclass(frozen=True)
class Blocked:
    """The provider's moderation / safety layer refuses the prompt."""


@dataclass(frozen=True)
class Drop:
    """Accept the request, then close the connection without a byte of answer (a reset)."""


@dataclass(frozen=True)
class Hang:
    """Wait ``seconds`` before answering with ``then``."""

    seconds: float
    then: Any = field(default_factory=Ok)


Behaviour = Ok | Fail | Malformed | CutStream | Blocked | Hang | Drop


class _Dropped(Exception):
    """Raised inside a handler after the connection was aborted on purpose."""


@web.middleware
async def _drop_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Dropped:
        return web.Response(status=499)  # never sent: the transport is gone


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class FakeProvider:
    """Base of the loopback fakes. Subclasses add routes and render each behaviour."""

    def __init__(self, *, region: str = "us") -> None:
        self.region = region
        self.requests: list[RecordedRequest] = []
        self.script: deque[Behaviour] = deque()
        self.default: Behaviour = Ok()
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Requests whose connection the client closed before the answer was complete (the
        # handler was cancelled, or a streamed write found the connection gone).
        self.closed_early = 0

    # -- lifecycle -------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    async def start(self) -> str:
        @web.middleware
        async def watch_close(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            try:
                return await handler(request)
            except (asyncio.CancelledError, ConnectionResetError):
                self.closed_early += 1
                raise

        app = web.Application(middlewares=[watch_close, _drop_middleware])
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None)
        assert sockets
        self.port = sockets[0].getsockname()[1]
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting -------------------------------------------------------------------------
    def push(self, *behaviours: Behaviour) -> None:
        self.script.extend(behaviours)

    async def record(self, request: web.Request) -> tuple[Any, Behaviour]:
        """Log the request and pick the behaviour for it (after any ``Hang``)."""
        raw = await request.read()
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        behaviour = self.script.popleft() if self.script else self.default
        while isinstance(behaviour, Hang):
            await asyncio.sleep(behaviour.seconds)
            behaviour = behaviour.then
        if isinstance(behaviour, Drop):
            if request.transport is not None:
                request.transport.abort()
            raise _Dropped
        return body, behaviour


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def malformed_response() -> web.Response:
    return web.Response(
        text="<html><body><h1>502 Bad Gateway</h1></body></html>",
        status=200,
        content_type="application/json",
    )


async def start_stream(request: web.Request, content_type: str) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


async def cut_connection(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Close the socket without the stream's terminal event or chunked-encoding trailer."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response


def words(text: str) -> list[str]:
    """Split text into stream deltas that concatenate back to ``text``."""
    parts = text.split(" ")
    return [p if i == len(parts) - 1 else p + " " for i, p in enumerate(parts)]


FAKE_EMBEDDING_DIM = 8


def fake_vector(text: str, dim: int = FAKE_EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector for ``text``: the same text always embeds the same."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [digest[i % len(digest)] / 255 - 0.5 for i in range(dim)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def fake_token_count(text: str) -> int:
    """The fakes' token count for an embedding input: its words (a provider-like number)."""
    return max(1, len(text.split()))
