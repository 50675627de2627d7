"""Tier-router benchmark: RouteLLM's MMLU and GSM8K, RouterBench's ARC, MBPP and Winogrande.

For each dataset this writes TRAIN and TEST JSONL files under ``--work`` (default
/tmp/router_bench), runs ``gateway router replay --report`` on them end to end, and prints the
held-out figures: APGR, CPT(50 %), CPT(80 %) for the router, a random router and a prompt-length
router; on RouterBench also the USD cost of reaching 95 % of GPT-4's quality.

Splits (stated, seeded):
- RouteLLM MMLU and GSM8K: the contaminated prompts dropped, then a random half (seed ``--seeds``)
  trains and the other half is held out. One held-out half is noisy (APGR's sd over splits:
  ~0.015 on MMLU, ~0.03 on GSM8K), so ``--seeds`` runs several and prints each dataset's
  mean ± sd and lowest over them. Weak = Mixtral-8x7B-Instruct, strong = GPT-4-1106.
- RouterBench (0-shot, RouterDC's re-split): its own train and test files. Cheap =
  Mixtral-8x7B-chat, frontier = GPT-4-1106, costs from the files' per-model ``total_cost``;
  the 14 ARC rows without a grade for these two models are dropped.

For each dataset it also replays the gateway's own online tier router (``gateway.tiering.router``)
as it learns in service: each TRAIN prompt answered by one tier at random and graded on it alone,
then its predicted gain ranks TEST.

On MMLU it also prints a reference line that is not a router: the APGR of routing by each
prompt's subject (known from its file, not from the prompt) and the subject's mean gain on TRAIN.

The data is read from ../shared/benchmarks/data/router and never copied into the repository;
nothing fitted here is kept. Embeddings are cached in ``--work``/emb.npz (minutes on a CPU once).

    python -m bench.router [--data DIR] [--work DIR] [--seeds 0 | 0,1,2 | 3-7] [--only mmlu,...]
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.cli.router import embed_prompts
from gateway.policy.model import Policy, hash_key
from gateway.tiering.features import prompt_features
from gateway.tiering.metrics import apgr
from gateway.tiering.router import TierRouter

csv.field_size_limit(10**9)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "benchmarks" / "data" / "router"
WEAK, STRONG = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
RB_CHEAP, RB_FRONTIER = "mistralai/mixtral-8x7b-chat", "gpt-4-1106-preview"
ROUTERBENCH = {"arc": "arc_challenge", "mbpp": "mbpp", "winogrande": "winograde"}
SUBJECTS: dict[str, str] = {}  # MMLU prompt -> its subject (for the reference line only)


def _truth(value: str) -> float:
    return 1.0 if value.strip().lower() in ("true", "1", "1.0") else 0.0


def _contaminated(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(line)["eval_prompt"] for line in path.open() if line.strip()}


def _routellm_rows(data: Path, name: str) -> list[dict[str, Any]]:
    if name == "mmlu":
        files = sorted(glob.glob(str(data / "routellm/mmlu/responses/*.csv")))
    else:
        files = [str(data / "routellm/gsm8k/gsm8k_responses.csv")]
    dropped = _contaminated(data / f"routellm/{name}/contaminated_prompts.jsonl")
    rows = []
    for file in files:
        subject = Path(file).stem.removeprefix("mmlu_")  # MMLU: one file per subject
        with open(file, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["prompt"] in dropped:
                    continue
                quality = {"cheap": _truth(row[WEAK]), "frontier": _truth(row[STRONG])}
                SUBJECTS[row["prompt"]] = subject
                rows.append({"prompt": row["prompt"], "quality": quality})
    return rows


def subject_oracle(train: list[Any], test: list[Any], shrink: float = 10.0) -> float:
    """APGR of a reference router that knows each MMLU prompt's subject (the file it came
    from; not in the prompt, so not available to the replay) and routes by the subject's mean
    frontier-minus-cheap gain on TRAIN, shrunk towards the overall mean."""
    gains: dict[str, list[float]] = {}
    for row in train:
        quality = row["quality"]
        gains.setdefault(SUBJECTS[row["prompt"]], []).append(quality["frontier"] - quality["cheap"])
    overall = float(np.mean([g for values in gains.values() for g in values]))
    mean = {s: (sum(v) + shrink * overall) / (len(v) + shrink) for s, v in gains.items()}
    scores = np.array([mean.get(SUBJECTS[r["prompt"]], overall) for r in test])
    scores += np.random.default_rng(0).random(len(test)) * 1e-9  # ties in a random order
    weak = np.array([r["quality"]["cheap"] for r in test])
    strong = np.array([r["quality"]["frontier"] for r in test])
    return apgr(scores, weak, strong)


def _routerbench_rows(data: Path, stem: str, part: str) -> list[dict[str, Any]]:
    rows = []
    with open(data / f"routerbench_zs/{stem}_{part}.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if not row[RB_CHEAP] or not row[RB_FRONTIER]:
                continue  # a few ARC rows have no grade for these models: dropped
            rows.append(
                {
                    "prompt": row["prompt"],
                    "quality": {
                        "cheap": float(row[RB_CHEAP]),
                        "frontier": float(row[RB_FRONTIER]),
                    },
                    "cost": {
                        "cheap": float(row[f"{RB_CHEAP}|total_cost"]),
                        "frontier": float(row[f"{RB_FRONTIER}|total_cost"]),
                    },
                }
            )
    return rows


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def _split(rows: list[dict[str, Any]], seed: int) -> tuple[list[Any], list[Any]]:
    order = np.random.default_rng(seed).permutation(len(rows))
    half = len(rows) // 2
    return [rows[i] for i in order[:half]], [rows[i] for i in order[half:]]


def datasets(data: Path, seed: int) -> dict[str, tuple[list[Any], list[Any]]]:
    out = {name: _split(_routellm_rows(data, name), seed) for name in ("mmlu", "gsm8k")}
    pooled_train: list[Any] = []
    pooled_test: list[Any] = []
    for name, stem in ROUTERBENCH.items():
        train = _routerbench_rows(data, stem, "train")
        test = _routerbench_rows(data, stem, "test")
        out[f"routerbench-{name}"] = (train, test)
        pooled_train += train
        pooled_test += test
    out["routerbench-all"] = (pooled_train, pooled_test)
    return out


def live_router(work: Path, train: list[Any], test: list[Any], seed: int = 0) -> float:
    """APGR on TEST of the gateway's own online tier router (``gateway.tiering.TierRouter``,
    the policy's defaults) after it learnt from TRAIN as in service: each prompt answered by
    one tier at random (seeded) and graded on that tier only, one outcome at a time, the
    route's memory keeping the latest 4,096. Its score is its predicted gain."""
    policy = Policy.model_validate(
        {
            "providers": [{"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:9"}],
            "models": [
                {"name": "small", "provider": "p", "id": "small-1", "tier": "cheap"},
                {"name": "big", "provider": "p", "id": "big-1", "tier": "frontier"},
            ],
            "routes": [{"name": "r", "candidates": ["small", "big"], "tiering": {}}],
            "teams": [{"name": "t", "key_sha256": hash_key("k")}],
        }
    )
    router = TierRouter(policy, seed=seed)
    texts = [row["prompt"] for row in train + test]
    vectors = embed_prompts(texts, "torch", work / "emb.npz")  # the replay's cache: no model
    rng = np.random.default_rng(seed)
    for i, row in enumerate(train):
        tier = "frontier" if rng.random() < 0.5 else "cheap"
        router.remember(str(i), "r", vectors[i], np.array(prompt_features(row["prompt"])))
        router.served(str(i), tier, (row["quality"][tier], 1.0))
    gains = [
        router.predicted_gain("r", "general", v, np.array(prompt_features(row["prompt"])))
        for row, v in zip(test, vectors[len(train) :], strict=True)
    ]
    weak = np.array([r["quality"]["cheap"] for r in test])
    strong = np.array([r["quality"]["frontier"] for r in test])
    return apgr(np.array(gains), weak, strong)


def run_replay(work: Path, name: str, train: list[Any], test: list[Any]) -> str:
    folder = work / name
    _write(folder / "train.jsonl", train)
    _write(folder / "test.jsonl", test)
    command = [
        sys.executable, "-m", "gateway", "router", "replay",
        "--train", str(folder / "train.jsonl"),
        "--score", str(folder / "test.jsonl"),
        "--out", str(folder / "scores.jsonl"),
        "--embedding-cache", str(work / "emb.npz"),
        "--report",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name}: replay failed:\n{done.stderr}")
    took = time.perf_counter() - started
    return done.stdout + f"(replay took {took:.1f} s)\n"


def _seeds(text: str) -> list[int]:
    """``0,1,2`` or a range ``3-7`` (inclusive), or both: ``0,3-5``."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += range(int(low), int(high or low) + 1)
    return seeds


def summarise(results: dict[str, dict[int, float]]) -> list[str]:
    """One line per dataset: the figure per seed, then mean ± sd and the lowest over seeds."""
    lines = []
    for name, by_seed in results.items():
        values = np.array(list(by_seed.values()))
        line = f"{name:<18} " + " ".join(f"s{seed} {v:.3f}" for seed, v in by_seed.items())
        if len(values) > 1:
            spread = values.std(ddof=1)
            line += f"  | mean {values.mean():.3f} ± {spread:.3f}, min {values.min():.3f}"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=Path("/tmp/router_bench"))
    parser.add_argument(
        "--seed",
        "--seeds",
        dest="seeds",
        type=_seeds,
        default=[0],
        help="MMLU and GSM8K train/test splits: 0, 0,1,2 or 3-7 (RouterBench has its own split)",
    )
    parser.add_argument("--only", help="comma-separated dataset names")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    stack: dict[str, dict[int, float]] = {}
    online: dict[str, dict[int, float]] = {}
    for seed in args.seeds:
        for name, (train, test) in datasets(args.data, seed).items():
            if wanted and name not in wanted:
                continue
            if name.startswith("routerbench") and seed != args.seeds[0]:
                continue  # its own fixed split: once
            print(f"== {name} (seed {seed}): train {len(train)}, held-out test {len(test)}")
            output = run_replay(args.work, name, train, test)
            print(output)
            # split("\n"), not splitlines(): prompts may hold U+2028, which JSON leaves raw.
            lines = (args.work / name / "scores.jsonl").read_text().split("\n")[:-1]
            scores = [json.loads(line)["frontier_score"] for line in lines]
            weak = np.array([r["quality"]["cheap"] for r in test])
            strong = np.array([r["quality"]["frontier"] for r in test])
            stack.setdefault(name, {})[seed] = apgr(np.array(scores), weak, strong)
            live = live_router(args.work, train, test, seed)
            online.setdefault(name, {})[seed] = live
            print(
                "the online tier router (gateway.tiering), TRAIN prompts graded on one tier at "
                f"random, one at a time: APGR {live:.3f}"
            )
            if name == "mmlu":
                print(
                    "reference, not a router: routing by the MMLU subject's mean gain on TRAIN, "
                    f"subject known: APGR {subject_oracle(train, test):.3f}\n"
                )
    print("held-out APGR, the replay (gateway router replay):")
    print("\n".join(summarise(stack)))
    print("held-out APGR, the online router (gateway.tiering):")
    print("\n".join(summarise(online)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
