"""Backbone + trained head: predict, save and load one model version's files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from . import LABELS
from .backbone import Backbone, BackboneSpec, WeightsSource, build_backbone, file_sha256, get_backbone
from .images import DEFAULT_LIMITS, ImageLimits
from .novelty import NoveltyDetector
from .serving import ImageModel, ModelLoadError, read_config
from .config import DEFAULT_LOW_CONFIDENCE
from .layout import CARD_FILE, CONFIG_FILE, FULL_MODEL_FILE, HEAD_WEIGHTS_FILE, NOVELTY_FILE, ONNX_FILE



@dataclasses.dataclass(frozen=True)
class HeadConfig:
    embedding_dim: int = 1280
    hidden_units: int = 0
    dropout_rate: float = 0.2


def build_head(config: HeadConfig):
    """Embedding → probability that the image is a dog."""
    import keras

    inputs = keras.Input(shape=(config.embedding_dim,), name="embedding")
    features = keras.layers.Dropout(config.dropout_rate)(inputs)
    if config.hidden_units:
        features = keras.layers.Dense(config.hidden_units, activation="relu")(features)
        features = keras.layers.Dropout(config.dropout_rate)(features)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="p_dog")(features)
    return keras.Model(inputs, outputs, name="head")


class Classifier(ImageModel):
    """The Keras model of a version: backbone + head, for training, evaluation and the export."""

    def __init__(self, backbone: Backbone, head, head_config: HeadConfig, tta: bool = False,
                 version: str | None = None, low_confidence: float = DEFAULT_LOW_CONFIDENCE,
                 limits: ImageLimits = DEFAULT_LIMITS,
                 novelty: NoveltyDetector | None = None):
        import tensorflow as tf

        super().__init__(version, novelty, low_confidence, limits)
        self.backbone = backbone
        self.head = head
        self.head_config = head_config
        self.tta = tta
        # One trace per value of tta; reduce_retracing lets a trace serve every batch size.
        self._forward = tf.function(self._probabilities, reduce_retracing=True)

    @property
    def spec(self) -> BackboneSpec:
        return self.backbone.spec

    def _probabilities(self, images, tta: bool):
        """(p_dog, embeddings of the images as given) in one compiled call."""
        import tensorflow as tf

        if not tta:
            embeddings = self.backbone.model(images, training=False)
            return self.head(embeddings, training=False)[:, 0], embeddings
        embeddings = self.backbone.model(tf.concat([images, tf.reverse(images, axis=[2])], axis=0), training=False)
        original, flipped = tf.split(self.head(embeddings, training=False)[:, 0], 2)
        return (original + flipped) / 2, tf.split(embeddings, 2)[0]

    def p_dog_from_embeddings(self, embeddings: dict[str, np.ndarray], tta: bool | None = None) -> np.ndarray:
        """Probabilities from cached embeddings ({"original": ..., "flipped": ...}), as predict would give."""
        p_dog = self.head.predict(embeddings["original"], verbose=0, batch_size=1024)[:, 0]
        if self.tta if tta is None else tta:
            p_dog = (p_dog + self.head.predict(embeddings["flipped"], verbose=0, batch_size=1024)[:, 0]) / 2
        return p_dog

    def views(self) -> tuple[str, ...]:
        return ("original", "flipped") if self.tta else ("original",)

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predict_arrays(images)

    def predict_arrays(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(dog) and embeddings for uint8 images (N, size, size, 3), in chunks."""
        step = self.backbone.batch_size
        chunks = [self._forward(images[start:start + step], self.tta) for start in range(0, len(images), step)]
        return (np.concatenate([p_dog.numpy() for p_dog, _ in chunks]),
                np.concatenate([embeddings.numpy() for _, embeddings in chunks]))

    def at_image_size(self, size: int) -> "Classifier":
        """This classifier with its backbone's weights run on size × size images: the network is convolutional
        up to its pooling, so any size runs, and a larger one than it trained at can see more (FixRes). Its
        embeddings are cached apart, under the size."""
        spec = dataclasses.replace(self.spec, image_size=int(size))
        model = build_backbone(spec, None)
        model.set_weights(self.backbone.model.get_weights())
        return Classifier(Backbone(spec, None, self.backbone.batch_size, model=model), self.head, self.head_config,
                          tta=self.tta, version=self.version, novelty=self.novelty, low_confidence=self.low_confidence,
                          limits=self.limits)

    def save(self, directory: Path, full_model: bool = False) -> None:
        """Write config.json and the head's weights; the backbone is referenced, not copied, unless full_model:
        then model.keras holds backbone and head together, so loading needs no ImageNet weights file."""
        if full_model:
            import keras

            size = self.spec.image_size
            # A fresh copy of the head: the trained one is compiled, and Keras would save its optimizer's state too.
            head = build_head(self.head_config)
            head.set_weights(self.head.get_weights())
            image = keras.Input((size, size, 3), dtype="uint8", name="image")
            keras.Model(image, head(self.backbone.model(image)), name="catdog").save(
                Path(directory) / FULL_MODEL_FILE)
        save_version_files(directory, self.spec, self.head, self.head_config, self.tta, self.novelty)

    @classmethod
    def load(cls, directory: Path, weights: WeightsSource, version: str | None = None,
             batch_size: int = 32, **options) -> "Classifier":
        directory = Path(directory)
        config = read_config(directory, optional=(ONNX_FILE,))  # the Keras model does not need its export
        expected = config["files"]
        try:
            spec = BackboneSpec.from_dict(config["backbone"])
            head_config = HeadConfig(**config["head"])
        except (KeyError, TypeError) as error:
            raise ModelLoadError(f"{directory.name}: {CONFIG_FILE} is corrupt ({error}).") from None
        novelty = NoveltyDetector.load(directory / NOVELTY_FILE) if NOVELTY_FILE in expected else None
        if FULL_MODEL_FILE in expected:
            import keras

            try:
                # safe_mode: a model file may not run arbitrary code (no Lambda layers are deserialized).
                full = keras.saving.load_model(directory / FULL_MODEL_FILE, compile=False, safe_mode=True)
            except Exception as error:  # Keras raises many types for a bad file.
                raise ModelLoadError(f"{directory.name}: cannot read {FULL_MODEL_FILE} ({error}).") from None
            backbone = Backbone(spec, None, batch_size, model=full.get_layer("backbone"))
            return cls(backbone, full.get_layer("head"), head_config, tta=bool(config.get("tta")),
                       version=version, novelty=novelty, **options)
        head = build_head(head_config)
        try:
            head.load_weights(directory / HEAD_WEIGHTS_FILE)
        except Exception as error:  # h5py and Keras raise many types for a bad file.
            raise ModelLoadError(f"{directory.name}: cannot read {HEAD_WEIGHTS_FILE} ({error}).") from None
        backbone = get_backbone(spec, weights, batch_size)
        return cls(backbone, head, head_config, tta=bool(config.get("tta")), version=version, novelty=novelty,
                   **options)


def save_version_files(directory: Path, spec: BackboneSpec, head, head_config: HeadConfig, tta: bool,
                       novelty: NoveltyDetector | None = None) -> None:
    directory = Path(directory)
    # A compiled model's weight file also carries the optimizer's state, three times the size; a fresh copy doesn't.
    clean_head = build_head(head_config)
    clean_head.set_weights(head.get_weights())
    clean_head.save_weights(directory / HEAD_WEIGHTS_FILE)
    files = [HEAD_WEIGHTS_FILE] + [FULL_MODEL_FILE] * (directory / FULL_MODEL_FILE).is_file()
    if novelty:
        novelty.save(directory / NOVELTY_FILE)
        files.append(NOVELTY_FILE)
    config = {"labels": list(LABELS), "positive_label": "dog", "backbone": spec.to_dict(),
              "head": dataclasses.asdict(head_config), "tta": tta,
              "files": {name: file_sha256(directory / name) for name in files}}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def seal_version_files(directory: Path) -> None:
    """List every file of the version (but the card) with its sha256 in config.json: loading then refuses a
    version in which any file was changed."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    config["files"] = {path.name: file_sha256(path) for path in sorted(directory.iterdir())
                       if path.is_file() and path.name not in (CONFIG_FILE, CARD_FILE)}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load_classifier(hub, revision: str, settings, limits: ImageLimits | None = None) -> Classifier:
    """The Keras model of a hub version (training, evaluation, export); serving loads model.onnx instead."""
    version = hub.resolve(revision)
    return Classifier.load(hub.download(version), WeightsSource.from_settings(settings), version=version,
                           batch_size=settings.backbone_batch_size, low_confidence=settings.low_confidence,
                           limits=limits or ImageLimits.from_settings(settings))
