"""The tier router's decisions: cold start, learning from outcomes, the share knob, exploration."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.policy.model import Policy, hash_key
from gateway.tiering.features import prompt_features
from gateway.tiering.router import FRONTIER, TierRouter, quality_signal

DIM = 384
BOTH = {"cheap", "frontier"}


def policy(tiering: dict[str, Any], task_types: dict[str, Any] | None = None) -> Policy:
    return Policy.model_validate(
        {
            "providers": [{"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:9"}],
            "models": [
                {"name": "small", "provider": "p", "id": "small-1", "tier": "cheap"},
                {"name": "big", "provider": "p", "id": "big-1", "tier": "frontier"},
            ],
            "routes": [{"name": "r", "candidates": ["small", "big"], "tiering": tiering}],
            "teams": [{"name": "t", "key_sha256": hash_key("k")}],
            "task_types": task_types or {},
        }
    )


def unit(rng: np.random.Generator, center: np.ndarray, noise: float = 0.02) -> np.ndarray:
    v = center + noise * rng.standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def centers() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(DIM), rng.standard_normal(DIM)
    return a / np.linalg.norm(a), b / np.linalg.norm(b)


def teach(router: TierRouter, rng: np.random.Generator, center: np.ndarray, cheap: float,
          frontier: float, count: int, tag: str) -> None:  # fmt: skip
    """Outcomes of both tiers near ``center``."""
    for i in range(count):
        for tier, quality in (("cheap", cheap), (FRONTIER, frontier)):
            request_id = f"{tag}-{tier}-{i}"
            router.remember(request_id, "r", unit(rng, center))
            router.served(request_id, tier, (quality, 1.0))


def frontier_share(decisions: list[Any]) -> float:
    return float(sum(d.tier == FRONTIER for d in decisions)) / len(decisions)


def test_cold_start_follows_the_task_types_prior(centers: Any) -> None:
    router = TierRouter(
        policy(
            {"max_frontier_share": 1.0, "exploration": 0},
            {"chat": {"frontier_gain": 0.0}, "proof": {"frontier_gain": 0.3}},
        ),
        seed=1,
    )
    vector = unit(np.random.default_rng(1), centers[0])
    chat = router.decide("r", "chat", vector, BOTH)
    proof = router.decide("r", "proof", vector, BOTH)
    assert chat is not None
    assert (chat.tier, chat.reason) == ("cheap", "no predicted gain")
    assert proof is not None
    assert proof.tier == FRONTIER
    assert proof.predicted_gain == pytest.approx(0.3)


def test_learns_where_the_frontier_pays(centers: Any) -> None:
    rng = np.random.default_rng(2)
    router = TierRouter(policy({"max_frontier_share": 0.5, "exploration": 0}), seed=2)
    hard, easy = centers
    teach(router, rng, hard, cheap=0.2, frontier=0.9, count=20, tag="hard")
    teach(router, rng, easy, cheap=0.9, frontier=0.9, count=20, tag="easy")
    assert router.outcomes("r") == 80
    decisions = []
    for i in range(100):
        center = hard if i % 2 else easy
        decision = router.decide("r", "general", unit(rng, center), BOTH)
        assert decision is not None
        decisions.append((center is hard, decision))
    assert all(d.predicted_gain > 0.4 for is_hard, d in decisions if is_hard)
    assert all(abs(d.predicted_gain) < 0.05 for is_hard, d in decisions if not is_hard)
    # After the first few (the threshold needs history), hard prompts go to the frontier.
    late = decisions[10:]
    assert all(d.tier == FRONTIER for is_hard, d in late if is_hard)
    assert all(d.tier == "cheap" for is_hard, d in late if not is_hard)


@pytest.mark.parametrize("share", [0.1, 0.25])
def test_the_frontier_share_never_exceeds_the_knob(centers: Any, share: float) -> None:
    rng = np.random.default_rng(3)
    router = TierRouter(
        policy({"max_frontier_share": share, "exploration": 0, "window": 100}), seed=3
    )
    teach(router, rng, centers[0], cheap=0.0, frontier=1.0, count=10, tag="hard")
    # Every request looks like one where the frontier wins: the knob alone limits it.
    decisions = [router.decide("r", "general", unit(rng, centers[0]), BOTH) for _ in range(400)]
    assert frontier_share(decisions) <= share + 0.01
    assert frontier_share(decisions) >= share - 0.05


def test_a_knob_of_one_puts_no_cap_on_the_frontier(centers: Any) -> None:
    """``max_frontier_share: 1``: every request with the highest gains goes to the frontier
    (the share is never "at the cap": it cannot go over 100 %)."""
    rng = np.random.default_rng(13)
    router = TierRouter(policy({"max_frontier_share": 1.0, "exploration": 0}), seed=13)
    teach(router, rng, centers[0], cheap=0.0, frontier=1.0, count=10, tag="hard")
    decisions = [router.decide("r", "general", unit(rng, centers[0]), BOTH) for _ in range(50)]
    assert all(d is not None and d.tier == FRONTIER for d in decisions)
    assert {d.code for d in decisions if d is not None} == {"top_share"}


def test_exploration_sends_a_share_to_the_other_tier(centers: Any) -> None:
    rng = np.random.default_rng(4)
    router = TierRouter(policy({"max_frontier_share": 0.5, "exploration": 0.2}), seed=4)
    decisions = [router.decide("r", "general", unit(rng, centers[1]), BOTH) for _ in range(1000)]
    explored = [d for d in decisions if d is not None and d.explored]
    assert 0.16 < len(explored) / 1000 < 0.24
    # No gain anywhere: exploration is the only way to the frontier.
    assert all(d.tier == FRONTIER and d.reason == "exploration" for d in explored)
    assert frontier_share(decisions) == len(explored) / 1000


def test_a_single_allowed_tier_is_no_choice(centers: Any) -> None:
    router = TierRouter(policy({}), seed=5)
    decision = router.decide("r", "general", None, {"cheap"})
    assert decision is not None
    assert (decision.tier, decision.explored) == ("cheap", False)
    assert router.decide("other-route", "general", None, BOTH) is None


def test_feedback_after_the_request_is_an_outcome(centers: Any) -> None:
    router = TierRouter(policy({}), seed=6)
    router.remember("req-1", "r", unit(np.random.default_rng(6), centers[0]))
    router.served("req-1", FRONTIER, None)  # no quality signal yet
    assert router.outcomes("r") == 0
    assert router.observe("req-1", 0.8) is True
    assert router.outcomes("r") == 1
    assert router.observe("req-1", 0.1) is True  # a later grade replaces the first
    assert router.outcomes("r") == 1
    assert router.observe("unknown", 0.8) is False


def test_quality_signal_prefers_feedback_then_judge_then_heuristics() -> None:
    assert quality_signal({"heuristic": {"score": 0.4}, "judge": {"score": 0.7}}) == (0.7, 1.0)
    assert quality_signal({"heuristic": {"score": 0.4}, "feedback": {"score": 1}}) == (1.0, 1.0)
    assert quality_signal({"heuristic": {"score": 0.4, "passed": False}}) == (0.4, 0.2)
    assert quality_signal({"judge": {"error": "no_score"}, "other": 3}) is None


def test_heuristic_passes_weigh_less_than_grades(centers: Any) -> None:
    """Fluent wrong answers pass the heuristics: a few real grades outweigh many passes."""
    rng = np.random.default_rng(7)
    router = TierRouter(policy({"max_frontier_share": 1.0, "exploration": 0}), seed=7)
    for i in range(12):
        router.remember(f"h{i}", "r", unit(rng, centers[0]))
        router.served(f"h{i}", "cheap", (1.0, 0.2))  # heuristics: looks fine
    for i in range(4):
        router.remember(f"g{i}", "r", unit(rng, centers[0]))
        router.served(f"g{i}", "cheap", (0.0, 1.0))  # graded: wrong
    cheap_q, _ = router._routes["r"].memory.estimate(unit(rng, centers[0]), None, 32, (0.7, 0.7))
    assert cheap_q < 0.5


def test_the_feature_model_learns_what_the_embedding_does_not_carry() -> None:
    """Embeddings in random directions (no neighbourhood to learn from); the cheap tier fails
    the prompts with many numbers. Once each tier has enough outcomes, the feature model ranks
    a many-number prompt above a plain one, which the neighbourhood alone could not."""
    rng = np.random.default_rng(3)
    router = TierRouter(policy({"max_frontier_share": 1.0, "exploration": 0}), seed=3)

    def prompt(hard: bool) -> str:
        numbers = " ".join(str(int(n)) for n in rng.integers(10, 999, 12 if hard else 1))
        return f"A question about {numbers} things?"

    def random_unit() -> np.ndarray:
        v = rng.standard_normal(DIM)
        return (v / np.linalg.norm(v)).astype(np.float32)

    for i in range(400):
        hard = bool(i % 2)
        tier = "cheap" if i % 4 < 2 else FRONTIER
        quality = 0.0 if hard and tier == "cheap" else 1.0
        router.remember(f"q{i}", "r", random_unit(), np.array(prompt_features(prompt(hard))))
        router.served(f"q{i}", tier, (quality, 1.0))
    assert all(model is not None for model in router._routes["r"].memory.models.values())
    hard_gain = router.predicted_gain(
        "r", "general", random_unit(), np.array(prompt_features(prompt(True)))
    )
    easy_gain = router.predicted_gain(
        "r", "general", random_unit(), np.array(prompt_features(prompt(False)))
    )
    assert hard_gain > 0.3 > easy_gain
    # Without features the same router has nothing to tell them apart by.
    blind = [router.predicted_gain("r", "general", random_unit(), None) for _ in range(20)]
    assert max(blind) - min(blind) < 0.2


def test_outcomes_of_the_same_prompt_outweigh_its_neighbourhood(centers: Any) -> None:
    """A repeated prompt the cheap tier failed three times is a frontier prompt, though its
    neighbourhood (and the feature model) says the cheap tier does well there."""
    rng = np.random.default_rng(4)
    router = TierRouter(policy({"max_frontier_share": 1.0, "exploration": 0}), seed=4)
    features = np.array(prompt_features("What is the capital of France?"))
    teach(router, rng, centers[0], cheap=1.0, frontier=1.0, count=100, tag="near")
    repeated = unit(rng, centers[0], noise=0.0)
    for i in range(3):
        router.remember(f"again-{i}", "r", repeated, features)
        router.served(f"again-{i}", "cheap", (0.0, 1.0))
    assert router.predicted_gain("r", "general", repeated, features) > 0.4
    elsewhere = unit(rng, centers[0], noise=0.05)  # similar, not the same prompt
    assert abs(router.predicted_gain("r", "general", elsewhere, features)) < 0.1


def test_the_rolling_quantile_is_numpys_over_the_window() -> None:
    from gateway.tiering.memory import RollingQuantile

    rng = np.random.default_rng(0)
    rolling, values = RollingQuantile(50), []
    for i in range(400):
        value = 0.5 if i % 7 == 0 else float(rng.standard_normal())  # ties too
        rolling.append(value)
        values.append(value)
        for q in (0.0, 0.3, 0.7, 0.95, 1.0):
            assert rolling.quantile(q) == pytest.approx(np.quantile(values[-50:], q), abs=1e-12)
    assert len(rolling) == 50


def test_exploration_with_a_model_is_drawn_near_the_threshold() -> None:
    """Band exploration: no chance far from the threshold, the route's whole ``exploration``
    share on average over its recent gains (the band clipped at the ends too)."""
    from gateway.tiering.memory import RollingQuantile
    from gateway.tiering.router import EXPLORE_BAND, _band_exploration

    rng = np.random.default_rng(1)
    rolling, recent = RollingQuantile(500), rng.standard_normal(500)
    for value in recent:
        rolling.append(float(value))
    assert rolling.rank(-100.0) == 0.0
    assert rolling.rank(100.0) == 1.0
    assert rolling.rank(rolling.quantile(0.3)) == pytest.approx(0.3, abs=0.01)
    for share in (0.45, 0.1, 0.9):
        threshold = 1 - share
        ranks = np.array([rolling.rank(g) for g in recent])
        chances = np.array([_band_exploration(rank, threshold, 0.05) for rank in ranks])
        assert chances.mean() == pytest.approx(0.05, abs=0.001)
        far = np.abs(ranks - threshold) > EXPLORE_BAND + 0.01
        assert far.any()
        assert (chances[far] == 0).all()


def test_the_feature_models_sums_follow_the_ring() -> None:
    """After the ring has wrapped and outcomes were graded again, each tier's model is the
    weighted ridge on exactly the outcomes the ring holds (computed here from scratch)."""
    from gateway.tiering.memory import FEATURE_ALPHA, Memory

    rng = np.random.default_rng(5)
    memory = Memory(128)
    serials = []
    for i in range(300):
        vector = unit(rng, np.ones(DIM) / np.sqrt(DIM), noise=1.0)
        features = None if i % 11 == 0 else rng.standard_normal(31) * 3 + 1
        tier = FRONTIER if i % 3 == 0 else "cheap"
        serials.append(memory.add(vector, features, tier, float(rng.random()), 1.0 - 0.8 * (i % 2)))
    for serial in serials[-40::3]:
        memory.regrade(serial, float(rng.random()), 1.0)
    memory.refit()
    for is_frontier in (False, True):
        rows = np.flatnonzero((memory.frontier == is_frontier) & memory.featured)
        x, y, w = memory.features[rows], memory.quality[rows], memory.weight[rows]
        mean = w @ x / w.sum()
        scale = np.sqrt(w @ (x - mean) ** 2 / w.sum()) + 1e-9
        z = (x - mean) / scale
        y_mean = float(w @ y / w.sum())
        gram = (z * w[:, None]).T @ z + FEATURE_ALPHA * np.eye(31)
        coef = np.linalg.solve(gram, (z * w[:, None]).T @ (y - y_mean))
        model = memory.models[is_frontier]
        assert model is not None
        assert model.intercept == pytest.approx(y_mean, abs=1e-9)
        np.testing.assert_allclose(model.mean, mean, atol=1e-9)
        np.testing.assert_allclose(model.coef, coef, atol=1e-9)


def test_each_tiers_neighbourhood_follows_the_ring() -> None:
    """The rows each tier keeps track of are the ring's rows of that tier after it wrapped
    many times with tiers in a random order, and a tier's estimate is the documented
    neighbourhood over them: the softmax-weighted quality of its ``k`` most similar outcomes,
    shrunk towards the prior (computed here from scratch with a full sort)."""
    from gateway.tiering.memory import PRIOR_WEIGHT, SIMILARITY_SCALE, Memory

    rng = np.random.default_rng(11)
    memory = Memory(96)
    for i in range(1000):
        tier = FRONTIER if rng.random() < (0.1 if i < 500 else 0.6) else "cheap"
        vector = unit(rng, np.ones(DIM) / np.sqrt(DIM), noise=0.1)
        memory.add(vector, None, tier, float(rng.random()), float(rng.choice([0.2, 1.0])))
        for is_frontier in (False, True):
            held = memory.rows[is_frontier][: memory.filled[is_frontier]]
            expected = np.flatnonzero(memory.frontier[: min(i + 1, 96)] == is_frontier)
            assert sorted(held.tolist()) == expected.tolist()
    k, priors = 16, (0.6, 0.8)
    for _ in range(20):
        query = unit(rng, np.ones(DIM) / np.sqrt(DIM), noise=0.1)
        sims = (memory.vectors @ query).astype(np.float64)  # type: ignore[operator]
        estimates = memory.estimate(query, None, k, priors)
        for is_frontier, got, prior in zip((False, True), estimates, priors, strict=True):
            rows = np.flatnonzero(memory.frontier == is_frontier)
            rows = rows[np.argsort(-sims[rows])[:k]]
            graded = memory.weight[rows]
            weights = np.exp((sims[rows] - sims[rows].max()) / SIMILARITY_SCALE) * graded
            local = weights @ memory.quality[rows] / weights.sum()
            trust = graded.sum() / (graded.sum() + PRIOR_WEIGHT)
            assert got == pytest.approx(trust * local + (1 - trust) * prior, abs=1e-9)


def test_serve_keeps_numpys_blas_on_one_thread() -> None:
    """``gateway serve`` puts numpy's BLAS on one thread (the tier router's matrix-vector
    product must not wait for busy cores); run in a child so this process keeps its pool."""
    import subprocess
    import sys

    script = (
        "import numpy, threadpoolctl\n"
        "from gateway.core.background import single_thread_blas\n"
        "single_thread_blas()\n"
        "blas = [i for i in threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas']\n"
        "print(len(blas), sorted({i['num_threads'] for i in blas}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    count, threads = done.stdout.split(maxsplit=1)
    assert int(count) >= 1  # numpy's OpenBLAS was found
    assert threads.strip() == "[1]"


def test_a_reload_keeps_what_a_route_learnt_and_applies_its_knobs(centers: Any) -> None:
    hard, _ = centers
    router = TierRouter(policy({"max_frontier_share": 1.0, "exploration": 0.0}), seed=12)
    teach(router, np.random.default_rng(12), hard, cheap=0.2, frontier=0.9, count=30, tag="h")
    probe = unit(np.random.default_rng(13), hard)
    gain = router.predicted_gain("r", "general", probe, None)
    assert gain > 0.3
    router.configure(policy({"max_frontier_share": 0.0, "exploration": 0.0}))
    assert router.outcomes("r") == 60
    assert router.predicted_gain("r", "general", probe, None) == gain
    decision = router.decide("r", "general", probe, BOTH)
    assert decision is not None
    assert (decision.tier, decision.reason) == ("cheap", "frontier share at the 0% cap")


def test_a_smaller_memory_keeps_the_newest_outcomes_and_their_late_grades(centers: Any) -> None:
    """Shrinking ``memory`` keeps the newest outcomes in order, as if the ring had always been
    that size; a late grade of a kept outcome replaces it there, one of a dropped outcome
    is not added again."""
    rng = np.random.default_rng(14)
    router = TierRouter(policy({"memory": 64}), seed=14)
    fresh = TierRouter(policy({"memory": 16}), seed=14)
    for i in range(100):
        vector = unit(rng, centers[i % 2], noise=0.3)
        features = np.array(prompt_features(f"question {i} with {i % 7} numbers 1 2 3"))
        tier, quality = (FRONTIER if i % 3 else "cheap"), float(rng.random())
        for each in (router, fresh) if i >= 84 else (router,):
            each.remember(f"q{i}", "r", vector, features)
            each.served(f"q{i}", tier, (quality, 1.0))
    router.configure(policy({"memory": 16}))
    assert router.outcomes("r") == 16
    probes = [unit(rng, c, noise=0.3) for c in centers]
    features = np.array(prompt_features("question 7 with 3 numbers 1 2 3"))
    for probe in probes:
        assert router.predicted_gain("r", "general", probe, features) == pytest.approx(
            fresh.predicted_gain("r", "general", probe, features), abs=1e-12
        )
    for each in (router, fresh):
        assert each.observe("q99", 0.0) is True  # kept: graded again in place
    assert router.observe("q10", 1.0) is True  # dropped by the reload: not added again
    assert router.outcomes("r") == fresh.outcomes("r") == 16
    for probe in probes:
        assert router.predicted_gain("r", "general", probe, features) == pytest.approx(
            fresh.predicted_gain("r", "general", probe, features), abs=1e-12
        )


def test_a_route_that_loses_tiering_forgets_and_one_that_gains_it_starts_cold(
    centers: Any,
) -> None:
    router = TierRouter(policy({}), seed=15)
    teach(router, np.random.default_rng(15), centers[0], cheap=0.2, frontier=0.9, count=5, tag="a")
    router.remember("late", "r", unit(np.random.default_rng(16), centers[0]))
    router.served("late", "cheap", None)
    without = policy({})
    router.configure(
        without.model_copy(
            update={"routes": [without.routes[0].model_copy(update={"tiering": None})]}
        )
    )
    assert not router.enabled("r")
    assert router.observe("late", 0.5) is False  # its route has no tier router any more
    router.configure(policy({}))
    assert router.enabled("r")
    assert router.outcomes("r") == 0
    assert router.observe("late", 0.5) is False
