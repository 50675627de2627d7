"""The nearest-centroid task classifier and its confidence threshold, on synthetic vectors."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.routing.tasks import TaskClassifier

DIM = 64


def unit(v: np.ndarray) -> np.ndarray:
    out: np.ndarray = (v / np.linalg.norm(v)).astype(np.float32)
    return out


@pytest.fixture
def classifier() -> TaskClassifier:
    rng = np.random.default_rng(0)
    axes = np.eye(DIM)
    examples = {
        name: np.stack([unit(axes[i] + 0.1 * rng.standard_normal(DIM)) for _ in range(5)])
        for i, name in enumerate(["summarize", "extract", "reason"])
    }
    return TaskClassifier.from_vectors(examples, min_confidence=0.6, min_similarity=0.35)


def test_a_prompt_near_one_type_gets_it_with_high_confidence(classifier: TaskClassifier) -> None:
    guess = classifier.classify(unit(np.eye(DIM)[1] + 0.05 * np.eye(DIM)[0]), "general")
    assert (guess.task_type, guess.source) == ("extract", "classifier")
    assert guess.confidence > 0.9


def test_between_two_types_the_confidence_falls_below_the_threshold(
    classifier: TaskClassifier,
) -> None:
    guess = classifier.classify(unit(np.eye(DIM)[0] + np.eye(DIM)[2]), "general")
    assert guess.best in {"summarize", "reason"}
    assert guess.confidence < 0.6
    assert (guess.task_type, guess.source) == ("general", "default")


def test_a_prompt_unlike_every_type_keeps_the_default(classifier: TaskClassifier) -> None:
    # Nearest to "reason" (similarity ~0.2) but far from everything: the background wins.
    guess = classifier.classify(unit(0.2 * np.eye(DIM)[2] + np.eye(DIM)[10]), "general")
    assert guess.best == "reason"
    assert guess.confidence < 0.1
    assert guess.task_type == "general"


def test_the_threshold_is_the_knob(classifier: TaskClassifier) -> None:
    vector = unit(np.eye(DIM)[0] + 0.8 * np.eye(DIM)[2])
    strict = TaskClassifier(classifier.names, classifier.centroids, min_confidence=0.99)
    lenient = TaskClassifier(classifier.names, classifier.centroids, min_confidence=0.0)
    assert strict.classify(vector, "general").task_type == "general"
    assert lenient.classify(vector, "general").task_type == "summarize"
