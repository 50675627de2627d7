"""The providers' error vocabulary: what went wrong talking to an upstream, classified once.

Adapters and the pool translate library exceptions and provider error bodies into these at the
boundary (``raise ... from exc``); nothing here knows the status the gateway answers with, teams
or routes. ``gateway.core.errors`` maps each class to the client's HTTP status in one table.

    ProviderError                  code: a stable short name (metrics, decision records)
    ├── UnsupportedRequest         this wire format cannot say the request (the client's error)
    └── UpstreamError              a provider failed; ``retryable``: may another try help
        ├── UpstreamRateLimited        429, Gemini RESOURCE_EXHAUSTED; the provider's retry_after
        ├── UpstreamOverloaded         5xx, Anthropic 529, Gemini UNAVAILABLE
        │   └── PoolSaturated          no free connection slot here in time (local, not upstream)
        ├── UpstreamTimeout            connect, first byte or deadline
        ├── UpstreamConnectionError    refused, DNS (code ..._reset: dropped before a byte)
        ├── ContentBlocked             moderation / safety block (not retryable)
        ├── UpstreamInvalidRequest     refused as invalid: the client's error (not retryable)
        ├── UpstreamAuthError          the provider rejected the gateway's credentials
        ├── UpstreamModelNotFound      the pinned model is gone (404): a misconfiguration
        └── UpstreamProtocolError      non-JSON body, truncated stream, unknown shape
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every error ``providers/`` raises. ``code`` names the class for records."""

    code: str = "provider_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param  # the request field at fault, when the client's


class UnsupportedRequest(ProviderError):
    """The request asks for something this wire format cannot express (e.g. an image in a
    Gemini system instruction): the client's error, raised before any call."""

    code = "invalid_request"


class UpstreamError(ProviderError):
    """A provider failed. ``provider`` names it; ``retryable`` says whether another try may help."""

    code = "upstream_error"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        upstream_status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.provider = provider
        self.upstream_status = upstream_status
        self.retry_after = retry_after  # seconds the provider asked us to wait

    @property
    def error_class(self) -> str:
        """A stable short name for metrics and decision records."""
        return self.code


class UpstreamRateLimited(UpstreamError):
    """429 from the provider (or Gemini RESOURCE_EXHAUSTED)."""

    code = "upstream_rate_limited"


class UpstreamOverloaded(UpstreamError):
    """5xx, Anthropic's 529 ``overloaded_error``, Gemini ``UNAVAILABLE``."""

    code = "upstream_overloaded"


class PoolSaturated(UpstreamOverloaded):
    """Every connection slot of the provider on this replica stayed taken (or the caller's share
    of them) for the whole slot wait: the gateway's own saturation, not the provider's fault, so
    it counts toward no breaker; the next candidate is tried."""

    code = "pool_saturated"


class UpstreamTimeout(UpstreamError):
    """Connect, time-to-first-byte or overall deadline exceeded."""

    code = "upstream_timeout"


class UpstreamConnectionError(UpstreamError):
    """Connection refused, reset or unresolvable host."""

    code = "upstream_connection_error"


class ContentBlocked(UpstreamError):
    """The provider's moderation or safety layer refused the prompt or the answer."""

    code = "content_blocked"
    retryable = False


class UpstreamInvalidRequest(UpstreamError):
    """The provider rejected the request as invalid: the client's error, returned as is."""

    code = "upstream_invalid_request"
    retryable = False


class UpstreamAuthError(UpstreamError):
    """The provider rejected the gateway's own credentials: a misconfiguration, not the client's."""

    code = "upstream_auth_error"


class UpstreamModelNotFound(UpstreamError):
    """The provider does not serve the pinned model (404): the operator's error, never the client's.

    Retryable: another candidate may serve the request while someone fixes the pin.
    """

    code = "upstream_model_not_found"


class UpstreamProtocolError(UpstreamError):
    """The provider answered with something that is not its documented format."""

    code = "bad_upstream_response"
