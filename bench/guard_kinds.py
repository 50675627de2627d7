"""Which guard kinds refuse near neighbours on the labelled streams, and were they right to?

    python -m bench.guard_kinds [--dataset clinc150|banking77] [--seeds 7,8,9] [--floor 0.80]

Each query of the test stream (shuffled per seed, as ``bench.cache`` does) is compared with its
nearest earlier query (cosine of the gateway's default embedder, onnx-int8) when that is at least
``--floor`` similar: the pair the cache would consider. Per guard kind (the first found, as the
cache stage sees it): how many such pairs it refused whose intents are the same (a hit lost, if
the policy would have served it) and different (a false hit prevented). Hard kinds
(identifiers, roles) are never served; the others the hit policy may learn to serve. Embeddings
are kept in /tmp/knowledge-gateway-bench (never in the repo).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench.cache import load
from cache.embedders import make_embedder
from cache.guard import HARD_KINDS, KINDS, conflicts

EMBEDDINGS = Path("/tmp/knowledge-gateway-bench")


def embed(texts: list[str]) -> npt.NDArray[np.float32]:
    """onnx-int8 rows for ``texts``, cached on disk by content hash."""
    digest = hashlib.sha256("\n".join(["onnx-int8", *texts]).encode()).hexdigest()[:24]
    path = EMBEDDINGS / f"{digest}.npy"
    if path.exists():
        cached: npt.NDArray[np.float32] = np.load(path)
        return cached

    async def run() -> list[list[float]]:
        embedder = make_embedder("onnx-int8", Path("data"))
        try:
            return [list(await embedder.embed(text)) for text in texts]
        finally:
            await embedder.close()

    vectors = np.asarray(asyncio.run(run()), dtype=np.float32)
    EMBEDDINGS.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def count(dataset: str, seeds: list[int], floor: float) -> Counter[tuple[str, bool]]:
    rows = load(dataset, "test")
    vectors = embed([text for text, _ in rows])
    counts: Counter[tuple[str, bool]] = Counter()
    for seed in seeds:
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        stream = vectors[order]
        for i in range(1, len(order)):
            similarities = stream[:i] @ stream[i]
            j = int(np.argmax(similarities))
            if similarities[j] < floor:
                continue
            (text, intent), (other, other_intent) = rows[order[i]], rows[order[j]]
            found = conflicts(text, other, first=True)
            counts[(found[0].kind if found else "none", intent == other_intent)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["banking77", "clinc150"], default="clinc150")
    parser.add_argument("--seeds", default="7,8,9")
    parser.add_argument("--floor", type=float, default=0.80)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = count(args.dataset, seeds, args.floor)
    print(f"{args.dataset} test, seeds {seeds}: nearest earlier query at >= {args.floor}\n")
    print("| guard kind (first found) | hard | same intent (hit lost) | other intent (prevented) |")
    print("|---|---|---|---|")
    for kind in (*KINDS, "none"):
        same, other = counts[(kind, True)], counts[(kind, False)]
        hard = "yes" if kind in HARD_KINDS else ""
        print(f"| {kind} | {hard} | {same} | {other} |")


if __name__ == "__main__":
    main()
