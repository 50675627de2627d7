"""The provider pool: the only place that talks HTTP to providers (chat and embeddings).

One ``aiohttp.ClientSession`` per provider (its own connection limit and timeouts), a concurrency
cap per provider whose waiting requests are served fairly (``providers.slots``: per-share queues,
round-robin, a bounded wait), SSE/NDJSON framing of streamed bodies, and translation of transport
failures into the gateway's error tree. Adapters stay pure; this module does their I/O.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp

from .base import Completion, ProviderAdapter, StreamEvent, StreamState, Target
from .embeddings import EmbeddingRequest, Embeddings
from .errors import (
    UnsupportedRequest,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from .registry import adapter_for, embedding_adapter_for
from .schema import ChatRequest
from .slots import FairSlots


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One provider as the pool sees it: its wire protocol and its connection limits."""

    name: str
    kind: str
    connect_timeout: float = 5.0
    first_byte_timeout: float = 60.0
    total_timeout: float = 300.0
    max_connections: int = 100
    slot_wait_timeout: float = 5.0  # for a free slot when all max_connections are in use


class _Member:
    __slots__ = ("adapter", "endpoint", "session", "slots", "stream_timeout")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.adapter: ProviderAdapter = adapter_for(endpoint.kind)
        self.session: aiohttp.ClientSession | None = None
        # The concurrency cap, waited for fairly and within slot_wait_timeout; the connector's
        # limit below is the same number, so the connector itself never queues a request.
        self.slots = FairSlots(endpoint.max_connections)
        # A stream may run as long as it keeps sending: no total, an idle (sock_read) limit.
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=endpoint.connect_timeout,
            sock_connect=endpoint.connect_timeout,
            sock_read=endpoint.first_byte_timeout,
        )

    def open(self) -> None:
        ep = self.endpoint
        # The connector's limit is the provider's concurrency cap (``slots`` admits no more).
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=ep.max_connections, limit_per_host=ep.max_connections, ttl_dns_cache=300
            ),
            timeout=aiohttp.ClientTimeout(
                total=ep.total_timeout,
                sock_connect=ep.connect_timeout,
                sock_read=ep.first_byte_timeout,
            ),
        )

    def started(self) -> aiohttp.ClientSession:
        if self.session is None:
            raise UpstreamConnectionError(
                f"the pool is not started for {self.endpoint.name}", provider=self.endpoint.name
            )
        return self.session


class ProviderPool:
    """Sends chat requests to providers through their adapters."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._members = {ep.name: _Member(ep) for ep in endpoints}

    async def start(self) -> None:
        """Open one client session per provider (needs a running event loop)."""
        for member in self._members.values():
            if member.session is None:
                member.open()

    async def close(self) -> None:
        """Close every session; in-flight requests fail with a connection error."""
        for member in self._members.values():
            if member.session is not None:
                await member.session.close()
                member.session = None

    def adapter(self, provider: str) -> ProviderAdapter:
        return self._member(provider).adapter

    def slots(self, provider: str) -> FairSlots:
        """The provider's connection slots (their use and queue, for tests and metrics)."""
        return self._member(provider).slots

    def _member(self, provider: str) -> _Member:
        try:
            return self._members[provider]
        except KeyError:
            raise UpstreamConnectionError(
                f"no provider named {provider!r} in the pool", provider=provider
            ) from None

    async def complete(self, target: Target, request: ChatRequest) -> Completion:
        """One non-streaming attempt. Raises an ``UpstreamError`` subclass on any failure."""
        member = self._member(target.provider)
        session = member.started()
        upstream = member.adapter.build_request(request, target)
        async with member.slots.slot(target.provider, member.endpoint.slot_wait_timeout):
            sent = time.perf_counter()
            try:
                async with session.request(
                    upstream.method, upstream.url, data=upstream.body, headers=upstream.headers
                ) as response:
                    body = await response.read()
                    status = response.status
                    headers = response.headers
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise _redacted(_transport_error(exc, target.provider), target) from exc
            wire_s = time.perf_counter() - sent
        if status >= 400:
            raise _redacted(member.adapter.classify_error(status, headers, body, target), target)
        try:
            completion = member.adapter.parse_response(body, target)
        except UpstreamError as exc:
            raise _redacted(exc, target) from exc.__cause__
        completion.wire_s = wire_s
        return completion

    @contextlib.asynccontextmanager
    async def stream(self, target: Target, request: ChatRequest) -> AsyncIterator[UpstreamStream]:
        """Open a streaming attempt.

        Errors before the first event raise here; later ones while iterating the stream.
        """
        member = self._member(target.provider)
        session = member.started()
        upstream = member.adapter.build_request(request, target)
        opened = False
        async with member.slots.slot(target.provider, member.endpoint.slot_wait_timeout):
            try:
                async with session.request(
                    upstream.method,
                    upstream.url,
                    data=upstream.body,
                    headers=upstream.headers,
                    timeout=member.stream_timeout,
                ) as response:
                    if response.status >= 400:
                        body = await response.read()
                        raise member.adapter.classify_error(
                            response.status, response.headers, body, target
                        )
                    opened = True
                    yield UpstreamStream(member.adapter, target, response)
            except UpstreamError as exc:
                raise _redacted(exc, target) from exc.__cause__
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if opened:
                    raise  # raised by the caller's body (e.g. writing to its client), not ours
                raise _redacted(_transport_error(exc, target.provider), target) from exc

    async def embed(self, target: Target, request: EmbeddingRequest) -> Embeddings:
        """One embedding attempt: the inputs in batches of the adapter's ``max_batch``, sent in
        order, their vectors joined. Raises an ``UpstreamError`` subclass on any failure."""
        member = self._member(target.provider)
        adapter = embedding_adapter_for(member.endpoint.kind)
        if adapter is None:
            kind = member.endpoint.kind
            raise UnsupportedRequest(f"{target.provider} ({kind}) has no embeddings API")
        session = member.started()
        texts = request.texts
        parts: list[Embeddings] = []
        async with member.slots.slot(target.provider, member.endpoint.slot_wait_timeout):
            for start in range(0, len(texts), adapter.max_batch):
                batch = texts[start : start + adapter.max_batch]
                upstream = adapter.build_embedding_request(batch, request, target)
                sent = time.perf_counter()
                try:
                    async with session.request(
                        upstream.method, upstream.url, data=upstream.body, headers=upstream.headers
                    ) as response:
                        body = await response.read()
                        status, headers = response.status, response.headers
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    raise _redacted(_transport_error(exc, target.provider), target) from exc
                wire_s = time.perf_counter() - sent
                if status >= 400:
                    raise _redacted(adapter.classify_error(status, headers, body, target), target)
                try:
                    part = adapter.parse_embeddings(body, target, batch)
                except UpstreamError as exc:
                    raise _redacted(exc, target) from exc.__cause__
                part.wire_s = wire_s
                parts.append(part)
        if len(parts) == 1:
            return parts[0]
        rows: list[Any] = []
        for part in parts:  # one adapter: every batch in the same encoding
            rows.extend(part.vectors)
        return Embeddings(
            vectors=rows,
            served_model=parts[0].served_model,
            prompt_tokens=sum(part.prompt_tokens for part in parts),
            estimated=any(part.estimated for part in parts),
            wire_s=sum(part.wire_s for part in parts),
        )


class UpstreamStream:
    """The chunks of one streamed answer, translated to OpenAI ``chat.completion.chunk`` dicts."""

    def __init__(
        self, adapter: ProviderAdapter, target: Target, response: aiohttp.ClientResponse
    ) -> None:
        self._adapter = adapter
        self._response = response
        self.state: StreamState = adapter.new_stream(target)
        self.target = target

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        frames = _sse(self._response) if self._adapter.framing == "sse" else _ndjson(self._response)
        provider = self.target.provider
        try:
            async for event in frames:
                for chunk in self._adapter.parse_stream_event(event, self.state):
                    yield chunk
                if self.state.done:
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _transport_error(exc, provider) from exc
        raise UpstreamProtocolError(
            f"{self.target.provider} ended the stream before its final event",
            provider=self.target.provider,
        )


async def _sse(response: aiohttp.ClientResponse) -> AsyncIterator[StreamEvent]:
    """Server-sent events (WHATWG): ``event:``/``data:`` fields; a blank line dispatches."""
    event: str | None = None
    data: list[bytes] = []
    async for raw in _lines(response):
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield StreamEvent(data=b"\n".join(data), event=event)
            event, data = None, []
            continue
        if line.startswith(b":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    if data:  # a final event without its blank line
        yield StreamEvent(data=b"\n".join(data), event=event)


async def _ndjson(response: aiohttp.ClientResponse) -> AsyncIterator[StreamEvent]:
    async for raw in _lines(response):
        line = raw.strip()
        if line:
            yield StreamEvent(data=line)


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for line in response.content:
            yield line
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamProtocolError(
            f"the stream from {response.url.host} was cut: {exc}", provider=""
        ) from exc
    except ValueError as exc:  # a line over aiohttp's read limit
        raise UpstreamProtocolError(f"stream line too long: {exc}", provider="") from exc


def _transport_error(exc: BaseException, provider: str) -> UpstreamError:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"{provider} did not answer in time", provider=provider)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamProtocolError(f"{provider} sent a truncated body", provider=provider)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectionError(
            f"cannot connect to {provider}: {exc.os_error.strerror or exc}", provider=provider
        )
    # Connected, then dropped before an answer (reset, server disconnected): often a stale
    # keep-alive connection, which one immediate retry fixes.
    return UpstreamConnectionError(
        f"connection to {provider} was dropped: {type(exc).__name__}",
        provider=provider,
        code="upstream_connection_reset",
    )


def _owned(exc: UpstreamError, provider: str) -> UpstreamError:
    if not exc.provider:
        exc.provider = provider
    return exc


def _redacted(exc: UpstreamError, target: Target) -> UpstreamError:
    """Strip the provider key from an error message, in case an upstream quoted it back."""
    _owned(exc, target.provider)
    secret = target.api_key
    if secret and len(secret) >= 6 and secret in exc.message:
        exc.message = exc.message.replace(secret, "[redacted]")
        exc.args = (exc.message,)
    return exc
