"""A trained tier model deployed on a route: ``gateway router train`` writes it, the file scores
as the fitted stack did, a route loads it and its decisions follow it on held-out prompts, live
outcomes take over as they accumulate, and a file that cannot be used is refused at check-config
and reload (never at a request)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from threadpoolctl import threadpool_limits

from gateway.cli.main import main
from gateway.core.runtime import RUNTIME
from gateway.policy.model import Policy, hash_key
from gateway.tiering.artifact import save_stack
from gateway.tiering.deployed import TierModel, TierModelError
from gateway.tiering.embeddings import embed_cached
from gateway.tiering.features import feature_matrix, prompt_features
from gateway.tiering.model import (
    BoostedGain,
    KnnGain,
    Prompts,
    RidgeGain,
    StackedGain,
    TextOddsGain,
    select_gain_model,
)
from gateway.tiering.router import TierRouter
from tests.conftest import MODELS, TEAM_KEY, Fakes, policy_for
from tests.test_reload import write_policy

# The module fits a small stack once (a few seconds on a quiet host; a minute or more when the
# two shared cores are busy): a wider timeout than the suite's 60 s.
pytestmark = pytest.mark.timeout(300)

AUTH = {"Authorization": f"Bearer {TEAM_KEY}"}
ADMIN_KEY = "admin-secret-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def word_problem(rng: random.Random) -> str:
    a, b, c = rng.randint(3, 90), rng.randint(2, 40), rng.randint(2, 12)
    item = rng.choice(["apples", "tickets", "boxes", "litres of paint", "books", "bricks"])
    who = rng.choice(["Maria", "A farmer", "The school", "Ken", "A bakery", "The shop"])
    return (
        f"{who} has {a} {item}, buys {b} more each week for {c} weeks, then gives away a third. "
        f"How many {item} are left? Show each step."
    )


def chit_chat(rng: random.Random) -> str:
    return rng.choice(
        [
            "Say hello to {x}.",
            "Write a friendly good morning note to {x}.",
            "Thank {x} for the lovely lunch.",
            "Wish {x} a happy birthday.",
            "Send a short welcome message to {x}.",
        ]
    ).format(x=rng.choice(["the team", "my neighbour", "our new intern", "Sam", "the class"]))


def rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Half word problems (the cheap tier fails them, the frontier solves them), half small talk
    (both tiers fine; the frontier over-answers one in four)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2:
            out.append({"prompt": word_problem(rng), "quality": {"cheap": 0.0, "frontier": 1.0}})
        else:
            frontier = 0.0 if rng.random() < 0.25 else 1.0
            out.append({"prompt": chit_chat(rng), "quality": {"cheap": 1.0, "frontier": frontier}})
    return out


TRAIN, HELD_OUT = rows(120, seed=1), rows(16, seed=2)


@pytest.fixture(scope="module")
def trained(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StackedGain]:
    """The full stack fitted on TRAIN (2 folds: fast), written as a model file."""
    texts = [r["prompt"] for r in TRAIN]
    x = Prompts.of(texts, embedder.encode(texts))
    cheap = np.array([r["quality"]["cheap"] for r in TRAIN])
    frontier = np.array([r["quality"]["frontier"] for r in TRAIN])
    # Every kind of member the stack has (kNN, ridge, TF-IDF odds, boosted trees of the gain
    # and of the odds), one bag member each: the fit takes seconds, not a minute.
    bases: list[Any] = [
        lambda: KnnGain(k=64),
        lambda: RidgeGain(alpha=3000.0),
        lambda: RidgeGain(alpha=100.0, use_embedding=False),
        lambda: TextOddsGain(c=0.3, chars=True),
        lambda: BoostedGain(members=1),
        lambda: BoostedGain(odds=True, members=1),
    ]
    with threadpool_limits(1):  # the trees' OpenMP threads crawl on a busy 2-core host
        stack = select_gain_model(x, cheap, frontier, folds=2, bases=bases).model
    assert isinstance(stack, StackedGain)
    path = tmp_path_factory.mktemp("model") / "tier.npz"
    gain = frontier - cheap
    slope = float(np.polyfit(stack.oof_score, gain, 1)[0])
    save_stack(
        path,
        stack,
        embedder=embedder.name,
        dim=embedder.dim,
        training={
            "prompts": len(TRAIN),
            "quality": {"cheap": float(cheap.mean()), "frontier": float(frontier.mean())},
        },
        calibration=(float(gain.mean()), slope),
    )
    return path, stack


def test_the_file_scores_as_the_fitted_stack(embedder: Any, trained: Any) -> None:
    path, stack = trained
    model = TierModel.load(path, embedder.name, embedder.dim)
    texts = [r["prompt"] for r in HELD_OUT]
    vectors = embedder.encode(texts)
    expected = stack.predict(Prompts.of(texts, vectors))
    feats = feature_matrix(texts)
    got = [model.score(t, v, f) for t, v, f in zip(texts, vectors, feats, strict=True)]
    # Every member (kNN, ridge, TF-IDF odds, boosted trees) read back from plain arrays.
    assert len(stack.fitted) >= 3
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    info = model.info()
    assert info["version"] == 2
    assert info["training_prompts"] == len(TRAIN)
    assert info["embedder"] == {"name": embedder.name, "dim": embedder.dim}


def compact_stack(embedder: Any) -> tuple[StackedGain, Prompts]:
    """Two kNN members over the same 24 prototypes of TRAIN's 120 prompts, and a ridge."""
    texts = [r["prompt"] for r in TRAIN]
    x = Prompts.of(texts, embedder.encode(texts))
    cheap = np.array([r["quality"]["cheap"] for r in TRAIN])
    frontier = np.array([r["quality"]["frontier"] for r in TRAIN])
    members: list[Any] = [
        KnnGain(k=10, max_keys=24),
        KnnGain(k=60, max_keys=24),
        RidgeGain(alpha=100.0, use_embedding=False),
    ]
    stack = StackedGain([lambda: RidgeGain()], folds=2)
    # Weights and z statistics as a fit would leave them; the file's job is to keep them.
    stack._fitted = [(1 / 3, m.fit(x, cheap, frontier), 0.1, 0.5) for m in members]
    return stack, x


def test_knn_prototypes_bound_the_keys_and_are_stored_once(embedder: Any, tmp_path: Path) -> None:
    stack, x = compact_stack(embedder)
    knn = stack.fitted[0][1]
    assert isinstance(knn, KnnGain)
    assert 0 < len(knn._keys) <= 24
    assert knn._counts is not None
    assert knn._counts.sum() == len(TRAIN)  # every prompt stands behind one prototype
    assert knn._k == max(1, round(10 * len(knn._keys) / len(TRAIN)))  # k scaled down too
    np.testing.assert_allclose(np.linalg.norm(knn._keys, axis=1), 1.0, rtol=1e-5)
    # The prototypes keep the neighbourhood: word problems score above small talk.
    scores = knn.predict(x)
    problems = np.array([i % 2 == 1 for i in range(len(TRAIN))])
    assert scores[problems].mean() > scores[~problems].mean() + 0.5
    path = tmp_path / "compact.npz"
    save_stack(
        path,
        stack,
        embedder=embedder.name,
        dim=embedder.dim,
        training={"prompts": len(TRAIN), "quality": {"cheap": 0.5, "frontier": 0.9}},
        calibration=(0.0, 0.1),
    )
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    assert [name for name in arrays if name.startswith("knn-keys.")] == ["knn-keys.0"]
    model = TierModel.load(path, embedder.name, embedder.dim)
    texts = [r["prompt"] for r in HELD_OUT]
    vectors = embedder.encode(texts)
    expected = stack.predict(Prompts.of(texts, vectors))
    got = [
        model.score(t, v, f) for t, v, f in zip(texts, vectors, feature_matrix(texts), strict=True)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    # A version 1 file (each kNN member its own keys, no prototypes' counts) still loads.
    meta = json.loads(arrays.pop("meta.json").tobytes())
    keys = arrays.pop("knn-keys.0")
    for i, member in enumerate(meta["members"]):
        if member["kind"] == "knn":
            arrays[f"s{i}.keys"] = keys
            del member["keys"]
            arrays.pop(f"s{i}.counts")
    old = tmp_path / "v1.npz"
    meta["version"] = 1
    np.savez(old, **arrays, **{"meta.json": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    assert TierModel.load(old, embedder.name, embedder.dim).info()["version"] == 1


def test_train_writes_a_versioned_model_from_a_train_file(
    embedder: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = tmp_path / "train.jsonl"
    small = [
        {"prompt": r["prompt"], "quality": {"mini": r["quality"]["cheap"], "big": f}}
        for r, f in zip(TRAIN[:8], [1.0] * 8, strict=True)
    ]
    train.write_text("".join(json.dumps(r) + "\n" for r in small))
    cache = tmp_path / "emb.npz"  # embedded here: the command finds them and loads no model
    embed_cached([r["prompt"] for r in small], embedder.encode, embedder.name, cache)
    out = tmp_path / "models" / "route.npz"
    args = ["router", "train", "--train", str(train), "--out", str(out)]
    args += ["--embedder", "torch", "--embedding-cache", str(cache)]
    code = main([*args, "--cheap", "mini", "--frontier", "big"])
    assert code == 0, capsys.readouterr().err
    assert "loads in" in capsys.readouterr().err
    with np.load(out, allow_pickle=False) as data:  # arrays only: nothing to unpickle
        meta = json.loads(data["meta.json"].tobytes())
    assert meta["format"] == "gateway-tier-model"
    assert meta["version"] == 2
    assert meta["training"]["stack"] == "serving"
    assert meta["embedder"] == {"name": "all-MiniLM-L6-v2", "dim": 384}
    assert meta["training"]["prompts"] == 8
    assert meta["training"]["keys"] == {"cheap": "mini", "frontier": "big"}
    assert meta["trained_at"].startswith("20")
    TierModel.load(out, "all-MiniLM-L6-v2", 384)
    assert main(["router", "train", "--train", str(tmp_path / "none.jsonl"), "--out", "x"]) == 2
    assert "cannot read" in capsys.readouterr().err


def model_policy(fakes: Fakes, model: Path | None, **tiering: Any) -> Policy:
    tiers = {"gpt": "cheap", "claude": "frontier"}
    config: dict[str, Any] = {"max_frontier_share": 1.0, "exploration": 0.0, **tiering}
    if model is not None:
        config["model"] = str(model)
    return policy_for(
        fakes,
        models=[
            {"name": alias, "provider": provider, "id": upstream, "tier": tiers.get(alias, "cheap")}
            for alias, (provider, upstream) in MODELS.items()
        ],
        routes=[{"name": "default", "candidates": ["gpt", "claude"], "tiering": config}],
    )


async def ask(client: TestClient[Any, Any], text: str) -> Any:
    body = {"model": "default", "messages": [{"role": "user", "content": text}]}
    response = await client.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status == 200, await response.text()
    return response


async def test_a_route_with_the_model_follows_it_on_held_out_prompts(
    make_gateway: Any, fakes: Fakes, embedder: Any, trained: Any, tmp_path: Path
) -> None:
    path, _ = trained
    config = tmp_path / "policy.yaml"
    client = await make_gateway(
        model_policy(fakes, path),
        embedder=embedder,
        config=config,
        admin_key_sha256=hash_key(ADMIN_KEY),
    )
    for row in HELD_OUT:
        response = await ask(client, row["prompt"])
        wanted = "frontier" if row["quality"]["frontier"] > row["quality"]["cheap"] else "cheap"
        assert response.headers["x-gateway-tier"] == wanted, row["prompt"]
    decision = client.app[RUNTIME].decisions.find(response.headers["x-request-id"])
    assert decision is not None
    assert 0 < decision.tiering["model_share"] <= 1
    state = await (await client.get("/admin/tiering", headers=ADMIN)).json()
    model = state["routes"]["default"]["model"]
    assert model["path"] == str(path)
    assert model["training_prompts"] == len(TRAIN)
    assert model["version"] == 2
    assert model["trained_at"]
    assert 0 < model["share_now"] <= model["share_recent_decisions"] <= 1
    panels = await (await client.get("/dashboard/panels", headers=ADMIN)).text()
    assert f"tier.npz v2, {len(TRAIN)} prompts, trained {model['trained_at']}" in panels

    # Without the model the same route starts cold: no prior gain, every prompt cheap.
    cold = await make_gateway(model_policy(fakes, None), embedder=embedder)
    tiers = {(await ask(cold, r["prompt"])).headers["x-gateway-tier"] for r in HELD_OUT[:4]}
    assert tiers == {"cheap"}


def test_live_outcomes_take_over_as_they_accumulate(
    fakes: Fakes, embedder: Any, trained: Any
) -> None:
    """The model's share is W / (W + evidence): with W = 40 outcomes, 120 graded outcomes that
    contradict it (small talk needs the frontier) turn its decisions around."""
    path, _ = trained
    router = TierRouter(model_policy(fakes, path, model_weight=40), seed=0)
    talk = [chit_chat(random.Random(100 + i)) for i in range(120)]
    vectors = embedder.encode(talk)
    probe = talk[0]

    def gain() -> tuple[float, float]:
        decision = router.decide(
            "default", "general", vectors[0], {"cheap", "frontier"},
            np.array(prompt_features(probe)), probe,
        )  # fmt: skip
        assert decision is not None
        assert decision.model_share is not None
        return decision.predicted_gain, decision.model_share

    before, share = gain()
    assert before <= 0
    assert share == 1.0
    for i, (text, vector) in enumerate(zip(talk, vectors, strict=True)):
        features = np.array(prompt_features(text))
        router.remember(f"c{i}", "default", vector, features)
        router.served(f"c{i}", "cheap", (0.0, 1.0))
        router.remember(f"f{i}", "default", vector, features)
        router.served(f"f{i}", "frontier", (1.0, 1.0))
    after, share = gain()
    assert share == pytest.approx(40 / (40 + 240))
    assert after > 0.3
    snapshot = router.snapshot()["default"]["model"]
    assert snapshot["weight"] == 40
    assert snapshot["share_now"] == pytest.approx(share, abs=1e-4)


def broken_models(tmp_path: Path, good: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    foreign = tmp_path / "foreign.npz"
    with np.load(good, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(arrays["meta.json"].tobytes())
    meta["embedder"]["name"] = "bge-small-en-v1.5"
    arrays["meta.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(foreign, **arrays)
    truncated = tmp_path / "truncated.npz"
    del arrays[next(name for name in arrays if name.endswith(".coef"))]
    arrays["meta.json"] = np.frombuffer(json.dumps({**meta, "embedder": {
        "name": "all-MiniLM-L6-v2", "dim": 384}}).encode(), dtype=np.uint8)  # fmt: skip
    np.savez(truncated, **arrays)
    future = tmp_path / "future.npz"
    arrays["meta.json"] = np.frombuffer(json.dumps({**meta, "version": 3}).encode(), dtype=np.uint8)
    np.savez(future, **arrays)
    return {
        "format version 3; this gateway reads versions 1, 2": future,
        "not a readable .npz": garbage,
        "trained on bge-small-en-v1.5 embeddings": foreign,
        "malformed": truncated,
        "no such file": tmp_path / "missing.npz",
    }


def test_check_config_refuses_a_model_it_cannot_use(
    fakes: Fakes,
    trained: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _ = trained
    config = tmp_path / "policy.yaml"
    write_policy(config, model_policy(fakes, path))
    # The model was trained on float MiniLM vectors; `gateway serve` embeds with int8 ones.
    assert main(["check-config", str(config)]) == 1
    assert "this gateway embeds with all-MiniLM-L6-v2-int8" in capsys.readouterr().err
    monkeypatch.setenv("GATEWAY_EMBEDDER", "torch")
    assert main(["check-config", str(config)]) == 0
    capsys.readouterr()
    for message, bad in broken_models(tmp_path, path).items():
        write_policy(config, model_policy(fakes, bad))
        assert main(["check-config", str(config)]) == 1, message
        err = capsys.readouterr().err
        assert message in err
        assert "route 'default'" in err
        assert str(bad) in err
    # A relative path is read from the policy file's folder.
    write_policy(config, model_policy(fakes, Path(path.name)))
    assert main(["check-config", str(config)]) == 1  # not beside this policy
    beside = path.parent / "policy.yaml"
    write_policy(beside, model_policy(fakes, Path(path.name)))
    capsys.readouterr()
    assert main(["check-config", str(beside)]) == 0


async def test_reload_swaps_the_model_and_refuses_one_it_cannot_use(
    make_gateway: Any, fakes: Fakes, embedder: Any, trained: Any, tmp_path: Path
) -> None:
    path, _ = trained
    copy = tmp_path / "retrained.npz"
    copy.write_bytes(path.read_bytes())
    config = tmp_path / "policy.yaml"
    write_policy(config, model_policy(fakes, path))
    client = await make_gateway(
        model_policy(fakes, path),
        embedder=embedder,
        config=config,
        admin_key_sha256=hash_key(ADMIN_KEY),
    )

    async def loaded() -> Any:
        state = await (await client.get("/admin/tiering", headers=ADMIN)).json()
        return state["routes"]["default"]["model"]

    assert (await loaded())["path"] == str(path)
    write_policy(config, model_policy(fakes, copy))
    assert (await client.post("/admin/reload", headers=ADMIN)).status == 200
    assert (await loaded())["path"] == str(copy)
    for message, bad in broken_models(tmp_path, path).items():
        write_policy(config, model_policy(fakes, bad))
        refused = await client.post("/admin/reload", headers=ADMIN)
        assert refused.status == 400, message
        error = (await refused.json())["error"]["message"]
        assert "Reload refused" in error
        assert message in error
        assert (await loaded())["path"] == str(copy)  # the running model stays
        response = await ask(client, HELD_OUT[1]["prompt"])
        assert response.headers["x-gateway-tier"] == "frontier"
    # Dropping the model: the route keeps what it learnt and decides from its outcomes alone.
    write_policy(config, model_policy(fakes, None))
    assert (await client.post("/admin/reload", headers=ADMIN)).status == 200
    assert (await loaded()) is None


def test_a_model_is_refused_when_constructed_with_the_wrong_embedder(trained: Any) -> None:
    path, _ = trained
    with pytest.raises(TierModelError, match="this gateway embeds with other-model"):
        TierModel.load(path, "other-model", 384)
    with pytest.raises(TierModelError, match="384-wide embeddings; this gateway's are 768"):
        TierModel.load(path, "all-MiniLM-L6-v2", 768)
