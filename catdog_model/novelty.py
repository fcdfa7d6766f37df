"""Flag images unlike the training photos: cosine distance from an image's embedding to its nearest
training embeddings, with a threshold calibrated on held-out photos."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np



def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclasses.dataclass
class NoveltyDetector:
    prototypes: np.ndarray  # unit-length training embeddings (n, dim)
    neighbours: int
    threshold: float
    # The validation photos' scores and p(dog): what the drift test compares recent traffic with.
    reference: dict[str, np.ndarray] | None = None

    @classmethod
    def fit(cls, train_embeddings: np.ndarray, validation_embeddings: np.ndarray, seed: int,
            prototypes: int = 256, neighbours: int = 5, quantile: float = 0.99) -> "NoveltyDetector":
        """Keep a seeded sample of training embeddings; the threshold flags 1 − quantile of validation photos.

        A sample of 256 (stored as float16, 0.6 MB) separates other photos about as well as all of them.
        """
        rows = np.random.default_rng(seed).permutation(len(train_embeddings))[:prototypes]
        detector = cls(_unit(train_embeddings[rows]).astype(np.float16).astype(np.float32),
                       min(neighbours, len(rows)), threshold=np.inf)
        validation_scores = detector.scores(validation_embeddings)
        detector.threshold = float(np.quantile(validation_scores, quantile))
        detector.reference = {"novelty": validation_scores.astype(np.float32)}
        return detector

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """0 for an image just like a training photo, up to 2 for its opposite."""
        similarity = _unit(embeddings) @ self.prototypes.T
        nearest = np.sort(similarity, axis=1)[:, -self.neighbours:]
        return 1.0 - nearest.mean(axis=1)

    def is_unfamiliar(self, embeddings: np.ndarray) -> np.ndarray:
        return self.scores(embeddings) > self.threshold

    def save(self, path: Path) -> None:
        with open(path, "wb") as file:
            references = {f"reference_{name}": values for name, values in (self.reference or {}).items()}
            np.savez(file, prototypes=self.prototypes.astype(np.float16), neighbours=self.neighbours,
                     threshold=self.threshold, **references)

    @classmethod
    def load(cls, path: Path) -> "NoveltyDetector":
        with np.load(path, allow_pickle=False) as stored:
            reference = {name.removeprefix("reference_"): stored[name] for name in stored.files
                         if name.startswith("reference_")}
            return cls(stored["prototypes"].astype(np.float32), int(stored["neighbours"]),
                       float(stored["threshold"]), reference if {"novelty", "p_dog"} <= set(reference) else None)
