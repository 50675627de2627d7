"""The regression detector and the fallback-rate watch, driven directly (seeded, reproducible)."""

from __future__ import annotations

import random

import pytest

from gateway.policy.quality_config import DetectorConfig, FallbackAlertConfig, QualityConfig
from gateway.quality.regression import FallbackWatch, PassRateDetector, two_proportion_z

CONFIG = DetectorConfig()


def feed(detector: PassRateDetector, rng: random.Random, rate: float, events: int) -> int | None:
    """Feed ``events`` verdicts passing at ``rate``; the 1-based event that fired, if one did."""
    for i in range(1, events + 1):
        if detector.add(rng.random() < rate) is not None:
            return i
    return None


@pytest.mark.parametrize("rate", [0.99, 0.95, 0.9, 0.8, 0.65, 0.5])
def test_a_stable_noisy_model_raises_no_alarm_over_2000_events(rate: float) -> None:
    # Stationary but noisy quality: 10 seeded runs of 2,000 scored events per pass rate.
    for seed in range(10):
        detector = PassRateDetector(CONFIG)
        fired = feed(detector, random.Random(seed), rate, 2000)
        assert fired is None, f"false alarm at event {fired} (rate {rate}, seed {seed})"
        assert detector.events == 2000


@pytest.mark.parametrize(
    ("before", "after", "bound"),
    [(0.95, 0.0, 25), (0.95, 0.5, 100), (0.9, 0.6, 200)],
)
def test_a_degrading_model_is_caught_within_a_bound(
    before: float, after: float, bound: int
) -> None:
    delays = []
    for seed in range(20):
        rng = random.Random(1000 + seed)
        detector = PassRateDetector(CONFIG)
        assert feed(detector, rng, before, 400) is None
        fired = feed(detector, rng, after, bound)
        assert fired is not None, f"not caught within {bound} events (seed {seed})"
        delays.append(fired)
    assert max(delays) <= bound


def test_the_evidence_names_the_drop_and_the_statistic() -> None:
    detector = PassRateDetector(CONFIG)
    rng = random.Random(7)
    assert feed(detector, rng, 0.95, 300) is None
    evidence = None
    for _ in range(50):
        evidence = detector.add(False)
        if evidence is not None:
            break
    assert evidence is not None
    record = evidence.to_dict()
    assert record["baseline_n"] >= CONFIG.min_baseline
    assert record["baseline_rate"] > 0.85
    assert record["recent_n"] >= 1
    assert record["recent_rate"] == 0.0
    assert record["drop"] == pytest.approx(record["baseline_rate"])
    assert record["cusum"] > CONFIG.threshold
    assert record["z"] < -4
    assert record["p_value"] < 1e-4
    # One regression, one alert: the detector starts afresh.
    assert detector.state()["baseline_n"] == 0


def test_nothing_is_tested_before_the_minimum_baseline() -> None:
    detector = PassRateDetector(CONFIG)
    for _ in range(CONFIG.min_baseline - 1):
        assert detector.add(False) is None
    for _ in range(CONFIG.min_baseline):
        assert detector.add(False) is None  # all failures is this model's normal


def test_a_slow_regression_does_not_leak_into_the_baseline() -> None:
    # While the CUSUM is above zero the suspect answers stay out of the baseline.
    detector = PassRateDetector(CONFIG)
    rng = random.Random(3)
    assert feed(detector, rng, 0.9, 500) is None
    fired = feed(detector, rng, 0.7, 600)
    assert fired is not None
    assert fired < 500


def test_two_proportion_z() -> None:
    assert two_proportion_z(90, 100, 45, 50) == pytest.approx(0.0)
    assert two_proportion_z(90, 100, 20, 50) < -5
    assert two_proportion_z(0, 0, 1, 1) == 0.0


def test_fallback_rate_alerts_once_then_rearms() -> None:
    watch = FallbackWatch(FallbackAlertConfig(rate=0.2, window=50, min_requests=20))
    alerts = [watch.observe("main", False) for _ in range(40)]
    assert not any(alerts)
    fired = [a for a in (watch.observe("main", True) for _ in range(30)) if a]
    assert len(fired) == 1
    assert fired[0]["route"] == "main"
    assert fired[0]["rate"] > 0.2
    assert fired[0]["requests"] == 50
    # Recovery below half the threshold re-arms it.
    for _ in range(50):
        assert watch.observe("main", False) is None
    fired = [a for a in (watch.observe("main", True) for _ in range(30)) if a]
    assert len(fired) == 1
    # Routes are independent.
    assert watch.rates()["main"] > 0.2
    assert watch.observe("other", True) is None  # below min_requests


def test_on_regression_precedence_task_type_then_route_then_section() -> None:
    config = QualityConfig.model_validate(
        {
            "on_regression": "alert",
            "routes": {"support": {"on_regression": "demote"}},
            "task_types": {"chat": {"on_regression": "alert"}, "extraction": {}},
        }
    )
    assert config.action_for("support", "extraction") == "demote"  # the route's
    assert config.action_for("support", "chat") == "alert"  # the task type's wins
    assert config.action_for("other", "extraction") == "alert"  # the section's
    with pytest.raises(ValueError, match=r"quality\.routes: unknown route"):
        config.check_references(models={"gpt"}, routes={"gpt", "main"})
