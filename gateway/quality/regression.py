"""Regression detection: a Bernoulli CUSUM of failures against a rolling baseline.

One ``PassRateDetector`` per (model alias, served version, task type, signal) sees each answer's
verdict (pass or fail). Its baseline is the last ``baseline`` verdicts (at least
``min_baseline`` before it tests anything), giving an in-control failure rate ``q0`` (taken
``baseline_margin`` standard errors high). The out-of-control rate it is tuned for is
``q1 = q0 + min_drop``. Each verdict adds its log-likelihood ratio to the CUSUM

    S = max(0, S + log(q1/q0))        on a failure
    S = max(0, S + log((1-q1)/(1-q0))) on a pass

and the detector fires when ``S > threshold``. While ``S > 0`` the verdicts that built it are
held out of the baseline (the *suspect* run), so a slow regression cannot leak into the
baseline and hide itself; when ``S`` falls back to 0 they join it.

Why CUSUM rather than a fixed recent window and a two-proportion z-test: the test runs after
every answer, and a windowed test repeated on overlapping windows raises false alarms at several
per cent per 2,000 events unless its threshold is so strict that moderate drops (80 % -> 50 %)
slip through before the baseline absorbs them. The CUSUM accumulates evidence for as long as
it takes, is the sequential test with the shortest detection delay for a given false-alarm
rate, and its statistic (a log-likelihood ratio) is meaningful in an alert. Defaults, measured
on simulated streams (1,800 runs of 2,000 stationary events at pass rates 0.5..0.99: one false
alarm in total; see tests/test_quality_regression.py for the asserted bounds): a collapse from
95 % to 0 % fires within ~21 answers, 95 % -> 50 % within ~85, 90 % -> 60 % within ~180.
After firing the detector starts afresh, so one regression is one alert and the new level
becomes the next baseline.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from gateway.policy.quality_config import DetectorConfig, FallbackAlertConfig


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a detector saw when it fired (or sees now): the baseline, the suspect run since the
    CUSUM last left zero, the CUSUM, and a two-proportion z of the two rates."""

    baseline_n: int
    baseline_passes: int
    recent_n: int
    recent_passes: int
    cusum: float
    threshold: float
    z: float
    p_value: float
    baseline_version: str | None = None  # the baseline came from this earlier served version

    @property
    def baseline_rate(self) -> float:
        return self.baseline_passes / self.baseline_n if self.baseline_n else 0.0

    @property
    def recent_rate(self) -> float:
        return self.recent_passes / self.recent_n if self.recent_n else 0.0

    @property
    def drop(self) -> float:
        return self.baseline_rate - self.recent_rate if self.recent_n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "baseline_rate": round(self.baseline_rate, 4),
            "recent_rate": round(self.recent_rate, 4),
            "drop": round(self.drop, 4),
            "cusum": round(self.cusum, 3),
            "z": round(self.z, 3),
            "p_value": float(f"{self.p_value:.3g}"),
        }


def two_proportion_z(base_passes: int, base_n: int, recent_passes: int, recent_n: int) -> float:
    """The z statistic of the ``recent`` rate minus the ``baseline`` rate (0 when undefined)."""
    if base_n == 0 or recent_n == 0:
        return 0.0
    pooled = (base_passes + recent_passes) / (base_n + recent_n)
    variance = pooled * (1 - pooled) * (1 / base_n + 1 / recent_n)
    if variance <= 0:
        return 0.0
    return (recent_passes / recent_n - base_passes / base_n) / math.sqrt(variance)


def lower_tail_p(z: float) -> float:
    """P(Z <= z) for a standard normal Z."""
    return 0.5 * math.erfc(-z / math.sqrt(2))


_MEMO_SIZE = 4096


class PassRateDetector:
    """CUSUM of failures against a rolling baseline, for one stream of verdicts; O(1) per event."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.events = 0
        self._memo: dict[tuple[int, int], tuple[float, float]] = {}
        self.reset()

    def reset(self) -> None:
        self._baseline: deque[bool] = deque()
        self._baseline_passes = 0
        self._suspect: deque[bool] = deque()
        self._suspect_passes = 0
        self.cusum = 0.0
        self.baseline_version: str | None = None

    def inherit(self, other: PassRateDetector, version: str) -> None:
        """Start from ``other``'s baseline: the version this model served before, so that a new
        version is tested against the old one's record from its first answer."""
        self._baseline = deque(other._baseline)
        self._baseline_passes = other._baseline_passes
        self.baseline_version = version

    def configure(self, config: DetectorConfig) -> None:
        """New settings (a policy reload); the windows are kept."""
        self.config = config
        self._memo.clear()

    def _to_baseline(self, passed: bool) -> None:
        self._baseline.append(passed)
        self._baseline_passes += passed
        while len(self._baseline) > self.config.baseline:
            self._baseline_passes -= self._baseline.popleft()

    def _rates(self) -> tuple[float, float]:
        """(q0, q1): the in-control failure rate (a margin high) and the one tuned for."""
        config = self.config
        n = len(self._baseline)
        failures = 1 - self._baseline_passes / n
        stderr = math.sqrt(max(failures * (1 - failures), 1 / n) / n)
        q0 = min(failures + config.baseline_margin * stderr, 0.99)
        return q0, min(q0 + config.min_drop, 0.999)

    def _steps(self) -> tuple[float, float]:
        """The CUSUM's (pass, fail) increments for the current baseline, memoised: a stable
        baseline takes few distinct (size, passes) values, and the logs are the costly part."""
        key = (len(self._baseline), self._baseline_passes)
        steps = self._memo.get(key)
        if steps is None:
            q0, q1 = self._rates()
            steps = (math.log((1 - q1) / (1 - q0)), math.log(q1 / q0))
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = steps
        return steps

    def add(self, passed: bool) -> Evidence | None:
        """Count one verdict; the evidence if this one makes the detector fire."""
        config = self.config
        self.events += 1
        if len(self._baseline) < config.min_baseline:
            self._to_baseline(passed)
            return None
        on_pass, on_fail = self._steps()
        self.cusum = max(0.0, self.cusum + (on_pass if passed else on_fail))
        self._suspect.append(passed)
        self._suspect_passes += passed
        if self.cusum > config.threshold:
            evidence = self.evidence()
            self.reset()
            return evidence
        if self.cusum == 0.0:
            while self._suspect:
                self._to_baseline(self._suspect.popleft())
            self._suspect_passes = 0
        elif len(self._suspect) > config.max_suspect:
            oldest = self._suspect.popleft()
            self._suspect_passes -= oldest
            self._to_baseline(oldest)
        return None

    def evidence(self) -> Evidence:
        z = two_proportion_z(
            self._baseline_passes, len(self._baseline), self._suspect_passes, len(self._suspect)
        )
        return Evidence(
            baseline_n=len(self._baseline),
            baseline_passes=self._baseline_passes,
            recent_n=len(self._suspect),
            recent_passes=self._suspect_passes,
            cusum=self.cusum,
            threshold=self.config.threshold,
            z=z,
            p_value=lower_tail_p(z),
            baseline_version=self.baseline_version,
        )

    def state(self) -> dict[str, Any]:
        return {"events": self.events, **self.evidence().to_dict()}


class FallbackWatch:
    """Per route: the share of recent answered requests that needed a fallback.

    Raises once when the share goes above ``config.rate`` (with ``min_requests`` seen) and
    re-arms when it falls to half of it, so a lasting outage is one alert, not one per request.
    """

    def __init__(self, config: FallbackAlertConfig) -> None:
        self.config = config
        self._windows: dict[str, deque[bool]] = {}
        self._counts: dict[str, int] = {}
        self._alerting: set[str] = set()

    def observe(self, route: str, fell_back: bool) -> dict[str, Any] | None:
        """Count one request; alert fields when this one crosses the threshold."""
        window = self._windows.get(route)
        if window is None:
            window = self._windows[route] = deque()
            self._counts[route] = 0
        window.append(fell_back)
        count = self._counts[route] + fell_back
        while len(window) > self.config.window:
            count -= window.popleft()
        self._counts[route] = count
        rate = count / len(window)
        if route in self._alerting:
            if rate <= self.config.rate / 2:
                self._alerting.discard(route)
            return None
        if len(window) < self.config.min_requests or rate <= self.config.rate:
            return None
        self._alerting.add(route)
        return {
            "route": route,
            "rate": round(rate, 4),
            "threshold": self.config.rate,
            "requests": len(window),
            "fallbacks": count,
        }

    def rates(self) -> dict[str, float]:
        return {route: self._counts[route] / len(w) for route, w in self._windows.items() if w}
