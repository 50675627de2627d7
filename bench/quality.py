"""The regression detector's calibration: false alarms on stable streams, delay on degrading ones.

Seeded simulated verdict streams through ``gateway.regression.PassRateDetector`` with the policy's
default ``quality.detector`` settings (or overrides): false alarms per run of ``--events`` stable
verdicts at several pass rates, then the number of answers from a drop to the alarm (median, p99,
max) for several drops, after ``--warmup`` answers at the old rate.

    python -m bench.quality [--runs 300] [--events 2000] [--threshold 12] [--min-drop 0.1]
"""

from __future__ import annotations

import argparse
import random

from gateway.policy.quality_config import DetectorConfig
from gateway.quality.regression import PassRateDetector

STABLE_RATES = (0.99, 0.95, 0.9, 0.8, 0.65, 0.5)
DROPS = ((0.95, 0.0), (0.95, 0.5), (0.9, 0.6), (0.8, 0.5), (0.95, 0.8))


def false_alarms(config: DetectorConfig, rate: float, runs: int, events: int) -> int:
    alarms = 0
    for seed in range(runs):
        rng = random.Random(seed * 7 + 3)
        detector = PassRateDetector(config)
        alarms += sum(detector.add(rng.random() < rate) is not None for _ in range(events))
    return alarms


def delays(
    config: DetectorConfig, before: float, after: float, runs: int, warmup: int, limit: int
) -> tuple[list[int], int]:
    """Answers from the drop to the alarm per run, and the runs with no alarm (or an early one)."""
    found, missed = [], 0
    for seed in range(runs):
        rng = random.Random(seed + 1000)
        detector = PassRateDetector(config)
        if any(detector.add(rng.random() < before) is not None for _ in range(warmup)):
            missed += 1
            continue
        for answer in range(1, limit + 1):
            if detector.add(rng.random() < after) is not None:
                found.append(answer)
                break
        else:
            missed += 1
    return sorted(found), missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--min-drop", type=float, default=None)
    args = parser.parse_args()
    overrides = {"threshold": args.threshold, "min_drop": args.min_drop}
    config = DetectorConfig(**{k: v for k, v in overrides.items() if v is not None})
    print(f"detector: {config.model_dump()}")
    print(f"false alarms in {args.runs} runs of {args.events} stable verdicts:")
    for rate in STABLE_RATES:
        print(f"  pass rate {rate:.2f}: {false_alarms(config, rate, args.runs, args.events)}")
    print(f"answers from the drop to the alarm ({args.runs} runs, {args.warmup} answers before):")
    for before, after in DROPS:
        found, missed = delays(config, before, after, args.runs, args.warmup, 1000)
        if not found:
            print(f"  {before:.2f} -> {after:.2f}: never ({missed} runs)")
            continue
        p99 = found[min(len(found) - 1, int(len(found) * 0.99))]
        print(
            f"  {before:.2f} -> {after:.2f}: median {found[len(found) // 2]}, p99 {p99}, "
            f"max {found[-1]}, missed {missed}"
        )


if __name__ == "__main__":
    main()
