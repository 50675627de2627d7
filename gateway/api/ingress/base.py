"""The ingress seam: what one client-facing wire format must provide.

An ``IngressFormat`` is stateless and shared (one per format); ``parse`` turns a request body into
an ``Exchange``, which holds the internal request and whatever the format needs to render this
request's answer (Responses echoes its parameters back, say). A streamed answer goes through one
``StreamEncoder`` per response, fed the internal ``chat.completion.chunk`` dicts in order.
Nothing here does I/O: the pipeline reads the body and writes what these return.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from gateway.core.errors import GatewayError
from gateway.policy.catalog import Catalog
from gateway.policy.model import TeamConfig
from providers.base import Completion, StreamState
from providers.schema import ChatRequest


class StreamEncoder(Protocol):
    """The client's stream events for one answer, from the internal chunks."""

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """Bytes for one ``chat.completion.chunk`` (empty when the format has nothing to send)."""
        ...

    def failed(self, error: GatewayError) -> bytes:
        """The format's in-stream error event: the upstream failed after content was sent."""
        ...

    def end(self, state: StreamState, completed: bool) -> bytes:
        """The closing events; ``state`` has the usage and finish reason, ``completed`` says
        whether the upstream stream finished (``False`` after ``failed``)."""
        ...


class Exchange(Protocol):
    """One request in one format: the internal request and how to render its answer."""

    chat: ChatRequest
    headers: Mapping[str, str]
    """Response headers the format adds (Anthropic's ``request-id``), besides the gateway's."""

    def render(self, completion: Completion) -> bytes:
        """The JSON body of a complete answer."""
        ...

    def encoder(self) -> StreamEncoder:
        """A fresh encoder for this request's streamed answer."""
        ...


class IngressFormat(Protocol):
    """A client-facing wire format: authentication, request parsing and error rendering."""

    api: str
    """The name the decision record and metrics carry, e.g. ``"anthropic.messages"``."""

    def authenticate(self, catalog: Catalog, headers: Mapping[str, str]) -> TeamConfig:
        """The calling team, from the format's credential headers."""
        ...

    def parse(self, body: dict[str, Any], request_id: str) -> Exchange:
        """The exchange for a JSON body; raises ``InvalidRequest`` naming the field at fault."""
        ...

    def error_response(self, error: GatewayError, request_id: str) -> web.Response:
        """``error`` in the format's own error shape and status."""
        ...
