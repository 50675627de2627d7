"""The routing policy: providers, pinned models, routes and teams, validated from YAML.

Policy is data, loaded once and passed down; nothing here is mutated at run time (a reload builds
a new ``Policy``). Every object forbids unknown keys so that a typo fails start-up with a message
that names the file and the field instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.core.validation import load_yaml_model

from .cache_config import CacheConfig
from .fairness_config import InFlightLimit
from .knowledge_config import KbName as KbName
from .knowledge_config import KnowledgeCalibration as KnowledgeCalibration
from .knowledge_config import KnowledgeConfig
from .knowledge_config import KnowledgeOverride as KnowledgeOverride
from .knowledge_config import KnowledgeSettings as KnowledgeSettings
from .quality_config import QualityConfig
from .shadow_config import ShadowConfig

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]
# Upstream ids that name a moving target rather than a dated version.
_FLOATING = re.compile(r"(^|[-_.:/])(latest|preview|exp|experimental)([-_.:/]|$)|:latest$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Model):
    """Seconds. ``first_byte`` bounds the wait for response headers and between stream reads;
    ``slot_wait`` the wait for a free connection slot (all ``max_connections`` in use) before
    the request goes on to its next candidate."""

    connect: float = Field(default=5.0, gt=0)
    first_byte: float = Field(default=60.0, gt=0)
    total: float = Field(default=300.0, gt=0)
    slot_wait: float = Field(default=5.0, gt=0)


class _ProviderBase(_Model):
    name: Name
    base_url: str
    api_key_env: str | None = None
    region: str = "us"
    # Providers of one family share a moderation layer and an outage domain: a safety block skips
    # the whole family, and fallback prefers another family. Default: see ``family_name``.
    family: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # Connections to this provider, which is also its concurrency cap: more requests queue.
    max_connections: int = Field(default=100, ge=1)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    def api_key(self, environ: Mapping[str, str]) -> str | None:
        """The provider key from the environment; ``None`` when none is configured."""
        return environ.get(self.api_key_env) if self.api_key_env else None

    def adapter_options(self) -> dict[str, Any]:
        return {}

    @property
    def family_name(self) -> str:
        """``family``, else the wire protocol for single-vendor kinds, else the provider name."""
        if self.family:
            return self.family
        return self.kind if self.kind in ("anthropic", "gemini") else self.name

    kind: str


class OpenAIProvider(_ProviderBase):
    """OpenAI and every OpenAI-compatible server (vLLM, llama.cpp, xAI, Moonshot, OpenRouter)."""

    kind: Literal["openai"]
    stream_usage: bool = True  # ask for stream_options.include_usage upstream

    def adapter_options(self) -> dict[str, Any]:
        return {"stream_usage": self.stream_usage}


class AnthropicProvider(_ProviderBase):
    kind: Literal["anthropic"]
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(default=4096, ge=1)

    def adapter_options(self) -> dict[str, Any]:
        return {
            "anthropic_version": self.anthropic_version,
            "default_max_tokens": self.default_max_tokens,
        }


class GeminiProvider(_ProviderBase):
    kind: Literal["gemini"]
    api_version: str = "v1beta"

    def adapter_options(self) -> dict[str, Any]:
        return {"api_version": self.api_version}


class OllamaProvider(_ProviderBase):
    kind: Literal["ollama"]
    keep_alive: str | None = None

    def adapter_options(self) -> dict[str, Any]:
        return {"keep_alive": self.keep_alive} if self.keep_alive else {}


class BuiltinProvider(_ProviderBase):
    """The gateway's own embedding model (``settings.embedder``: all-MiniLM-L6-v2), served in
    its process: no URL, no key. It serves embedding models only; ``region`` is where the gateway
    runs, for residency."""

    kind: Literal["builtin"]
    base_url: Literal[""] = ""  # nothing to call: the model runs in the gateway's process
    region: str = "onprem"

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:  # replaces the base's check: there is no URL
        return value


ProviderConfig = Annotated[
    OpenAIProvider | AnthropicProvider | GeminiProvider | OllamaProvider | BuiltinProvider,
    Field(discriminator="kind"),
]
# The kinds that serve ``kind: embedding`` models (Anthropic has no embeddings API).
EMBEDDING_KINDS = frozenset({"openai", "gemini", "ollama", "builtin"})


class Price(_Model):
    """USD per one million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class ModelConfig(_Model):
    """An alias pinned to one exact upstream version at one provider.

    ``kind``: ``chat`` models answer chat requests (``/v1/chat/completions``, ``/v1/messages``,
    ``/v1/responses``), ``embedding`` models ``/v1/embeddings``; a route holds one kind."""

    name: Name
    provider: Name
    id: str = Field(min_length=1)
    kind: Literal["chat", "embedding"] = "chat"
    price: Price = Field(default_factory=lambda: Price(input=0, output=0))
    tier: Literal["cheap", "standard", "frontier"] = "standard"
    context_window: int = Field(default=128_000, ge=1)
    supports_tools: bool = True
    supports_json: bool = True
    supports_streaming: bool = True
    allow_floating: bool = False
    # What to do when the provider serves another version than ``id``: alert (and answer), or
    # treat the answer as a failure and fall back.
    on_drift: Literal["alert", "fail_over"] = "alert"
    # The output limit of a request that sets none (max_tokens, max_completion_tokens): a small
    # CPU model left unbounded generates until its context is full, minutes on a few cores.
    # None: the provider's own default (Anthropic's provider-level one, else unbounded).
    default_max_tokens: int | None = Field(default=None, ge=1)
    # False: the model's chat template has no system role (it would drop system messages, and
    # with them the knowledge passages): the adapter folds them into the next user turn.
    system_role: bool = True

    def adapter_options(self) -> dict[str, Any]:
        """What this model adds to its provider's adapter options (``Target.options``)."""
        options: dict[str, Any] = {}
        if self.default_max_tokens is not None:
            options["default_max_tokens"] = self.default_max_tokens
        if not self.system_role:
            options["system_role"] = False
        return options

    @model_validator(mode="after")
    def _pinned(self) -> ModelConfig:
        if not self.allow_floating and _FLOATING.search(self.id):
            raise ValueError(
                f"id {self.id!r} is a floating alias, not a pinned version; pin a dated version "
                "or set allow_floating: true"
            )
        return self


class CompositeWeights(_Model):
    """Weights of the ``composite`` strategy; each term is normalised to 0..1 (1 = best)."""

    quality: float = Field(default=0.5, ge=0)
    latency: float = Field(default=0.25, ge=0)
    cost: float = Field(default=0.25, ge=0)


Tier = Literal["cheap", "standard", "frontier"]


class TieringConfig(_Model):
    """A route's learned choice between its cheap and frontier candidates (gateway.tiering).

    ``max_frontier_share`` is the one knob, a budget: of any ``window`` consecutive requests the
    frontier tier takes at most that share (the ones with the highest predicted gain, and only
    when the gain is positive), and the route's threshold moves so that it spends it.
    ``exploration`` sends that share of requests to the other tier so both keep being measured.
    ``model`` names a trained tier model whose predicted gain the route starts from.
    """

    max_frontier_share: float = Field(default=0.3, ge=0, le=1)
    exploration: float = Field(default=0.05, ge=0, le=0.5)
    neighbours: int = Field(default=128, ge=1, le=1024)
    memory: int = Field(default=4096, ge=16, le=100_000)  # outcomes kept for the route
    window: int = Field(default=500, ge=10, le=100_000)  # decisions the frontier budget is over
    # A model trained offline (``gateway router train``): the prior its predicted gain starts
    # from; a relative path is read from the policy file's folder (gateway.tiering.deployed).
    model: str | None = Field(default=None, min_length=1)
    # The outcomes the model's prediction counts for against the route's own (None: as many as
    # it was trained on); its share of a decision is model_weight / (model_weight + outcomes).
    model_weight: float | None = Field(default=None, ge=0)


class RouteConfig(_Model):
    """What a client's ``model`` names: candidates and how to order them."""

    name: Name
    candidates: list[Name] = Field(min_length=1)
    strategy: Literal["priority", "latency", "cost", "composite"] = "priority"
    weights: CompositeWeights = Field(default_factory=CompositeWeights)
    task_type: str = "general"
    tiering: TieringConfig | None = None  # absent: no tier choice, the strategy's order
    # Hedged requests (gateway/routing/hedging.py), off by default: seconds without a first byte
    # before the next candidate starts in parallel, or "pNN" for that percentile of the model's
    # recent first-byte latency.
    hedge_after: float | str | None = None

    @field_validator("hedge_after")
    @classmethod
    def _hedge_after(cls, value: float | str | None) -> float | str | None:
        if isinstance(value, str):
            if not re.fullmatch(r"p([1-9][0-9]?(\.[0-9]+)?)", value):
                raise ValueError('hedge_after: seconds, or a percentile such as "p95"')
        elif value is not None and value <= 0:
            raise ValueError("hedge_after must be positive")
        return value


class TaskTypeConfig(_Model):
    """A task type: the route it goes to, the tiers it may use, labelled examples."""

    route: Name | None = None  # requests of this type naming a route go to this one instead
    tiers: list[Tier] | None = Field(default=None, min_length=1)  # None: any tier
    # Cold start: the frontier's expected quality gain on this type before any outcome.
    frontier_gain: float = Field(default=0.0, ge=-1, le=1)
    examples: list[str] = Field(default_factory=list)  # prompts for the classifier


class TaskClassifierConfig(_Model):
    """Nearest-centroid task classification of requests without ``x-gateway-task``."""

    min_confidence: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=0.05, gt=0)
    # A background "none of the types" competes at this cosine similarity.
    min_similarity: float = Field(default=0.35, ge=-1, le=1)


# What the router does after a failed attempt, by error class.
ErrorAction = Literal["retry_then_next", "next", "skip_family", "stop", "open_breaker"]


class ErrorPolicy(_Model):
    """Per error class: ``next`` candidate (preferring another family), ``retry_then_next``
    (one immediate retry on the same provider), ``skip_family`` (no candidate of the same
    family), ``stop`` (return the error as is), ``open_breaker`` (open the provider's breaker,
    alert, then next)."""

    connection: ErrorAction = "retry_then_next"
    rate_limited: ErrorAction = "next"
    overloaded: ErrorAction = "next"
    timeout: ErrorAction = "next"
    bad_response: ErrorAction = "next"
    model_not_found: ErrorAction = "open_breaker"
    content_blocked: ErrorAction = "skip_family"
    invalid_request: ErrorAction = "stop"
    auth: ErrorAction = "open_breaker"
    drift: ErrorAction = "next"


class BreakerConfig(_Model):
    """Circuit breakers per provider and per model."""

    consecutive_failures: int = Field(default=5, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1)
    window_s: float = Field(default=30.0, gt=0)
    min_requests: int = Field(default=10, ge=1)
    open_s: float = Field(default=15.0, gt=0)  # before a half-open probe
    # Backoff cap after failed probes: doubling without a tight cap kept breakers open long
    # after short faults had passed (issue #22).
    max_open_s: float = Field(default=60.0, gt=0)
    probe_timeout_s: float = Field(default=10.0, gt=0)


class RoutingConfig(_Model):
    max_attempts: int = Field(default=3, ge=1, le=10)
    default_deadline_s: float = Field(default=30.0, gt=0)
    max_deadline_s: float = Field(default=120.0, gt=0)
    default_retry_after_s: float = Field(default=2.0, ge=0)  # embargo after a 429 without one
    latency_alpha: float = Field(default=0.2, gt=0, le=1)  # EWMA smoothing
    # An attempt waits for its first byte at most the remaining deadline divided among the
    # attempts still possible, never less than this floor (docs/routing.md#deadlines).
    min_attempt_s: float = Field(default=1.0, gt=0)
    # Gateway-wide cap on the share of requests that may be hedged (routes' hedge_after).
    hedge_max_share: float = Field(default=0.1, ge=0, le=1)
    errors: ErrorPolicy = Field(default_factory=ErrorPolicy)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)


class TeamConfig(_Model):
    """A calling team: its key (SHA-256 only), what it may use and where its data may go."""

    name: Name
    key_sha256: list[str] = Field(min_length=1)
    routes: list[str] = Field(default_factory=lambda: ["*"])
    regions: list[str] | None = None  # None: any region
    # Governance (gateway/policy/limits.py), enforced across replicas; None: unlimited.
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    daily_budget_usd: float | None = Field(default=None, gt=0)  # per UTC day
    budget_alert_at: float = Field(default=0.8, gt=0, le=1)  # share of the budget: one alert/day
    max_in_flight: InFlightLimit | None = None  # concurrency, per replica (fairness_config.py)
    # Decision records carry the prompt's hash only; true: the prompt text as well (opt-in).
    log_prompts: bool = False

    @field_validator("key_sha256", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("key_sha256")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(
                    "each key_sha256 must be 64 lowercase hex digits (sha256 of the key)"
                )
        return value

    def may_use(self, route: str) -> bool:
        return "*" in self.routes or route in self.routes


class Policy(_Model):
    """The whole validated policy file."""

    providers: list[ProviderConfig] = Field(min_length=1)
    models: list[ModelConfig] = Field(min_length=1)
    routes: list[RouteConfig] = Field(default_factory=list)
    teams: list[TeamConfig] = Field(min_length=1)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    cache: CacheConfig | None = None  # absent: no semantic cache
    knowledge: KnowledgeConfig | None = None  # absent: no knowledge lookup
    task_types: dict[Name, TaskTypeConfig] = Field(default_factory=dict)
    task_classifier: TaskClassifierConfig = Field(default_factory=TaskClassifierConfig)
    quality: QualityConfig = Field(
        default_factory=QualityConfig
    )  # gateway/policy/quality_config.py
    shadow: ShadowConfig | None = (
        None  # absent: no shadow traffic (gateway/policy/shadow_config.py)
    )

    @model_validator(mode="after")
    def _references(self) -> Policy:
        _unique("providers", [p.name for p in self.providers])
        _unique("models", [m.name for m in self.models])
        _unique("routes", [r.name for r in self.routes])
        _unique("teams", [t.name for t in self.teams])
        providers = {p.name: p for p in self.providers}
        models = {m.name for m in self.models}
        kinds = {m.name: m.kind for m in self.models}
        for i, model in enumerate(self.models):
            provider = providers.get(model.provider)
            if provider is None:
                raise ValueError(f"models[{i}].provider: unknown provider {model.provider!r}")
            _check_kind(i, model, provider.kind)
        for i, route in enumerate(self.routes):
            if route.name in models:
                raise ValueError(f"routes[{i}].name: {route.name!r} is also a model alias")
            for candidate in route.candidates:
                if candidate not in models:
                    raise ValueError(f"routes[{i}].candidates: unknown model {candidate!r}")
            route_kinds = {kinds[c] for c in route.candidates}
            if len(route_kinds) > 1:
                raise ValueError(f"routes[{i}].candidates: mixes chat and embedding models")
            if route.tiering is not None and route_kinds == {"embedding"}:
                raise ValueError(f"routes[{i}].tiering: an embedding route has no tiers")
            kinds[route.name] = kinds[route.candidates[0]]
        callable_names = models | {r.name for r in self.routes}
        # Task types, knowledge and quality settings concern chat answers only.
        chat_names = {name for name, kind in kinds.items() if kind == "chat"}
        for name, task in self.task_types.items():
            if task.route is not None and task.route not in callable_names:
                raise ValueError(f"task_types.{name}.route: unknown route {task.route!r}")
            if task.route is not None and task.route not in chat_names:
                raise ValueError(f"task_types.{name}.route: {task.route!r} is an embedding route")
        seen_keys: set[str] = set()
        for i, team in enumerate(self.teams):
            for name in team.routes:
                if name != "*" and name not in callable_names:
                    raise ValueError(f"teams[{i}].routes: unknown route or model {name!r}")
            if team.max_in_flight is not None:
                team.max_in_flight.check_references(set(providers), f"teams[{i}].max_in_flight")
            for digest in team.key_sha256:
                if digest in seen_keys:
                    raise ValueError(f"teams[{i}].key_sha256: a key is shared with another team")
                seen_keys.add(digest)
        if self.knowledge is not None:
            teams = {t.name for t in self.teams}
            for name in self.knowledge.teams:
                if name not in teams:
                    raise ValueError(f"knowledge.teams: unknown team {name!r}")
            for name in self.knowledge.routes:
                if name not in chat_names:
                    raise ValueError(f"knowledge.routes: unknown route or model {name!r}")
        chat_models = {m.name for m in self.models if m.kind == "chat"}
        self.quality.check_references(chat_models, chat_names)
        if self.shadow is not None:
            self.shadow.check_references(chat_models)
        return self


def _check_kind(index: int, model: ModelConfig, provider_kind: str) -> None:
    """A model's kind must be one its provider's wire protocol serves."""
    if model.kind == "embedding" and provider_kind not in EMBEDDING_KINDS:
        raise ValueError(
            f"models[{index}].kind: provider {model.provider!r} ({provider_kind}) has no "
            "embeddings API"
        )
    if model.kind == "chat" and provider_kind == "builtin":
        raise ValueError(
            f"models[{index}].kind: the builtin provider serves embedding models only "
            "(set kind: embedding)"
        )


def _unique(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{field}[{i}].name: duplicate name {name!r}")
        seen.add(name)


class PolicyError(Exception):
    """A policy file that cannot be used; the message names the file and the field."""


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a policy stores instead of a team key."""
    return hashlib.sha256(key.encode()).hexdigest()


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a YAML policy file."""
    return load_yaml_model(
        Path(path),
        Policy,
        PolicyError,
        "the policy must be a mapping with providers, models, teams",
    )
