"""The gateway's error tree, and the one place provider errors become HTTP.

Every failure a client can see is one of these; one middleware turns them into OpenAI-style
``{"error": {"message", "type", "code"}}`` bodies. Library exceptions are translated once, at the
boundary where they happen (``raise ... from exc``). Provider adapters classify upstream failures
into their own vocabulary (``providers.errors``); ``UpstreamFailure`` carries one to the client
with the status and type ``UPSTREAM_HTTP`` gives its class.

    GatewayError                       500 server_error
    ├── InvalidRequest                 400 invalid_request_error   (bad JSON, schema, parameters)
    │   ├── PayloadTooLarge            413
    │   ├── RequestTimedOut            408                         (the body did not arrive in time)
    │   └── InvalidPolicy              400 invalid_policy          (a reload refused; the old stays)
    ├── AuthenticationFailed           401 authentication_error     (missing or unknown team key)
    ├── ModelNotAllowed                403 permission_error        (route not in the team's policy)
    ├── ModelNotFound                  404 invalid_request_error   (no such route or alias)
    ├── RateLimitExceeded              429 requests|tokens|budget  (a team over its limits)
    ├── TeamExists / TeamNotFound      409 / 404                   (admin: team registry)
    ├── CacheNotConfigured             409                         (admin: no cache section)
    ├── KnowledgeNotConfigured         409                         (admin: no knowledge section)
    ├── TeamsUnavailable               503 service_unavailable     (admin: Redis down)
    ├── NoEligibleProvider             503 service_unavailable     (residency left no candidate)
    ├── AllProvidersFailed             503 service_unavailable     (every attempt failed, listed)
    ├── DeadlineExceeded               504 timeout                 (the request's deadline ran out)
    └── UpstreamFailure                a provider error as the client sees it (UPSTREAM_HTTP):
                                       UpstreamRateLimited 429, UpstreamOverloaded 503,
                                       UpstreamTimeout 504, ContentBlocked,
                                       UpstreamInvalidRequest and UnsupportedRequest 400,
                                       any other UpstreamError 502
"""

from __future__ import annotations

from typing import Any

from providers.errors import (
    ContentBlocked,
    ProviderError,
    UnsupportedRequest,
    UpstreamError,
    UpstreamInvalidRequest,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamTimeout,
)


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


class RequestTimedOut(InvalidRequest):
    """The client sent its body too slowly (``GATEWAY_BODY_TIMEOUT_S``)."""

    status = 408
    code = "request_timeout"


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


class KnowledgeNotConfigured(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "knowledge_not_configured"


class TeamsUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "team_store_unavailable"


class NoEligibleProvider(GatewayError):
    """Every candidate of the route was filtered out before any call (e.g. by residency)."""

    status = 503
    type = "service_unavailable"
    code = "no_eligible_provider"
    verdicts: list[Any] = []  # the router's verdict on each candidate (decision record only)


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


# Status and OpenAI ``type`` of a provider error, by class (the nearest listed base wins).
UPSTREAM_HTTP: dict[type[ProviderError], tuple[int, str]] = {
    UpstreamRateLimited: (429, "rate_limit_error"),
    UpstreamOverloaded: (503, "upstream_error"),
    UpstreamTimeout: (504, "upstream_error"),
    ContentBlocked: (400, "invalid_request_error"),
    UpstreamInvalidRequest: (400, "invalid_request_error"),
    UnsupportedRequest: (400, "invalid_request_error"),
    UpstreamError: (502, "upstream_error"),
    ProviderError: (502, "upstream_error"),
}


def _http_of(error: ProviderError) -> tuple[int, str]:
    for cls in type(error).__mro__:
        if cls in UPSTREAM_HTTP:
            return UPSTREAM_HTTP[cls]
    return 502, "upstream_error"  # unreachable: ProviderError is listed


class UpstreamFailure(GatewayError):
    """One provider error, as the client sees it: its message and code, the status and type
    ``UPSTREAM_HTTP`` gives its class, ``Retry-After`` from the provider and the provider's name."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message, code=error.code, param=error.param)
        self.status, self.type = _http_of(error)
        self.error = error
        self.provider = error.provider if isinstance(error, UpstreamError) else ""
        self.retry_after = error.retry_after if isinstance(error, UpstreamError) else None


def client_error(error: GatewayError | ProviderError) -> GatewayError:
    """What the client is told: a gateway error as it is, a provider error through the table."""
    return error if isinstance(error, GatewayError) else UpstreamFailure(error)
