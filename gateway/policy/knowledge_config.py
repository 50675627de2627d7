"""The ``knowledge:`` policy section: what a request gets from the knowledge base, and when a
curated answer is returned without a model.

A curated FAQ answer is served directly by a calibrated decision, not by one cosine threshold
(gateway/stages/knowledge_answer.py): ``max_error_rate`` is the share of direct answers ops accept
to be wrong, and with a knowledge base's ``calibration`` (statistics of its dev split, written by
``python -m bench.knowledge --calibrate``) it sets the score bands: answered directly, verified by
the cheapest allowed model first, or not answered directly. docs/knowledge.md says how.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# The policy's name pattern (gateway/policy/model.py imports this module, not the reverse).
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]
KbName = Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63})$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KnowledgeSettings(_Model):
    """What the knowledge lookup does for one request; the per-team and per-route overrides
    replace any of these fields (precedence, lowest first: the section, the route, the team)."""

    enabled: bool = True
    kbs: list[KbName] = Field(default_factory=lambda: ["*"], min_length=1)  # "*": every kb
    # The lowest cosine at which a curated answer may be served without a model, whatever the
    # calibration says (it only raises the calibrated unverified band, never lowers it).
    answer_threshold: float = Field(default=0.9, gt=0, le=1)
    # The share of direct answers allowed to be wrong; with the kb's calibration it sets the
    # direct and verification bands (docs/knowledge.md, "Direct answers").
    max_error_rate: float = Field(default=0.01, gt=0, le=0.5)
    # A best curated question less than this ahead of the runner-up is never answered unverified.
    min_margin: float = Field(default=0.04, ge=0, le=1)
    # Ask the cheapest allowed model a yes/no question in the uncertain band (false: no band).
    verify: bool = True
    # Passages at or above this similarity are attached as reference material.
    context_threshold: float = Field(default=0.4, gt=0, le=1)
    top_k: int = Field(default=4, ge=1, le=20)
    direct_answers: bool = True
    max_context_chars: int = Field(default=6000, ge=200)


class KnowledgeOverride(_Model):
    """A per-team or per-route override: only the fields given apply."""

    enabled: bool | None = None
    kbs: list[KbName] | None = Field(default=None, min_length=1)
    answer_threshold: float | None = Field(default=None, gt=0, le=1)
    max_error_rate: float | None = Field(default=None, gt=0, le=0.5)
    min_margin: float | None = Field(default=None, ge=0, le=1)
    verify: bool | None = None
    context_threshold: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, le=20)
    direct_answers: bool | None = None
    max_context_chars: int | None = Field(default=None, ge=200)


class KnowledgeCalibration(_Model):
    """One knowledge base's dev-split statistics (``python -m bench.knowledge --calibrate``):
    the best curated-question score of questions its FAQ must not answer (those the lexical
    guard lets through), and how often the verifier said yes to one of them (all of them).
    The scores are the decision's evidence: the cosine less ``novelty_penalty`` per novel word."""

    negatives_mean: float = Field(ge=-1, le=1)
    negatives_sd: float = Field(gt=0, le=1)
    # The verifier's false-yes rate on the dev negatives, per model alias; ``verifier_false_yes``
    # for a model not listed (an unmeasured model is assumed to say yes to one negative in ten).
    # The bands use the rate's 95 % upper confidence bound over ``samples`` (0 yes in 158 is
    # taken as 1.9 %, 5 in 158 as 6.5 %); 1.0 means "no verified band".
    verifiers: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)
    verifier_false_yes: float = Field(default=0.1, ge=0, le=1)
    samples: int = Field(default=0, ge=0)  # dev negatives the verifier was asked about
    # Dev negatives past the guard the mean and sd were fitted on: the bands take the tolerance
    # bound of their quantiles for that many (0: unknown, the point estimate).
    negatives: int = Field(default=0, ge=0)
    # Subtracted from the cosine per word of the user's question the curated question and answer
    # do not contain (at most two; gateway/stages/knowledge_evidence.py); 0: the cosine alone.
    novelty_penalty: float = Field(default=0.0, ge=0, le=0.5)
    embedding_model: str = ""  # what the scores were measured with (informative)


class KnowledgeConfig(KnowledgeSettings):
    """The ``knowledge:`` section: the company knowledge base consulted before any provider."""

    collection: Name = "company-kb"  # the Qdrant collection; kbs are tags inside it
    timeout_s: float = Field(default=0.5, gt=0)  # a slower lookup is skipped (fail-open)
    retry_after_s: float = Field(default=5.0, ge=0)  # after a store failure, skip lookups
    # A verification slower than this is a "no" (the request goes on with the passages).
    verify_timeout_s: float = Field(default=0.8, gt=0)
    # Per kb; a kb without one uses the built-in calibration of all-MiniLM-L6-v2 on the sample
    # knowledge base's dev split (gateway/stages/knowledge_answer.py, DEFAULT_CALIBRATION).
    calibration: dict[KbName, KnowledgeCalibration] = Field(default_factory=dict)
    routes: dict[Name, KnowledgeOverride] = Field(default_factory=dict)
    teams: dict[Name, KnowledgeOverride] = Field(default_factory=dict)

    def settings_for(self, team: str, route: str) -> KnowledgeSettings:
        """The settings for ``team`` calling ``route``."""
        merged = {name: getattr(self, name) for name in KnowledgeSettings.model_fields}
        for override in (self.routes.get(route), self.teams.get(team)):
            if override is not None:
                merged.update(override.model_dump(exclude_none=True))
        return KnowledgeSettings.model_validate(merged)
