"""The ``shadow:`` policy section: mirror a share of a task type's live traffic to a candidate.

```yaml
shadow:
  max_in_flight: 4            # shadow calls at once, all mirrors together; beyond: not mirrored
  timeout_s: 30               # a shadow call slower than this counts as an error
  agreement_threshold: 0.5    # word-overlap F1 with the primary answer at which they "agree"
  mirrors:
    - {task_type: summarization, candidate: gemini-flash, share: 0.1}
    - {task_type: "*", candidate: llama-onprem, share: 0.02, judge: false}
```

The candidate's answer is scored and compared, never returned. Residency is the request's: a
candidate (or judge) outside the regions the request may go to is never sent it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShadowMirror(_Model):
    """One task type mirrored to one candidate alias."""

    task_type: str = Field(pattern=r"^(\*|[A-Za-z0-9_-]{1,64})$")  # "*": every task type
    candidate: str = Field(min_length=1)  # a model alias of the policy
    share: float = Field(gt=0, le=1)  # of the task type's provider-answered requests
    # Grade both answers with the task type's judge (quality.task_types.<t>.judge) if it has one.
    judge: bool = True


class ShadowConfig(_Model):
    mirrors: list[ShadowMirror] = Field(min_length=1)
    max_in_flight: int = Field(default=4, ge=1, le=256)
    timeout_s: float = Field(default=30.0, gt=0)
    agreement_threshold: float = Field(default=0.5, ge=0, le=1)

    def check_references(self, models: set[str]) -> None:
        """Raise ``ValueError`` naming the field for an unknown candidate or a duplicate."""
        seen: set[tuple[str, str]] = set()
        for i, mirror in enumerate(self.mirrors):
            if mirror.candidate not in models:
                raise ValueError(
                    f"shadow.mirrors[{i}].candidate: unknown model {mirror.candidate!r}"
                )
            key = (mirror.task_type, mirror.candidate)
            if key in seen:
                raise ValueError(
                    f"shadow.mirrors[{i}]: {mirror.task_type!r} is already mirrored to "
                    f"{mirror.candidate!r}"
                )
            seen.add(key)
