"""The one percentile the gateway reports: nearest rank, so a figure is always a measured value."""

from __future__ import annotations

import math
from collections.abc import Iterable


def nearest_rank(values: Iterable[float], q: float) -> float | None:
    """The ``q`` (0..1) nearest-rank percentile of ``values``; ``None`` when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
