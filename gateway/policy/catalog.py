"""The policy compiled for the hot path: dict lookups from key hash, route name and alias.

Built once from a validated ``Policy`` and the environment (provider keys are read here, once);
immutable afterwards. A reload compiles a new catalog and swaps it in whole.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
)
from providers.base import Target
from providers.pool import Endpoint

from .model import CompositeWeights, ModelConfig, Policy, ProviderConfig, TeamConfig


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model a route may send a request to, with everything an attempt needs."""

    model: ModelConfig
    provider: ProviderConfig
    target: Target

    @property
    def region(self) -> str:
        return self.provider.region


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    task_type: str
    candidates: tuple[Candidate, ...]
    strategy: str = "priority"
    weights: CompositeWeights = field(default_factory=CompositeWeights)
    hedge_after: float | str | None = None  # see RouteConfig.hedge_after

    @property
    def kind(self) -> str:
        """``chat`` or ``embedding``: what its candidates serve (a route holds one kind)."""
        return self.candidates[0].model.kind


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of a presented key. aiohttp decodes header bytes that are not UTF-8
    as surrogate escapes (``Bearer \\xff``): they are hashed as the bytes sent, so such a key is
    simply unknown (401), never an encoding error."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


class Catalog:
    """Lookups the pipeline makes on every request."""

    def __init__(self, policy: Policy, environ: Mapping[str, str]) -> None:
        self.policy = policy
        self._teams = {digest: team for team in policy.teams for digest in team.key_sha256}
        providers = {p.name: p for p in policy.providers}
        self.credentials = {
            p.name: "configured" if p.api_key_env is None or p.api_key(environ) else "missing"
            for p in policy.providers
        }
        candidates: dict[str, Candidate] = {}
        for model in policy.models:
            provider = providers[model.provider]
            target = Target(
                provider=provider.name,
                base_url=provider.base_url,
                model=model.id,
                api_key=provider.api_key(environ),
                headers=dict(provider.headers),
                options={**provider.adapter_options(), **model.adapter_options()},
            )
            candidates[model.name] = Candidate(model=model, provider=provider, target=target)
        # Alias -> chat candidate, for calls outside any route (gateway eval, shadow traffic).
        self.by_alias: Mapping[str, Candidate] = {
            name: c for name, c in candidates.items() if c.model.kind == "chat"
        }
        self._routes: dict[str, Route] = {
            name: Route(name=name, task_type="general", candidates=(candidate,))
            for name, candidate in candidates.items()
        }
        for route in policy.routes:
            self._routes[route.name] = Route(
                name=route.name,
                task_type=route.task_type,
                candidates=tuple(candidates[c] for c in route.candidates),
                strategy=route.strategy,
                weights=route.weights,
                hedge_after=route.hedge_after,
            )
        self.breaker_keys = [f"provider:{p.name}" for p in policy.providers] + [
            f"model:{m.name}" for m in policy.models
        ]
        self.provider_names = [p.name for p in policy.providers]
        # Metric labels take values from the policy only: a task type a client names in
        # x-gateway-task that the policy does not define is counted as "other".
        self.task_labels = frozenset(
            {"general", *policy.task_types, *(r.task_type for r in policy.routes)}
        )
        self.endpoints = tuple(
            Endpoint(
                name=p.name,
                kind=p.kind,
                connect_timeout=p.timeouts.connect,
                first_byte_timeout=p.timeouts.first_byte,
                total_timeout=p.timeouts.total,
                max_connections=p.max_connections,
                slot_wait_timeout=p.timeouts.slot_wait,
            )
            for p in policy.providers
            if p.kind != "builtin"  # served in the gateway's process, not through the pool
        )

    def authenticate(self, authorization: str | None) -> TeamConfig:
        """The team whose key is in ``Authorization: Bearer <key>``."""
        if not authorization:
            raise AuthenticationFailed(
                "Missing API key: send 'Authorization: Bearer <team key>'.", code="missing_api_key"
            )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationFailed(
                "Malformed Authorization header: expected 'Bearer <team key>'."
            )
        digest = key_digest(key)
        team = self._teams.get(digest)
        # compare_digest keeps the final check constant-time; the dict lookup is on a hash.
        if team is None or not any(hmac.compare_digest(digest, d) for d in team.key_sha256):
            raise AuthenticationFailed("Incorrect API key provided.")
        return team

    def task_label(self, task_type: str) -> str:
        """``task_type`` as a metric label: itself if the policy defines it, else ``other``."""
        return task_type if task_type in self.task_labels else "other"

    def resolve_route(self, team: TeamConfig, name: str, kind: str = "chat") -> Route:
        """The route (or single-alias route) a client's ``model`` names, if the team may use it
        and it serves ``kind`` (``chat``, or ``embedding`` for ``/v1/embeddings``)."""
        route = self._routes.get(name)
        if route is None:
            raise ModelNotFound(
                f"The model {name!r} does not exist; GET /v1/models lists the ones you may use.",
                param="model",
            )
        if not team.may_use(name):
            raise ModelNotAllowed(
                f"Team {team.name!r} may not use the model {name!r}.", param="model"
            )
        if route.kind != kind:
            where = "POST /v1/embeddings" if route.kind == "embedding" else "a chat endpoint"
            raise InvalidRequest(
                f"The model {name!r} is a {route.kind} model: call {where} with it.",
                param="model",
                code="wrong_model_kind",
            )
        return route

    def names_for(self, team: TeamConfig) -> list[str]:
        """Routes and aliases the team may call, for ``GET /v1/models``."""
        return [name for name in self._routes if team.may_use(name)]
