"""Retraining on production's own backbone: embeddings come from its serving export (model.onnx on ONNX
Runtime, several times faster than Keras on a CPU), and the new version keeps that backbone — fine-tuned or
not — and changes only the head. Its export is production's with the head's weights replaced, checked against
the new head before the version is written. Fine-tuning further starts from the same backbone, in Keras."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from .backbone import BackboneSpec, flip_horizontal
from .classifier import HeadConfig, build_head
from .config import TrainingConfig
from .export import MAX_P_DOG_DIFFERENCE, ExportError, sample_images
from .serving import ModelLoadError, onnx_session, read_config
from .layout import FULL_MODEL_FILE, HEAD_WEIGHTS_FILE, ONNX_FILE


class ServedBackbone:
    """A version's backbone as its model.onnx runs it; what `training.train()` needs of a backbone (spec, dim,
    batch_size, embed), and what publishing a head on it needs (write_version)."""

    def __init__(self, directory: Path, batch_size: int = 32, threads: int = 0):
        self.directory = Path(directory)
        self.config = read_config(self.directory)
        if ONNX_FILE not in self.config["files"]:
            raise ModelLoadError(f"{self.directory.name} has no serving export ({ONNX_FILE}) to retrain on.")
        self.spec = BackboneSpec.from_dict(self.config["backbone"])
        self.head_config = HeadConfig(**self.config["head"])
        self.dim = self.head_config.embedding_dim
        self.tta = bool(self.config.get("tta"))
        self.batch_size = batch_size
        self.session = onnx_session(self.directory / ONNX_FILE, threads)

    def training_config(self, config: TrainingConfig) -> TrainingConfig:
        """config, with what a head on this export must keep: the head's shape (model.keras and the export
        hold its layers) and mirror averaging (the export's graph has it or not)."""
        return dataclasses.replace(config, alpha=self.spec.alpha, image_size=self.spec.image_size,
                                   hidden_units=self.head_config.hidden_units,
                                   dropout_rate=self.head_config.dropout_rate, tta="on" if self.tta else "off")

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Pooled embeddings (N, dim) float32 of uint8 images (N, size, size, 3), in chunks of batch_size."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate([self.session.run(["embedding"], {"image": images[start:start + self.batch_size]})[0]
                               for start in range(0, len(images), self.batch_size)])

    def head(self):
        """This version's own head, as a Keras model."""
        head = build_head(self.head_config)
        head.load_weights(self.directory / HEAD_WEIGHTS_FILE)
        return head

    def keras_backbone(self):
        """This version's backbone as a Keras model of its own (from its model.keras), to fine-tune further;
        None when the version has no model.keras: its backbone is then ImageNet's, built from the weights."""
        if FULL_MODEL_FILE not in self.config["files"]:
            return None
        import keras

        full = keras.saving.load_model(self.directory / FULL_MODEL_FILE, compile=False, safe_mode=True)
        return full.get_layer("backbone")

    def write_version(self, folder: Path, head, exported: Callable[[], None] = lambda: None) -> None:
        """Write folder/model.onnx (and model.keras where this version has one) with `head` in place of this
        version's head; ExportError if the export does not then give the new head's answers. exported() is
        called between the two."""
        folder = Path(folder)
        weights = head.get_weights()
        replace_initializers(self.directory / ONNX_FILE, self.head().get_weights(), weights, folder / ONNX_FILE)
        check_head(folder / ONNX_FILE, head, self.spec.image_size, self.tta)
        exported()
        if FULL_MODEL_FILE in self.config["files"]:
            import keras

            full = keras.saving.load_model(self.directory / FULL_MODEL_FILE, compile=False, safe_mode=True)
            full.get_layer("head").set_weights(weights)
            full.save(folder / FULL_MODEL_FILE)


def replace_initializers(source: Path, old: list[np.ndarray], new: list[np.ndarray], target: Path) -> None:
    """Copy an ONNX model, each constant equal to an array of `old` replaced by the array of `new` in its place.
    tf2onnx keeps each of the head's weights as one constant, found by its value (its name is tf2onnx's)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    constants = [(constant, numpy_helper.to_array(constant)) for constant in model.graph.initializer
                 if constant.data_type == onnx.TensorProto.FLOAT]
    for old_array, new_array in zip(old, new, strict=True):
        found = [constant for constant, array in constants
                 if array.shape == old_array.shape and np.array_equal(array, old_array)]
        if len(found) != 1 or new_array.shape != old_array.shape:
            raise ExportError(f"The head's weights of shape {old_array.shape} appear {len(found)} times in "
                              f"{source.parent.name}'s export, not once: a new head cannot be put in its place.")
        found[0].CopyFrom(numpy_helper.from_array(np.asarray(new_array, dtype=np.float32), found[0].name))
    onnx.save(model, str(target))


def check_head(path: Path, head, image_size: int, tta: bool) -> float:
    """The largest |Δ p(dog)| between the export and `head` on the export's own embeddings of sample images;
    ExportError above the limit."""
    images = sample_images(image_size)
    session = onnx_session(path, threads=0)
    exported, embeddings = session.run(["p_dog", "embedding"], {"image": images})
    expected = head.predict(embeddings, verbose=0)[:, 0]
    if tta:
        mirrored = session.run(["embedding"], {"image": np.ascontiguousarray(flip_horizontal(images))})[0]
        expected = (expected + head.predict(mirrored, verbose=0)[:, 0]) / 2
    difference = float(np.abs(exported - expected).max())
    if not difference < MAX_P_DOG_DIFFERENCE:
        raise ExportError(f"The export with the new head differs from the head by up to {difference:.2g} in "
                          f"p(dog) (the limit is {MAX_P_DOG_DIFFERENCE:g}); the version was not written.")
    return difference
