"""The gateway's one error tree.

Every failure a client can see is one of these; one middleware turns them into OpenAI-style
``{"error": {"message", "type", "code"}}`` bodies. Library exceptions are translated once, at the
boundary where they happen (``raise ... from exc``). Provider adapters classify upstream failures
into the ``UpstreamError`` branch, so this module is the one vocabulary that ``providers/`` shares
with ``gateway/``; it imports nothing from either.

    GatewayError                       500 server_error
    ├── InvalidRequest                 400 invalid_request_error   (bad JSON, schema, parameters)
    │   ├── PayloadTooLarge            413
    │   └── InvalidPolicy              400 invalid_policy          (a reload refused; the old stays)
    ├── AuthenticationFailed           401 authentication_error     (missing or unknown team key)
    ├── ModelNotAllowed                403 permission_error        (route not in the team's policy)
    ├── ModelNotFound                  404 invalid_request_error   (no such route or alias)
    ├── RateLimitExceeded              429 requests|tokens|budget  (a team over its limits)
    ├── TeamExists / TeamNotFound      409 / 404                   (admin: team registry)
    ├── CacheNotConfigured             409                         (admin: no cache section)
    ├── TeamsUnavailable               503 service_unavailable     (admin: Redis down)
    ├── NoEligibleProvider             503 service_unavailable     (residency left no candidate)
    ├── AllProvidersFailed             503 service_unavailable     (every attempt failed, listed)
    ├── DeadlineExceeded               504 timeout                 (the request's deadline ran out)
    └── UpstreamError                  502 upstream_error            (a provider failed)
        ├── UpstreamRateLimited        429  retry_after from the provider
        ├── UpstreamOverloaded         503  5xx, Anthropic 529, Gemini UNAVAILABLE
        ├── UpstreamTimeout            504  connect, first byte or deadline
        ├── UpstreamConnectionError    502  refused, DNS (code ..._reset: dropped before a byte)
        ├── ContentBlocked             400  moderation / safety block
        ├── UpstreamInvalidRequest     400  the provider rejected the request: the client's error
        ├── UpstreamAuthError          502  the provider rejected the gateway's credentials
        ├── UpstreamModelNotFound      502  the pinned model is gone (404): a misconfiguration
        └── UpstreamProtocolError      502  non-JSON body, truncated stream, unknown shape
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        # Headers the pipeline adds on the way out (request id, regions the prompt reached).
        self.extra_headers: dict[str, str] = {}
        # The router's attempts (provider, region, error class), when any were made.
        self.attempts: list[dict[str, Any]] | None = None
        self.retry_after: float | None = None  # seconds, sent as Retry-After

    def to_body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
        }
        if self.attempts is not None:
            error["attempts"] = self.attempts
        return {"error": error}

    def headers(self) -> dict[str, str]:
        """Response headers this error carries (``Retry-After``, the pipeline's extras)."""
        return {**self._own_headers(), **self.extra_headers}

    def _own_headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class InvalidRequest(GatewayError):
    """The client's request is malformed or asks for something impossible."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    """The request body is over the configured limit."""

    status = 413
    code = "payload_too_large"


class AuthenticationFailed(GatewayError):
    """No team key, or one the policy does not know."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotAllowed(GatewayError):
    """The route or alias exists but the caller's team may not use it."""

    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class ModelNotFound(GatewayError):
    """The client named a route or alias the policy does not define."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class InvalidPolicy(InvalidRequest):
    """A policy file a reload refused; the running policy stays."""

    code = "invalid_policy"


class RateLimitExceeded(GatewayError):
    """A team is over one of its limits: 429 with Retry-After, OpenAI's ``rate_limit_exceeded``."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, retry_after: float) -> None:
        super().__init__(message)
        self.type = kind  # "requests" | "tokens" | "budget", as OpenAI's 429 bodies say
        self.retry_after = max(1.0, retry_after)


class TeamExists(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "team_exists"


class TeamNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "team_not_found"


class CacheNotConfigured(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "cache_not_configured"


class TeamsUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "team_store_unavailable"


class NoEligibleProvider(GatewayError):
    """Every candidate of the route was filtered out before any call (e.g. by residency)."""

    status = 503
    type = "service_unavailable"
    code = "no_eligible_provider"


class _WithAttempts(GatewayError):
    """An error that lists every attempt the router made (provider, region, error class)."""

    def __init__(
        self,
        message: str,
        *,
        attempts: list[dict[str, Any]],
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.retry_after = retry_after


class AllProvidersFailed(_WithAttempts):
    """Every eligible candidate was tried (within the attempt budget) and failed."""

    status = 503
    type = "service_unavailable"
    code = "all_providers_failed"


class DeadlineExceeded(_WithAttempts):
    """The request's overall deadline ran out before any candidate answered."""

    status = 504
    type = "timeout"
    code = "deadline_exceeded"


class UpstreamError(GatewayError):
    """A provider failed. ``provider`` names it; ``retryable`` says whether another try may help."""

    status = 502
    type = "upstream_error"
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
        self.retry_after = retry_after

    @property
    def error_class(self) -> str:
        """A stable short name for metrics and decision records."""
        return self.code


class UpstreamRateLimited(UpstreamError):
    """429 from the provider (or Gemini RESOURCE_EXHAUSTED)."""

    status = 429
    type = "rate_limit_error"
    code = "upstream_rate_limited"


class UpstreamOverloaded(UpstreamError):
    """5xx, Anthropic's 529 ``overloaded_error``, Gemini ``UNAVAILABLE``."""

    status = 503
    code = "upstream_overloaded"


class UpstreamTimeout(UpstreamError):
    """Connect, time-to-first-byte or overall deadline exceeded."""

    status = 504
    code = "upstream_timeout"


class UpstreamConnectionError(UpstreamError):
    """Connection refused, reset or unresolvable host."""

    code = "upstream_connection_error"


class ContentBlocked(UpstreamError):
    """The provider's moderation or safety layer refused the prompt or the answer."""

    status = 400
    type = "invalid_request_error"
    code = "content_blocked"
    retryable = False


class UpstreamInvalidRequest(UpstreamError):
    """The provider rejected the request as invalid: the client's error, returned as is."""

    status = 400
    type = "invalid_request_error"
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
