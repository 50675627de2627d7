"""The gateway's side of each TCP connection: a header read timeout, and aiohttp's own HTTP
errors in the OpenAI error shape.

aiohttp has no header read timeout: a client that trickles a request's headers (1 byte a second)
or opens a socket and sends nothing holds it forever. ``GuardedRequestHandler`` closes a
connection whose first request's headers are not complete within ``header_timeout_s``; after a
response, aiohttp's keep-alive timeout bounds the idle time before the next one. (The body has
its own limit, ``body_timeout_s``, applied where it is read: ``gateway.core.body``.)

Requests that do not parse (a malformed request line or header) never reach the middlewares;
aiohttp answers them itself, in ``text/plain`` and with a logged traceback. The handler answers
them in the client's error shape (Anthropic's on ``/v1/messages``, OpenAI's elsewhere) with one
log line instead.

``install`` hooks this into an application so every runner uses it: ``gateway serve``, the
tests' ``aiohttp_client`` and their threaded servers alike.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.core.errors import GatewayError, InvalidRequest

from .ingress.anthropic_messages import ANTHROPIC_MESSAGES
from .responses import error_response

log = logging.getLogger(__name__)

_METHODS = (b"POST ", b"GET ", b"PUT ", b"DELETE ", b"HEAD ", b"PATCH ", b"OPTIONS ")


class GuardedRequestHandler(RequestHandler):
    """aiohttp's request handler with a deadline for the first request's headers."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._request_line = b""
        self._header_timer: asyncio.TimerHandle | None = self._loop.call_later(
            self.header_timeout_s, self._headers_overdue
        )

    def data_received(self, data: bytes) -> None:
        if data.startswith(_METHODS):
            # The latest request line seen, for the error shape of a request that fails to parse
            # (aiohttp then hands handle_error a placeholder request without its path).
            self._request_line = data[:80]
        super().data_received(data)
        if self._request_count and self._header_timer is not None:
            self._header_timer.cancel()  # the first request's headers are in
            self._header_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if self._request_count == 0 and self.transport is not None:
            peer = self.transport.get_extra_info("peername")
            log.info(
                "closing a connection from %s: no complete request headers in %g s",
                peer[0] if isinstance(peer, tuple) else peer,
                self.header_timeout_s,
            )
            self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """An HTTP request aiohttp could not parse: the client's error shape, one log line, no
        traceback (a failure outside any handler, a 500, keeps its traceback); the connection is
        closed."""
        reason = message or (str(exc) if exc is not None else "")
        if status >= 500:  # not the client's doing: a gateway bug keeps its traceback
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        else:
            log.info("malformed HTTP request from %s: %d %s", request.remote, status, reason[:200])
        if request.writer.output_size > 0:
            raise ConnectionError("the response was under way; the connection is closed")
        error: GatewayError
        if status >= 500:
            error = GatewayError("The gateway failed to handle the request.")
        else:
            text = f"Malformed HTTP request: {reason[:200] or 'unreadable'}"
            error = InvalidRequest(text, code="malformed_http")
            error.status = status
        request_id = f"{random.getrandbits(128):032x}"
        line = getattr(self, "_request_line", b"")
        if request.path.startswith("/v1/messages") or b" /v1/messages" in line:
            response = ANTHROPIC_MESSAGES.error_response(error, request_id)
        else:
            response = error_response(error, request_id)
        response.force_close()
        return response


def skip_lingering(request: web.Request) -> None:
    """Close the connection right after this request's response, without first draining the
    rest of its body for up to aiohttp's ``lingering_time`` (10 s): the body stalled."""
    protocol = request.protocol
    if isinstance(protocol, GuardedRequestHandler):
        protocol._lingering_time = 0.0


class GuardedServer(web.Server):
    """``web.Server`` that makes ``GuardedRequestHandler``s."""

    header_timeout_s: float = 10.0

    def __call__(self) -> RequestHandler:
        handler = GuardedRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout_s = self.header_timeout_s
        return handler


def install(app: web.Application, header_timeout_s: float) -> None:
    """Make every server built for ``app`` a ``GuardedServer``.

    aiohttp offers no parameter for the handler class; the application's server factory is the
    one place every runner goes through, so it is wrapped there."""
    make = app._make_handler

    def make_guarded(**kwargs: Any) -> web.Server:
        server = make(**kwargs)
        server.__class__ = GuardedServer  # same state; only __call__ differs
        assert isinstance(server, GuardedServer)
        server.header_timeout_s = header_timeout_s
        return server

    app._make_handler = make_guarded  # type: ignore[method-assign]
