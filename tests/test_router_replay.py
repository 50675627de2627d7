"""``gateway router replay``: end to end on small synthetic files, and RouteLLM's metrics on
hand-computable cases."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.cli.main import main
from gateway.tiering.embeddings import embed_cached
from gateway.tiering.features import FEATURE_NAMES, NO_OPTIONS, option_features
from gateway.tiering.metrics import apgr, cost_to_reach, cpt, pgr_curve, random_figures
from gateway.tiering.model import (
    BoostedGain,
    KnnGain,
    Prompts,
    RidgeGain,
    StackedGain,
    TextOddsGain,
    fit_good,
)

NAMES = ["Ada", "Grace", "Linus", "Barbara", "Edsger", "Donald", "Frances", "Ken", "Radia", "Tim"]


def math_prompt(i: int) -> str:
    return f"Compute {37 + i} * {41 + 3 * i} - {i * 7}."


def chat_prompt(i: int) -> str:
    name = NAMES[i % len(NAMES)]
    return (
        f"Please write a short, warm and friendly welcome note for my new colleague {name}, "
        f"who joins the support team on Monday number {i}."
    )


def rows(kind: str, count: int, start: int = 0) -> list[dict[str, Any]]:
    """Math prompts: only the frontier gets them right. Chat prompts: both tiers do."""
    make, quality = (
        (math_prompt, {"cheap": 0, "frontier": 1})
        if kind == "math"
        else (chat_prompt, {"cheap": 1, "frontier": 1})
    )
    return [{"prompt": make(i), "quality": quality} for i in range(start, start + count)]


def write(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


@pytest.fixture
def cache(tmp_path: Path, embedder: Any) -> Path:
    """Embeddings of every prompt the tests use, so the command needs no model of its own."""
    path = tmp_path / "emb.npz"
    texts = [math_prompt(i) for i in range(60)] + [chat_prompt(i) for i in range(60)]
    embed_cached(texts, embedder.encode, embedder.name, path)
    return path


def replay(tmp_path: Path, cache: Path, train: Path, test: Path, *extra: str) -> list[Any]:
    out = tmp_path / "scores.jsonl"
    args = ["router", "replay", "--train", str(train), "--score", str(test), "--out", str(out)]
    assert main([*args, "--embedding-cache", str(cache), *extra]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def interleaved_test() -> list[dict[str, Any]]:
    math, chat = rows("math", 4, start=40), rows("chat", 4, start=40)
    return [item for pair in zip(chat, math, strict=True) for item in pair]


def test_scores_every_test_line_in_order(tmp_path: Path, cache: Path) -> None:
    train = write(tmp_path / "train.jsonl", rows("math", 24) + rows("chat", 24))
    test_items = [{"prompt": r["prompt"], "id": n} for n, r in enumerate(interleaved_test())]
    scored = replay(tmp_path, cache, train, write(tmp_path / "test.jsonl", test_items))
    assert [s["prompt"] for s in scored] == [t["prompt"] for t in test_items]
    assert all(set(s) == {"prompt", "frontier_score"} for s in scored)
    math_scores = [s["frontier_score"] for s in scored if s["prompt"].startswith("Compute")]
    chat_scores = [s["frontier_score"] for s in scored if not s["prompt"].startswith("Compute")]
    assert min(math_scores) > max(chat_scores)


@pytest.mark.timeout(240)  # three fits of the whole stack: ~5 s each idle, ~17 s on a busy host
def test_learns_only_from_train(tmp_path: Path, cache: Path) -> None:
    test_items = interleaved_test()
    # The test file's own labels say the opposite of the training file's: they must not matter.
    flipped = [
        {"prompt": t["prompt"], "quality": {"cheap": 1 - t["quality"]["cheap"], "frontier": 0}}
        for t in test_items
    ]
    train = write(tmp_path / "train.jsonl", rows("math", 24) + rows("chat", 24))
    plain = replay(tmp_path, cache, train, write(tmp_path / "a.jsonl", test_items))
    relabelled = replay(tmp_path, cache, train, write(tmp_path / "b.jsonl", flipped))
    assert plain == relabelled
    # Swapping the training labels flips the ranking: the scores come from TRAIN.
    swapped = [
        {"prompt": r["prompt"], "quality": {"cheap": 1, "frontier": 1}} for r in rows("math", 24)
    ] + [{"prompt": r["prompt"], "quality": {"cheap": 0, "frontier": 1}} for r in rows("chat", 24)]
    other = replay(
        tmp_path, cache, write(tmp_path / "swapped.jsonl", swapped), tmp_path / "a.jsonl"
    )
    math_scores = [s["frontier_score"] for s in other if s["prompt"].startswith("Compute")]
    chat_scores = [s["frontier_score"] for s in other if not s["prompt"].startswith("Compute")]
    assert max(math_scores) < min(chat_scores)


def test_report_on_a_hand_computable_case(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 math prompts (only the frontier right) and 4 longer chat prompts (both right): weak
    0.5, strong 1.0. A perfect router's PGR over k = 0..8 strong calls is 0, .25, .5, .75, 1, 1,
    1, 1, 1: APGR 6/8 = 0.75, CPT(50%) = 2/8, CPT(80%) = 4/8. The length router sends the
    (longer) chat prompts first: PGR 0 x5 then .25, .5, .75, 1: APGR 2/8 = 0.25."""
    train = write(tmp_path / "train.jsonl", rows("math", 24) + rows("chat", 24))
    replay(tmp_path, cache, train, write(tmp_path / "test.jsonl", interleaved_test()), "--report")
    report = capsys.readouterr().out
    lines = {line.split("  ")[0].strip(): line for line in report.splitlines()}
    assert "APGR 0.750  CPT(50%)  25.0%  CPT(80%)  50.0%" in lines["router"]
    assert "APGR 0.250  CPT(50%)  75.0%  CPT(80%) 100.0%" in lines["prompt length"]
    assert "APGR 0.500  CPT(50%)  50.0%  CPT(80%)  87.5%" in lines["random"]
    assert "cheap quality 0.5000, frontier quality 1.0000" in report


def test_a_bad_training_line_names_its_place(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = write(tmp_path / "train.jsonl", [*rows("math", 2), {"prompt": "no quality"}])
    test = write(tmp_path / "test.jsonl", rows("chat", 1))
    args = ["router", "replay", "--train", str(train), "--score", str(test)]
    assert main([*args, "--out", str(tmp_path / "o.jsonl"), "--embedding-cache", str(cache)]) == 2
    assert "train.jsonl:3: expected 'quality'" in capsys.readouterr().err


def test_other_tier_keys(tmp_path: Path, cache: Path) -> None:
    items = [
        {"prompt": r["prompt"], "quality": {"mini": r["quality"]["cheap"], "big": 1}}
        for r in rows("math", 12) + rows("chat", 12)
    ]
    train = write(tmp_path / "train.jsonl", items)
    scored = replay(
        tmp_path, cache, train, write(tmp_path / "t.jsonl", interleaved_test()),
        "--cheap", "mini", "--frontier", "big",
    )  # fmt: skip
    assert len(scored) == 8


def test_apgr_of_oracle_constant_and_reversed_scores() -> None:
    weak, strong = np.zeros(4), np.array([1.0, 1.0, 0.0, 0.0])
    oracle = np.array([2.0, 1.0, 0.0, 0.0])
    assert pgr_curve(oracle, weak, strong).tolist() == [0, 0.5, 1, 1, 1]
    assert apgr(oracle, weak, strong) == pytest.approx(0.75)
    assert cpt(oracle, weak, strong, 0.5) == pytest.approx(0.25)
    assert cpt(oracle, weak, strong, 0.8) == pytest.approx(0.5)
    # A constant score is a random router in expectation: exactly 0.5, whatever the order.
    assert apgr(np.zeros(4), weak, strong) == pytest.approx(0.5)
    # Reversed (ties at the bottom share their gain): PGR 0, 0, 0, .5, 1.
    assert apgr(np.array([0.0, 0.0, 1.0, 2.0]), weak, strong) == pytest.approx(0.25)


def test_random_router_is_the_expectation_over_orders() -> None:
    rng = np.random.default_rng(1)
    weak, strong = (rng.random(400) < 0.6).astype(float), (rng.random(400) < 0.8).astype(float)
    area, cpt50, _ = random_figures(weak, strong)
    assert area == pytest.approx(0.5)
    assert cpt50 == pytest.approx(0.5, abs=0.01)
    shuffled = [apgr(rng.random(400), weak, strong) for _ in range(300)]
    assert float(np.mean(shuffled)) == pytest.approx(area, abs=0.02)


def test_cost_to_reach_a_quality() -> None:
    weak, strong = np.array([0.0, 1.0, 1.0]), np.ones(3)
    cheap_cost, frontier_cost = np.full(3, 1.0), np.full(3, 10.0)
    # Routing the one prompt the cheap model fails reaches full quality for 10 + 1 + 1.
    cost, share = cost_to_reach(np.array([1.0, 0, 0]), weak, strong, cheap_cost, frontier_cost, 1.0)
    assert cost == 12.0
    assert share == pytest.approx(1 / 3)


def test_text_odds_learns_from_words_and_soft_labels() -> None:
    """The TF-IDF model ranks prompts by P(frontier good) - P(cheap good): it sees the prompts
    the frontier gets wrong too, takes qualities between 0 and 1, and survives constant labels
    and prompts without a single term."""
    texts = [f"integrate the series {i} carefully" for i in range(20)] + [
        f"say hello to friend {i}" for i in range(20)
    ]
    x = Prompts.of(texts, np.zeros((40, 4), dtype=np.float32))
    cheap = np.r_[np.full(20, 0.2), np.full(20, 0.9)]  # soft labels
    frontier = np.r_[np.ones(20), np.full(20, 0.9)]
    model = TextOddsGain().fit(x, cheap, frontier)
    scores = model.predict(
        Prompts.of(["integrate the series 99", "say hello to friend 99"], x.emb[:2])
    )
    assert scores[0] > scores[1]
    constant = TextOddsGain().fit(x, np.ones(40), np.ones(40)).predict(x)
    assert np.all(constant == 0.0)
    empty = Prompts.of(["", "?"], np.zeros((2, 4), dtype=np.float32))
    assert TextOddsGain().fit(empty, np.array([0.0, 1.0]), np.ones(2)).predict(empty).shape == (2,)


def test_good_classifier_of_0_1_qualities_is_the_weighted_one() -> None:
    """With 0/1 qualities ``fit_good`` fits without sample weights (weighted binning made the
    trees 5-10x slower); every row has weight 1 there, so it must be the model fitted with
    them. Soft qualities still go through the weights."""
    from sklearn.ensemble import HistGradientBoostingClassifier  # type: ignore[import-untyped]

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6))
    x[:, 0] = rng.integers(0, 5, size=300)  # few distinct values
    quality = (x[:, 1] + 0.5 * x[:, 0] + rng.normal(size=300) > 1).astype(float)

    def make() -> Any:
        return HistGradientBoostingClassifier(max_iter=30, random_state=0)

    keep = np.r_[quality, 1.0 - quality] > 0
    rows, labels = np.vstack([x, x])[keep], np.r_[np.ones(300), np.zeros(300)][keep]
    weighted = make().fit(rows, labels, sample_weight=np.ones(300)).predict_proba(x)
    assert np.array_equal(fit_good(make, x, quality).predict_proba(x), weighted)
    soft = np.clip(quality, 0.2, 0.9)
    weights = np.r_[soft, 1.0 - soft]
    rows, labels = np.vstack([x, x]), np.r_[np.ones(300), np.zeros(300)]
    expected = make().fit(rows, labels, sample_weight=weights).predict_proba(x)
    assert np.array_equal(fit_good(make, x, soft).predict_proba(x), expected)


def test_boosted_trees_learn_an_interaction_the_linear_models_cannot() -> None:
    """The cheap tier fails long prompts on one side of the embedding space and short ones on
    the other (an XOR of a text feature and an embedding direction). No linear model of the
    gain can rank that; the trees, of the gain or of the odds, must. Constant labels and a
    handful of prompts must not break them."""
    rng = np.random.default_rng(5)
    n = 3000
    lengths = rng.integers(1, 60, size=n)
    texts = [" ".join(["word"] * int(k)) for k in lengths]
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    x = Prompts.of(texts, emb)
    fails = (lengths > 30) ^ (emb[:, 0] > 0)
    cheap, frontier = np.where(fails, 0.0, 1.0), np.ones(n)
    train, test = np.arange(2000), np.arange(2000, n)

    def held_out(model: Any) -> float:
        model.fit(x.take(train), cheap[train], frontier[train])
        return apgr(model.predict(x.take(test)), cheap[test], frontier[test])

    best = apgr(1.0 * fails[test], cheap[test], frontier[test])  # ~0.75: half the prompts fail
    assert held_out(RidgeGain(alpha=1.0)) < 0.55  # random: 0.5
    assert held_out(BoostedGain()) > best - 0.02
    assert held_out(BoostedGain(odds=True)) > best - 0.02
    for model in (BoostedGain(), BoostedGain(odds=True)):
        constant = model.fit(x.take(train), np.ones(2000), np.ones(2000)).predict(x.take(test))
        assert np.allclose(constant, constant[0])
        few = model.fit(x.take(train[:5]), cheap[:5], frontier[:5]).predict(x.take(test))
        assert few.shape == (1000,)
        assert np.all(np.isfinite(few))


def test_the_stack_weighs_what_predicts_and_drops_what_does_not() -> None:
    """The frontier is only worth it on long prompts. Ridge on the text features (length among
    them) sees that; kNN on random embeddings cannot. The stack must put its weight on the
    first, rank held-out prompts by it, and not refit what it weighs 0."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 60, size=400)
    texts = [" ".join(["word"] * int(n)) for n in lengths]
    emb = rng.normal(size=(400, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    x = Prompts.of(texts, emb)
    long = lengths > 30
    cheap, frontier = np.where(long, 0.0, 1.0), np.ones(400)
    rows = np.arange(400)
    train, test = rows[:300], rows[300:]
    stack = StackedGain(
        [lambda: KnnGain(k=8), lambda: RidgeGain(alpha=1.0, use_embedding=False)], seed=1
    ).fit(x.take(train), cheap[train], frontier[train])
    assert stack.weights[1] > 0.8
    assert stack.oof_apgr["ridge(alpha=1, features)"] > stack.oof_apgr["knn(k=8)"]
    held = x.take(test)
    alone = RidgeGain(alpha=1.0, use_embedding=False).fit(
        x.take(train), cheap[train], frontier[train]
    )
    assert apgr(stack.predict(held), cheap[test], frontier[test]) >= (
        apgr(alone.predict(held), cheap[test], frontier[test]) - 0.01
    )
    assert apgr(stack.predict(held), cheap[test], frontier[test]) > 0.65  # random: 0.5
    if stack.weights[0] == 0:
        assert stack.name == "stack(ridge(alpha=1, features) 1.00)"
    tiny = StackedGain([lambda: RidgeGain(alpha=1.0, use_embedding=False)]).fit(
        x.take(rows[:6]), cheap[:6], frontier[:6]
    )
    assert tiny.predict(x.take(test)).shape == (100,)


def mc_question(rng: np.random.Generator, alike: bool) -> str:
    """A multiple-choice question on random words; its four options are either one phrase with
    one word changed (a fine distinction) or four unrelated phrases of the same length."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=5)) for _ in range(500)]  # one length, no digits
    stem = " ".join(rng.choice(vocab, size=12)) + "?"
    phrase = list(rng.choice(vocab, size=5))
    options = []
    for _ in range(4):
        words = list(phrase) if alike else list(rng.choice(vocab, size=5))
        if alike:
            words[int(rng.integers(5))] = str(rng.choice(vocab))
        options.append(" ".join(words))
    lines = "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", options, strict=True))
    return f"{stem}\n{lines}\nAnswer:"


def test_option_features_read_a_multiple_choice_question() -> None:
    def named(text: str) -> dict[str, float]:
        return dict(zip(FEATURE_NAMES[-8:], option_features(text), strict=True))

    alike = named("Which is right?\nA. the red car\nB. the red bus\nC. the red cars\nD. red car")
    unlike = named("Which is right?\n(A) a dog\n(B) some cheese\n(C) the moon\n(D) quartz")
    assert alike["option_overlap"] > 0.3
    assert alike["option_max_overlap"] > unlike["option_max_overlap"] == 0.0
    numbers = named("How much charge?\nA. 0.005 C\nB. 0.01 C\nC. 0.02 C\nD. 0.5 C\nAnswer:")
    assert numbers["numeric_options"] == 1.0
    assert unlike["numeric_options"] == 0.0
    assert (
        named("Q?\nA. I and II only\nB. III only\nC. none of the above\nD. x")["all_or_none_option"]
        == 1.0
    )
    assert named("Q?\nA. I and II only\nB. III only")["statement_options"] == 1.0
    assert named("Which dog barks?\nA. a small dog\nB. a cat")["option_stem_overlap"] > 0
    assert option_features("Compute 37 * 41. A. is not an option line") == [0.0] * 8
    assert option_features("") == [0.0] * 8


def test_the_features_see_options_that_ask_for_a_fine_distinction() -> None:
    """The cheap tier fails exactly the questions whose options differ by one word: the ridge on
    the text features must rank them first on held-out questions. Lengths, digits and the other
    features tell nothing here: without the options' features the ridge ranks at random."""
    rng = np.random.default_rng(11)
    hard = rng.random(600) < 0.4
    texts = [mc_question(rng, bool(h)) for h in hard]
    x = Prompts.of(texts, np.zeros((600, 4), dtype=np.float32))
    cheap, frontier = np.where(hard, 0.0, 1.0), np.ones(600)
    model = RidgeGain(alpha=1.0, use_embedding=False).fit(
        x.take(np.arange(400)), cheap[:400], frontier[:400]
    )
    held = np.arange(400, 600)
    best = apgr(1.0 * hard[held], cheap[held], frontier[held])
    assert apgr(model.predict(x.take(held)), cheap[held], frontier[held]) > best - 0.01
    blind = Prompts(x.texts, x.emb, x.feats[:, : -len(NO_OPTIONS)])
    model = RidgeGain(alpha=1.0, use_embedding=False).fit(
        blind.take(np.arange(400)), cheap[:400], frontier[:400]
    )
    assert apgr(model.predict(blind.take(held)), cheap[held], frontier[held]) < 0.6  # random: 0.5


def test_the_word_counts_of_a_word_problem() -> None:
    """The word-level features, counted by hand (any case where the words are any case)."""
    from gateway.tiering.features import prompt_features

    text = (
        "Tom buys 3 pens for $2 each. Then Ann pays MORE THAN half, 50%. "
        "How many hours and Minutes did not pass? def f(): return x == y -> z; sqrt"
    )
    values = dict(zip(FEATURE_NAMES, prompt_features(text), strict=True))
    # each, MORE THAN, half, %
    assert values["log_step_words"] == pytest.approx(math.log1p(4))
    # $, hours, Minutes: three units of three kinds ("", "hours", "minutes")
    assert values["log_units"] == pytest.approx(math.log1p(3))
    assert values["log_unit_kinds"] == pytest.approx(math.log1p(3))
    assert values["how_many"] == 1.0
    assert values["negations"] == 1.0  # "not"
    # Ann (Tom starts the text, Then and How start sentences); Minutes is mid-sentence
    assert values["log_names"] == pytest.approx(math.log1p(2))
    # "def ", "return", "==", "->", ";"
    assert values["log_code_markers"] == pytest.approx(math.log1p(5))
