"""The share knob as a budget: no `window` consecutive decisions give the frontier more than
``max_frontier_share`` of them, and the threshold moves so the route spends what it may."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.policy.model import TieringConfig
from gateway.tiering.route_state import BUDGET_MIN_DECISIONS, RouteState
from gateway.tiering.router import FRONTIER, TierRouter
from tests.test_tiering import BOTH, centers, policy, teach, unit  # noqa: F401 (a fixture)


@pytest.mark.parametrize(("share", "exploration"), [(0.25, 0.0), (0.2, 0.3), (0.35, 0.5)])
def test_no_window_of_decisions_goes_over_the_budget(
    centers: Any,  # noqa: F811 (the fixture)
    share: float,
    exploration: float,
) -> None:
    window = 40
    rng = np.random.default_rng(21)
    router = TierRouter(
        policy({"max_frontier_share": share, "exploration": exploration, "window": window}),
        seed=21,
    )
    teach(router, rng, centers[0], cheap=0.0, frontier=1.0, count=10, tag="hard")
    # Every request looks like one where the frontier wins: the budget alone limits it, and
    # exploration (which flips requests to the frontier too) never spends past it.
    decisions = [router.decide("r", "general", unit(rng, centers[0]), BOTH) for _ in range(400)]
    frontier = np.array([d is not None and d.tier == FRONTIER for d in decisions], dtype=int)
    runs = np.convolve(frontier, np.ones(window, dtype=int), mode="valid")
    assert runs.max() <= share * window
    # ... and spends it.
    assert runs.max() == int(share * window)
    assert frontier.mean() >= share - 0.02


def state_with(share: float, frontier_choices: int, decisions: int = 100) -> RouteState:
    state = RouteState(TieringConfig(max_frontier_share=share, window=decisions))
    for gain in np.linspace(0.0, 1.0, decisions):
        state.gains.append(float(gain))
    state.choices.extend([True] * frontier_choices + [False] * (decisions - frontier_choices))
    return state


def test_the_threshold_comes_down_while_the_budget_is_under_spent() -> None:
    knob = 0.4
    on_budget = state_with(knob, 40).threshold(0.5)
    assert on_budget == pytest.approx(state_with(knob, 40).gains.quantile(1 - knob))
    # Under the knob: a lower threshold (more requests qualify); over it, a higher one.
    assert state_with(knob, 30).threshold(0.5) < on_budget - 0.1
    assert state_with(knob, 45).threshold(0.5) > on_budget + 0.05
    # The first few decisions' share is noise: the knob's own quantile until there are enough.
    few = RouteState(TieringConfig(max_frontier_share=knob))
    for gain in np.linspace(0.0, 1.0, BUDGET_MIN_DECISIONS - 1):
        few.gains.append(float(gain))
    few.choices.extend([False] * (BUDGET_MIN_DECISIONS - 1))
    assert few.threshold(0.5) == pytest.approx(few.gains.quantile(1 - knob))
    # No recent gains at all: the request's own gain is the threshold.
    assert RouteState(TieringConfig(max_frontier_share=knob)).threshold(0.3) == 0.3
