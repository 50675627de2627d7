"""Task types of requests: from ``x-gateway-task``, else a nearest-centroid classifier.

The policy's ``task_types`` carry labelled example prompts. At start-up each type's examples are
embedded (the same model as the cache, so a request's embedding is computed once and shared) and
averaged into a unit centroid. A request's type is the centroid most similar to its embedding;
the confidence is that type's softmax share over every centroid's similarity and a background
"none of these" at ``task_classifier.min_similarity`` (temperature
``task_classifier.temperature``), so a prompt unlike every example gets a low confidence even
when one type is nearer than the others. Below ``task_classifier.min_confidence`` the request
keeps its route's default task type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from cache.embedder import Embedder
from gateway.core.context import RequestContext
from gateway.core.errors import GatewayError
from gateway.policy.catalog import Catalog

Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class TaskGuess:
    """The classifier's answer for one request."""

    task_type: str  # the type used: the best guess, or the default below the threshold
    best: str  # the most similar type, whatever the confidence
    confidence: float
    source: str  # "classifier" or "default" (below the threshold)


class TaskClassifier:
    """Nearest centroid over example embeddings, with a softmax confidence."""

    def __init__(
        self,
        names: Sequence[str],
        centroids: Matrix,
        *,
        min_confidence: float = 0.5,
        temperature: float = 0.05,
        min_similarity: float = 0.35,
    ) -> None:
        if len(names) != len(centroids):
            raise ValueError("one centroid per task type")
        self.names = list(names)
        self.centroids = centroids
        self.min_confidence = min_confidence
        self.temperature = temperature
        self.min_similarity = min_similarity

    @classmethod
    def from_vectors(
        cls,
        examples: Mapping[str, Matrix],
        *,
        min_confidence: float = 0.5,
        temperature: float = 0.05,
        min_similarity: float = 0.35,
    ) -> TaskClassifier:
        """A classifier from each type's example embeddings (rows, unit length)."""
        names = [name for name, rows in examples.items() if len(rows)]
        centroids = np.stack([examples[n].mean(axis=0) for n in names]).astype(np.float32)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True) + 1e-12
        return cls(
            names,
            centroids,
            min_confidence=min_confidence,
            temperature=temperature,
            min_similarity=min_similarity,
        )

    @classmethod
    async def build(
        cls,
        embedder: Embedder,
        examples: Mapping[str, Sequence[str]],
        *,
        min_confidence: float = 0.5,
        temperature: float = 0.05,
        min_similarity: float = 0.35,
    ) -> TaskClassifier | None:
        """Embed each type's examples; ``None`` when no type has any."""
        texts = [(name, text) for name, items in examples.items() for text in items]
        if not texts:
            return None
        vectors = await embedder.embed_many([text for _, text in texts])
        by_type: dict[str, list[int]] = {}
        for row, (name, _) in enumerate(texts):
            by_type.setdefault(name, []).append(row)
        return cls.from_vectors(
            {name: vectors[rows] for name, rows in by_type.items()},
            min_confidence=min_confidence,
            temperature=temperature,
            min_similarity=min_similarity,
        )

    def classify(self, embedding: Matrix, default: str) -> TaskGuess:
        sims = np.append(self.centroids @ embedding, self.min_similarity)  # last: background
        shares = np.exp((sims - sims.max()) / self.temperature)
        shares /= shares.sum()
        best = int(np.argmax(shares[:-1]))
        confidence = float(shares[best])
        if confidence < self.min_confidence:
            return TaskGuess(default, self.names[best], confidence, "default")
        return TaskGuess(self.names[best], self.names[best], confidence, "classifier")


async def apply_task_type(
    ctx: RequestContext,
    classifier: TaskClassifier | None,
    catalog: Catalog,
    *,
    explicit: bool,
) -> None:
    """Settle the request's task type (the client's header, else the classifier's confident
    guess, else the route's default) and move it to the type's route if policy names one."""
    policy = catalog.policy
    if not explicit and classifier is not None:
        embedding = await ctx.query_embedding()
        if embedding is not None:
            guess = classifier.classify(embedding, ctx.task_type)
            ctx.task_type = ctx.decision.task_type = guess.task_type
            ctx.decision.events.append(
                {
                    "type": "task_classified",
                    "task_type": guess.task_type,
                    "best": guess.best,
                    "confidence": round(guess.confidence, 4),
                    "source": guess.source,
                }
            )
    task = policy.task_types.get(ctx.task_type)
    if task is None or task.route is None or task.route == ctx.route.name:
        return
    # Only a route the client named moves: a pinned model alias is the client's explicit choice.
    if ctx.chat.model not in {r.name for r in policy.routes}:
        return
    try:
        route = catalog.resolve_route(ctx.team, task.route)
    except GatewayError:  # the team may not use the type's route: stay on the one it named
        ctx.decision.events.append(
            {"type": "task_route_refused", "task_type": ctx.task_type, "route": task.route}
        )
        return
    ctx.decision.events.append(
        {"type": "task_route", "task_type": ctx.task_type, "from": ctx.route.name, "to": route.name}
    )
    ctx.route = route
    ctx.decision.route = route.name
