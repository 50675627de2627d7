"""The semantic cache's policy section, and how run-time overrides layer over it.

Precedence, lowest first: the policy's defaults, its per-route then per-team overrides, then the
run-time overrides ops set through the admin API or ``gateway cache set`` (kept in Redis, so every
replica applies them within seconds): default, route, team.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class CacheSettings(BaseModel):
    """What may differ per route or team, and be changed at run time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    max_error_rate: float = Field(default=0.01, gt=0, le=0.5)
    static_threshold: float | None = Field(default=None, gt=0, le=1)  # set: no learning
    ttl_s: float = Field(default=86_400, gt=0)
    max_entries_per_scope: int = Field(default=100_000, ge=1)
    max_temperature: float = Field(default=1.0, ge=0, le=2)  # hotter requests are not cached


class CacheOverrides(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = None
    max_error_rate: float | None = Field(default=None, gt=0, le=0.5)
    static_threshold: float | None = Field(default=None, gt=0, le=1)
    ttl_s: float | None = Field(default=None, gt=0)
    max_entries_per_scope: int | None = Field(default=None, ge=1)
    max_temperature: float | None = Field(default=None, ge=0, le=2)


class CacheConfig(CacheSettings):
    """The ``cache:`` section of a policy file."""

    routes: dict[str, CacheOverrides] = Field(default_factory=dict)
    teams: dict[str, CacheOverrides] = Field(default_factory=dict)


def _set(values: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    if values is None:
        return {}
    raw = values if isinstance(values, dict) else values.model_dump()
    return {k: v for k, v in raw.items() if v is not None and k in CacheSettings.model_fields}


def effective(
    config: CacheConfig,
    runtime: dict[str, dict[str, Any]],
    *,
    team: str,
    route: str,
) -> CacheSettings:
    """The settings that apply to one request."""
    merged: dict[str, Any] = _set(config)
    merged.update(_set(config.routes.get(route)))
    merged.update(_set(config.teams.get(team)))
    merged.update(_set(runtime.get("default")))
    merged.update(_set(runtime.get(f"route:{route}")))
    merged.update(_set(runtime.get(f"team:{team}")))
    return CacheSettings.model_validate(merged)


def validate_override(values: dict[str, Any]) -> dict[str, Any]:
    """Check run-time override values; raises ``ValueError`` with the field named."""
    try:
        return CacheOverrides.model_validate(values).model_dump(exclude_none=True)
    except ValidationError as exc:
        from gateway.core.validation import describe

        raise ValueError(describe(exc)) from exc
