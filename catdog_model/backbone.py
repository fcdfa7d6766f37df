"""Locate and verify the ImageNet weights, then build and run the frozen MobileNetV2 backbone."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from .config import Settings
from .errors import CatdogError

WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
# The sha256 of each file Keras downloads for MobileNetV2(include_top=False, weights="imagenet").
KNOWN_WEIGHTS_SHA256 = {
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5":
        "279052de2cfa801003aa6cc25cc4d007d35dd0b76f06935268c79788b7642d05",
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5":
        "df1c3db1d0d9193719c4c70f707c56f7021f999f825bdc57454c275cf6def19f",
}


class BackboneUnavailable(CatdogError, RuntimeError):
    """The ImageNet weights cannot be found, downloaded or verified."""


def weights_file_name(alpha: float) -> str:
    # The convolution weights do not depend on the input size, so the 224 file serves every size.
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def keras_cache_dir() -> Path:
    # KERAS_HOME is Keras's own variable, read as Keras reads it: its download cache is where we look.
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where the ImageNet weights come from: this folder, then Keras's cache, then (unless offline) a download."""

    folder: Path | None = None
    offline: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> WeightsSource:
        return cls(settings.weights_dir, settings.offline)

    def locate(self, alpha: float) -> Path:
        name = weights_file_name(alpha)
        if name not in KNOWN_WEIGHTS_SHA256:
            supported = ", ".join(sorted(KNOWN_WEIGHTS_SHA256))
            raise BackboneUnavailable(f"No known sha256 for {name}, so it cannot be verified; use one of: {supported}.")
        expected = KNOWN_WEIGHTS_SHA256[name]
        for folder in (self.folder, keras_cache_dir()):
            if folder is not None and (folder / name).is_file():
                path = folder / name
                actual = file_sha256(path)
                if actual != expected:
                    raise BackboneUnavailable(
                        f"{path} has sha256 {actual}, expected {expected}: the file is corrupt or not the "
                        f"Keras ImageNet weights. Replace it, or point CATDOG_WEIGHTS_DIR at a good copy.")
                return path
        where = f"CATDOG_WEIGHTS_DIR ({self.folder})" if self.folder else "CATDOG_WEIGHTS_DIR (not set)"
        if self.offline:
            raise BackboneUnavailable(f"{name} is not in {where} nor in {keras_cache_dir()}, and downloads are "
                                      f"off. Set CATDOG_WEIGHTS_DIR to a folder that holds it.")
        import keras

        try:
            return Path(keras.utils.get_file(name, WEIGHTS_URL + name, cache_subdir="models", file_hash=expected))
        except Exception as error:
            raise BackboneUnavailable(f"{name} is not in {where} nor in {keras_cache_dir()}, and downloading it "
                                      f"failed ({error}). Set CATDOG_WEIGHTS_DIR to a folder that holds it."
                                      ) from error


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """What is recorded in each model version's config.json, so a version always gets its own backbone."""

    alpha: float = 0.5
    image_size: int = 224
    weights_sha256: str = KNOWN_WEIGHTS_SHA256[weights_file_name(0.5)]
    name: str = "mobilenet_v2"
    weights_file: str = weights_file_name(0.5)
    pooling: str = "avg"
    fine_tuned: str = ""  # empty: ImageNet's weights as they are; else a fingerprint of the fine-tuned weights

    @classmethod
    def for_alpha(cls, alpha: float, image_size: int = 224) -> "BackboneSpec":
        file_name = weights_file_name(alpha)
        if file_name not in KNOWN_WEIGHTS_SHA256:
            raise BackboneUnavailable(f"Alpha {alpha} is not supported; use 0.35 or 0.5.")
        return cls(alpha=float(alpha), image_size=int(image_size),
                   weights_sha256=KNOWN_WEIGHTS_SHA256[file_name], weights_file=file_name)

    @property
    def id(self) -> str:
        """Identifies the embedding function: images embedded under one id never mix with another's."""
        tuned = f"-tuned-{self.fine_tuned}" if self.fine_tuned else ""
        return f"{self.name}-{self.alpha}-{self.image_size}-{self.pooling}-{self.weights_sha256[:12]}{tuned}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "BackboneSpec":
        fields = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in fields})


def build_backbone(spec: BackboneSpec, weights: WeightsSource | None):
    """A Keras model from uint8 images (N, size, size, 3) to pooled embeddings, all layers frozen; weights
    None: the architecture alone, for weights set afterwards."""
    import keras

    weights_path = None if weights is None else weights.locate(spec.alpha)  # verified against its sha256
    if weights_path is not None and KNOWN_WEIGHTS_SHA256[weights_path.name] != spec.weights_sha256:
        raise BackboneUnavailable(f"{weights_path} does not match the weights this model was trained with "
                                  f"(sha256 {spec.weights_sha256}).")
    shape = (spec.image_size, spec.image_size, 3)
    inputs = keras.Input(shape=shape, dtype="uint8", name="image")
    # MobileNetV2 expects pixels in [-1, 1].
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)(keras.ops.cast(inputs, "float32"))
    base = keras.applications.MobileNetV2(input_shape=shape, alpha=spec.alpha, include_top=False,
                                          weights=weights_path and str(weights_path), pooling=spec.pooling)
    base.trainable = False
    return keras.Model(inputs, base(scaled, training=False), name="backbone")


def embedding_dim(backbone) -> int:
    return int(backbone.output.shape[-1])


def flip_horizontal(images: np.ndarray) -> np.ndarray:
    return images[:, :, ::-1, :]


class Backbone:
    """The frozen backbone with one compiled call, reused for every batch size."""

    def __init__(self, spec: BackboneSpec, weights: WeightsSource | None, batch_size: int = 32, model=None):
        """model: an already built backbone (from a version's model.keras); else it is built from the weights."""
        import tensorflow as tf

        self.spec = spec
        self.batch_size = batch_size
        self.model = model if model is not None else build_backbone(spec, weights)
        self.dim = embedding_dim(self.model)
        size = spec.image_size
        # model.predict costs tens of milliseconds of set-up per call; a traced function costs none.
        self._call = tf.function(lambda images: self.model(images, training=False), reduce_retracing=True,
                                 input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8)])

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Pooled embeddings (N, dim) float32 of uint8 images (N, size, size, 3), in chunks of batch_size."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [self._call(images[start:start + self.batch_size]).numpy()
                  for start in range(0, len(images), self.batch_size)]
        return np.concatenate(chunks).astype(np.float32, copy=False)


_loaded: dict[tuple, Backbone] = {}


def get_backbone(spec: BackboneSpec, weights: WeightsSource, batch_size: int = 32) -> Backbone:
    """One Backbone per spec in a process: every model version with the same backbone shares it."""
    key = (spec, batch_size)
    if key not in _loaded:
        _loaded[key] = Backbone(spec, weights, batch_size)
    return _loaded[key]
