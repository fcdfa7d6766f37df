"""Why the model said cat or dog: Grad-CAM (Selvaraju et al., 2017) on the serving export's last feature map.

The head is small (average pooling → dense → dense → sigmoid), so the gradient of its logit with respect to
the pooled embedding is a few lines of numpy, and the server needs no TensorFlow. Each position of the
feature map scores Σ_c gradient_c · feature_c: positive where the photo looks like a dog to the model,
negative where it looks like a cat."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from PIL import Image

from .prediction import Prediction
from .layout import HEAD_WEIGHTS_FILE

DOG_COLOUR = np.array([230, 60, 30], dtype=np.float32)
CAT_COLOUR = np.array([30, 110, 230], dtype=np.float32)
OVERLAY_OPACITY = 0.6


@dataclasses.dataclass(frozen=True)
class Head:
    """The dense layers of a version's head, in order: [(kernel, bias), …], the last one giving the logit."""

    layers: list[tuple[np.ndarray, np.ndarray]]

    @classmethod
    def load(cls, directory: Path) -> "Head":
        import h5py

        with h5py.File(Path(directory) / HEAD_WEIGHTS_FILE, "r") as weights:
            dense = sorted((name for name in weights["layers"] if name.startswith("dense")),
                           key=lambda name: int(name.removeprefix("dense").removeprefix("_") or 0))
            return cls([(weights[f"layers/{name}/vars/0"][()], weights[f"layers/{name}/vars/1"][()])
                        for name in dense])

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """The head's logit for each embedding (N, dim) → (N,): hidden layers with ReLU, dropout off."""
        activations = np.asarray(embeddings, dtype=np.float64)
        for kernel, bias in self.layers[:-1]:
            activations = np.maximum(activations @ kernel + bias, 0)
        kernel, bias = self.layers[-1]
        return (activations @ kernel + bias)[:, 0]

    def p_dog(self, embeddings: np.ndarray) -> np.ndarray:
        """What the version's head answers for each embedding, without Keras."""
        return 1 / (1 + np.exp(-self.logits(embeddings)))

    def logit_gradient(self, embedding: np.ndarray) -> np.ndarray:
        """d logit / d embedding for one embedding (dim,): back through ReLU hidden layers (dropout is off)."""
        activations = [embedding]
        for kernel, bias in self.layers[:-1]:
            activations.append(np.maximum(activations[-1] @ kernel + bias, 0))
        gradient = self.layers[-1][0][:, 0]
        for (kernel, _), output in zip(reversed(self.layers[:-1]), reversed(activations[1:])):
            gradient = kernel @ (gradient * (output > 0))
        return gradient


@dataclasses.dataclass(frozen=True)
class Explanation:
    prediction: Prediction
    image: np.ndarray  # the photo as the model saw it (size × size × 3)
    activation: np.ndarray  # signed Grad-CAM (h × w): > 0 towards dog, < 0 towards cat

    def overlay(self, photo: np.ndarray | None = None) -> np.ndarray:
        """The map over the photo as the model saw it (square), or over `photo`: the same photo decoded with
        its own aspect ratio (the model saw it stretched to a square, so the map stretches back with it)."""
        return overlay(self.image if photo is None else photo, self.activation)


def class_activation_map(feature_map: np.ndarray, head: Head) -> np.ndarray:
    """Signed Grad-CAM (h, w) of one feature map (h, w, channels): > 0 towards dog, < 0 towards cat."""
    gradient = head.logit_gradient(feature_map.mean(axis=(0, 1)))
    return feature_map @ gradient


def overlay(image: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """The photo (size, size, 3) with the map laid over it: red where it says dog, blue where it says cat,
    stronger where the push is stronger (scaled to the map's largest push)."""
    size = image.shape[:2][::-1]
    scale = float(np.abs(activation).max()) or 1.0
    resized = np.asarray(Image.fromarray((activation / scale).astype(np.float32), mode="F").resize(
        size, Image.Resampling.BILINEAR))
    # The square root lifts moderate pushes into view; none stays clear.
    strength = np.sqrt(np.clip(np.abs(resized), 0, 1))[..., np.newaxis] * OVERLAY_OPACITY
    colour = np.where(resized[..., np.newaxis] > 0, DOG_COLOUR, CAT_COLOUR)
    return np.round(image * (1 - strength) + colour * strength).astype(np.uint8)


def peak_in_centre(activation: np.ndarray, label: str, margin: float = 0.25) -> bool:
    """Whether the position that pushed hardest towards `label` lies in the centre box (`margin` of each side
    left out), where the animal of a typical pet photo is: a check that the map is not noise (a random peak
    lands there with the box's share of the map, about 30 % on a 9 × 9 map)."""
    towards = activation if label == "dog" else -activation
    row, column = np.unravel_index(np.argmax(towards), towards.shape)
    height, width = towards.shape
    return (margin * (height - 1) <= row <= (1 - margin) * (height - 1)
            and margin * (width - 1) <= column <= (1 - margin) * (width - 1))
