"""The ``quality:`` policy section: regression detection, what a regression does, the judge.

```yaml
quality:
  on_regression: alert          # alert | demote (default for every route and task type)
  detector: {baseline: 500, min_baseline: 200, min_drop: 0.1, threshold: 12}
  fallback_alert: {rate: 0.25, window: 200, min_requests: 50}
  routes: {support: {on_regression: demote}}
  task_types:
    extraction:
      on_regression: demote
      judge: {model: smart, rubric: "Is the extraction complete and faithful?", sample: 0.05}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RegressionAction = Literal["alert", "demote"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DetectorConfig(_Model):
    """A Bernoulli CUSUM of failures against a rolling baseline (gateway/quality/regression.py).

    ``baseline``: events the failure rate is estimated from (at least ``min_baseline`` before
    testing); ``min_drop``: the fall of the pass rate the test is tuned to detect; ``threshold``:
    the CUSUM's alarm level ``h`` (higher: fewer false alarms, slower detection);
    ``baseline_margin``: the baseline failure rate is taken this many standard errors high, so
    that a baseline that happens to look good does not make normal noise look like a drop.
    """

    baseline: int = Field(default=500, ge=20)
    min_baseline: int = Field(default=200, ge=10)
    min_drop: float = Field(default=0.1, gt=0, le=0.9)
    threshold: float = Field(default=12.0, gt=0)
    baseline_margin: float = Field(default=2.0, ge=0)
    max_suspect: int = Field(default=500, ge=10)  # events held out of the baseline while suspect

    @model_validator(mode="after")
    def _sizes(self) -> DetectorConfig:
        if self.min_baseline > self.baseline:
            raise ValueError("min_baseline must not exceed baseline")
        return self


class FallbackAlertConfig(_Model):
    """Alert when more than ``rate`` of a route's last ``window`` requests needed a fallback."""

    rate: float = Field(default=0.25, gt=0, le=1)
    window: int = Field(default=200, ge=10)
    min_requests: int = Field(default=50, ge=1)


class JudgeConfig(_Model):
    """A model that grades a sample of a task type's answers against a rubric."""

    model: str = Field(min_length=1)  # a model alias of the policy
    rubric: str = Field(min_length=1)
    sample: float = Field(default=0.05, ge=0, le=1)  # share of answers graded
    timeout_s: float = Field(default=30.0, gt=0)


class RouteQuality(_Model):
    on_regression: RegressionAction | None = None


class TaskQuality(_Model):
    on_regression: RegressionAction | None = None
    judge: JudgeConfig | None = None


class QualityConfig(_Model):
    """The whole ``quality:`` section; every field is optional."""

    on_regression: RegressionAction = "alert"
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    fallback_alert: FallbackAlertConfig = Field(default_factory=FallbackAlertConfig)
    routes: dict[str, RouteQuality] = Field(default_factory=dict)
    task_types: dict[str, TaskQuality] = Field(default_factory=dict)
    judge_concurrency: int = Field(default=4, ge=1, le=64)
    judge_queue: int = Field(default=100, ge=1)  # graded answers waiting; more are not graded
    sync_interval_s: float = Field(default=2.0, gt=0)  # Redis sync of stats and verdicts

    def action_for(self, route: str, task_type: str) -> RegressionAction:
        """What a regression of ``task_type`` does on ``route``: the task type's setting, else
        the route's, else the section's."""
        task = self.task_types.get(task_type)
        if task is not None and task.on_regression is not None:
            return task.on_regression
        by_route = self.routes.get(route)
        if by_route is not None and by_route.on_regression is not None:
            return by_route.on_regression
        return self.on_regression

    def judge_for(self, task_type: str) -> JudgeConfig | None:
        task = self.task_types.get(task_type)
        return task.judge if task is not None else None

    def check_references(self, models: set[str], routes: set[str]) -> None:
        """Raise ``ValueError`` naming the field for an unknown judge model or route."""
        for name in self.routes:
            if name not in routes:
                raise ValueError(f"quality.routes: unknown route or model {name!r}")
        for task, settings in self.task_types.items():
            if settings.judge is not None and settings.judge.model not in models:
                raise ValueError(
                    f"quality.task_types.{task}.judge.model: unknown model {settings.judge.model!r}"
                )
