"""A team's fair share of the gateway's concurrency: ``max_in_flight`` in a team's policy.

``total``: requests the team may have in flight at once on one replica; one more is refused
with a 429 (``gateway.routing.fairness``). ``per_provider``: connection slots of that provider
(its ``max_connections``, per replica) the team may hold at once; past it the team's requests
wait in its own queue (``providers.slots``) and, after the provider's slot wait, go on to their
next candidate. A bare number is the total.

Both are per replica, on purpose: what they protect (a replica's connection slots and its event
loop) is per replica, so a cap checked locally costs no round trip and cannot leak counts when
a replica dies; a cluster-wide figure is the per-replica one times the replicas.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class InFlightLimit(BaseModel):
    """Requests in flight at once for one team, per replica (``None``: no cap)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    total: int | None = Field(default=None, ge=1)
    per_provider: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return {"total": value}
        return value

    @model_validator(mode="after")
    def _positive(self) -> InFlightLimit:
        for provider, cap in self.per_provider.items():
            if cap < 1:
                raise ValueError(f"per_provider.{provider}: must be at least 1")
        return self

    def check_references(self, providers: set[str], where: str) -> None:
        for provider in self.per_provider:
            if provider not in providers:
                raise ValueError(f"{where}.per_provider: unknown provider {provider!r}")
