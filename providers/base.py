"""The one seam every wire protocol plugs into.

An adapter is a class satisfying ``ProviderAdapter``: pure translations between the canonical
OpenAI chat format and one provider's wire format. It does no I/O: ``ProviderPool`` sends what
``build_request`` describes, hands the body to ``parse_response`` (or each framed stream event to
``parse_stream_event``) and any non-2xx answer to ``classify_error``. Adding a provider means one
module, one config union member and one registry entry.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from .errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamModelNotFound,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from .schema import ChatRequest

Framing = Literal["sse", "ndjson"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: a provider's endpoint and the pinned upstream model id."""

    provider: str
    base_url: str  # without a trailing slash
    model: str  # upstream model id, e.g. "claude-sonnet-4-20250514"
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """An HTTP request for the pool to send."""

    url: str
    headers: Mapping[str, str]
    body: bytes
    stream: bool
    method: str = "POST"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(slots=True)
class Completion:
    """A complete answer in OpenAI ``chat.completion`` form, plus what the gateway records."""

    body: dict[str, Any]
    served_model: str  # the upstream version that actually answered
    usage: Usage
    finish_reason: str | None
    wire_s: float = 0.0  # time on the wire: request sent to body read (set by the pool)


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One framed stream event: an SSE event (``event`` may be None) or one NDJSON line."""

    data: bytes
    event: str | None = None


@dataclass(slots=True)
class StreamState:
    """What an adapter remembers while translating one stream; created by ``new_stream``."""

    id: str
    model: str
    provider: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    served_model: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    done: bool = False  # the provider's terminal event was seen
    role_sent: bool = False
    # Adapter-private bookkeeping, e.g. content-block index -> tool-call index.
    scratch: dict[str, Any] = field(default_factory=dict)

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        """An OpenAI ``chat.completion.chunk`` with one choice."""
        if not self.role_sent:
            delta = {"role": "assistant", **delta}
            self.role_sent = True
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.served_model or self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    def usage_chunk(self) -> dict[str, Any]:
        """The final OpenAI usage chunk (``stream_options.include_usage``)."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.served_model or self.model,
            "choices": [],
            "usage": self.usage.to_openai(),
        }


class ProviderAdapter(Protocol):
    """Pure translation between OpenAI's chat format and one provider's wire format."""

    framing: Framing
    """How the provider frames a streamed body."""

    def build_request(self, request: ChatRequest, target: Target) -> UpstreamRequest:
        """The upstream HTTP request for ``request`` sent to ``target``.

        Raises ``UnsupportedRequest`` for what the provider cannot express.
        """
        ...

    def parse_response(self, body: bytes, target: Target) -> Completion:
        """Translate a 2xx non-streaming body. Raises ``UpstreamError`` (e.g. a safety block)."""
        ...

    def new_stream(self, target: Target) -> StreamState:
        """Fresh state for translating one streamed answer."""
        ...

    def parse_stream_event(self, event: StreamEvent, state: StreamState) -> list[dict[str, Any]]:
        """OpenAI chunks for one framed event; sets ``state.done`` on the terminal event.

        Usage is accumulated in ``state.usage`` rather than emitted: the gateway sends the usage
        chunk itself when the client asked for it. In-stream errors raise ``UpstreamError``.
        """
        ...

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes, target: Target
    ) -> UpstreamError:
        """The gateway error for a non-2xx answer."""
        ...


OPENAI_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (delta-seconds form).

    ``headers`` must be case-insensitive (aiohttp's ``CIMultiDictProxy``).
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            return None  # HTTP-date form: rare from LLM providers; treated as unknown
    return None


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def load_json(body: bytes, provider: str) -> Any:
    """Parse an upstream JSON body; anything else is a protocol error (502), not a traceback."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        snippet = body[:80].decode("utf-8", "replace")
        raise UpstreamProtocolError(
            f"{provider} returned a body that is not JSON: {snippet!r}", provider=provider
        ) from exc


def classify_status(
    status: int,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
) -> UpstreamError:
    """The default mapping of an upstream HTTP status to the error tree.

    Adapters call it after pulling the provider's own message out of the error body, and
    special-case what the status alone cannot tell (a safety block sent as 400, say).
    """
    kwargs: dict[str, Any] = {
        "provider": provider,
        "upstream_status": status,
        "retry_after": retry_after,
    }
    if status in (401, 403):
        # Never echo the provider's text: it may quote the key it rejected.
        return UpstreamAuthError(
            f"{provider} rejected the gateway's credentials (HTTP {status})", **kwargs
        )
    if status == 404:
        # The gateway pinned the model and built the URL: a 404 is its configuration's fault.
        return UpstreamModelNotFound(
            f"{provider} does not serve the pinned model: {message}", **kwargs
        )
    if status == 429:
        return UpstreamRateLimited(f"{provider} is rate limiting: {message}", **kwargs)
    if status == 408:
        return UpstreamTimeout(f"{provider} timed out: {message}", **kwargs)
    if status >= 500:
        return UpstreamOverloaded(f"{provider} failed (HTTP {status}): {message}", **kwargs)
    if 400 <= status < 500:
        return UpstreamInvalidRequest(message or f"{provider} rejected the request", **kwargs)
    return UpstreamProtocolError(f"{provider} answered HTTP {status}", **kwargs)
