"""Serving without TensorFlow: a version's model.onnx on ONNX Runtime, its files verified, images decoded by
catdog's own funnel, and the flags of every prediction.

Each request runs the model on its own thread (ONNX Runtime releases the GIL). A micro-batcher that let
concurrent requests share model calls served TensorFlow well; on ONNX Runtime the hand-off cost more than it
saved: 185 against 281 requests/s on /api/predict in the same 20-s Locust runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .backbone import file_sha256
from .config import DEFAULT_LOW_CONFIDENCE
from .errors import CatdogError
from .images import DEFAULT_LIMITS, ImageLimits, load_image
from .novelty import NoveltyDetector
from .layout import CONFIG_FILE, INT8_ONNX_FILE, NOVELTY_FILE, ONNX_FILE
from .prediction import Prediction, make_prediction


class ModelLoadError(CatdogError, RuntimeError):
    """A model version's files are missing, corrupt or inconsistent."""


# A version may list it and still serve without it (CATDOG_SERVING_PRECISION=int8 falls back to model.onnx).
ALWAYS_OPTIONAL = (INT8_ONNX_FILE,)


def read_config(directory: Path, optional: tuple[str, ...] = ()) -> dict:
    """config.json, after checking every file it lists against its sha256. Files in `optional` may be missing;
    those in ALWAYS_OPTIONAL missing or damaged, and are then left out of the config's "files" (never served)."""
    directory = Path(directory)
    config = _listed(directory)
    for name, sha in list(config["files"].items()):
        path = directory / name
        if name in ALWAYS_OPTIONAL and (not path.is_file() or file_sha256(path) != sha):
            del config["files"][name]
            continue
        if not path.is_file() and name in optional:
            continue
        if not path.is_file():
            # The repository keeps the full-model files of its production version only.
            hint = (f" Publish its export again with `python -m catdog export --version {directory.name}`."
                    if name == ONNX_FILE else "")
            raise ModelLoadError(f"{directory.name}: {name} is missing.{hint}")
        if file_sha256(path) != sha:
            raise ModelLoadError(f"{directory.name}: {name} does not match the sha256 in {CONFIG_FILE}; "
                                 "the file is corrupt or was changed after the version was written.")
    return config


def read_config_files(directory: Path) -> set[str]:
    """The files a version's config.json lists, unchecked: what the version holds, cheaply."""
    return set(_listed(Path(directory))["files"])


def read_image_size(directory: Path) -> int:
    """The side, in pixels, of the photos the version's model takes."""
    return int(_listed(Path(directory))["backbone"]["image_size"])


def _listed(directory: Path) -> dict:
    """config.json, its list of files read but not checked."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text())
        config["files"] = dict(config["files"])
        return config
    except FileNotFoundError:
        raise ModelLoadError(f"{directory.name}: {CONFIG_FILE} is missing.") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{directory.name}: {CONFIG_FILE} is corrupt ({error}).") from None


def onnx_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's choice
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class ImageModel:
    """What the Keras model and its serving export both do with images: decode them with catdog's limits, run
    the model (run() gives p(dog) and embeddings), and turn the answers into flagged Predictions."""

    image_size: int
    precision = "fp32"  # a ServingModel's is "int8" when it runs the version's model.int8.onnx

    def __init__(self, version: str | None, novelty: NoveltyDetector | None, low_confidence: float,
                 limits: ImageLimits):
        self.version = version
        self.novelty = novelty
        self.low_confidence = low_confidence
        self.limits = limits

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def decode(self, source) -> np.ndarray:
        return load_image(source, size=self.image_size, limits=self.limits)

    def predict_decoded(self, images: np.ndarray) -> list[Prediction]:
        return self.predictions_from(*self.run(images))

    def predictions_from(self, p_dogs: np.ndarray, embeddings: np.ndarray) -> list[Prediction]:
        scores = self.novelty.scores(embeddings) if self.novelty else [None] * len(p_dogs)
        threshold = self.novelty.threshold if self.novelty else None
        return [make_prediction(p_dog, score, threshold, self.low_confidence, self.version)
                for p_dog, score in zip(p_dogs, scores)]

    def predict_each(self, sources: list) -> list[Prediction | CatdogError]:
        """For each source, its Prediction or the error that kept it from one; the decodable ones are run
        through the model together."""
        results: list = [None] * len(sources)
        images, decoded = [], []
        for index, source in enumerate(sources):
            try:
                images.append(self.decode(source))
                decoded.append(index)
            except CatdogError as error:
                results[index] = error
        for index, prediction in zip(decoded, self.predict_decoded(np.stack(images)) if images else []):
            results[index] = prediction
        return results

    def predict(self, sources) -> list[Prediction]:
        """One Prediction per image (bytes, path, PIL image or array); InvalidImage for one that is not."""
        if not isinstance(sources, (list, tuple)):
            sources = [sources]
        return self.predict_decoded(np.stack([self.decode(source) for source in sources]))

    def predict_one(self, source) -> Prediction:
        return self.predict_decoded(self.decode(source)[np.newaxis])[0]


class ServingModel(ImageModel):
    """One version, ready to serve from its model.onnx."""

    def __init__(self, session, image_size: int, version: str | None, novelty: NoveltyDetector | None,
                 low_confidence: float = DEFAULT_LOW_CONFIDENCE, limits: ImageLimits = DEFAULT_LIMITS,
                 directory: Path | None = None):
        super().__init__(version, novelty, low_confidence, limits)
        self.session = session
        self.directory = directory
        self._head = None
        self.image_size = image_size

    @classmethod
    def load(cls, directory: Path, version: str | None = None, threads: int = 1, precision: str = "fp32",
             **options) -> "ServingModel":
        """precision "int8": the version's model.int8.onnx where it has one, else its model.onnx (`precision`
        of the loaded model says which)."""
        directory = Path(directory)
        config = read_config(directory)
        if ONNX_FILE not in config["files"]:
            raise ModelLoadError(f"{directory.name} has no serving export ({ONNX_FILE}); publish one with "
                                 f"`python -m catdog export --version {version or directory.name}` "
                                 "(same weights and metrics, a new version).")
        novelty = NoveltyDetector.load(directory / NOVELTY_FILE) if NOVELTY_FILE in config["files"] else None
        served = INT8_ONNX_FILE if precision == "int8" and INT8_ONNX_FILE in config["files"] else ONNX_FILE
        try:
            session = onnx_session(directory / served, threads)
        except Exception as error:  # ONNX Runtime raises its own types for a bad file
            raise ModelLoadError(f"{directory.name}: cannot read {served} ({error}).") from None
        model = cls(session, int(config["backbone"]["image_size"]), version, novelty, directory=directory, **options)
        model.precision = "int8" if served == INT8_ONNX_FILE else "fp32"
        return model

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """p(dog) and embeddings of uint8 images (N, size, size, 3)."""
        p_dog, embeddings = self.session.run(["p_dog", "embedding"], {"image": images})
        return p_dog, embeddings

    def explain(self, source):
        """An Explanation: the prediction, and the Grad-CAM map of the photo as the model saw it."""
        from .explain import Explanation, Head, class_activation_map

        image = self.decode(source)
        if self._head is None:
            try:
                self._head = Head.load(self.directory)
            except (OSError, KeyError) as error:  # h5py's errors for a missing or damaged file
                raise ModelLoadError(f"{self.version}: cannot read the head's weights for the heat map "
                                     f"({error}).") from None
        p_dog, embedding, feature_map = self.session.run(["p_dog", "embedding", "feature_map"],
                                                         {"image": image[np.newaxis]})
        return Explanation(self.predictions_from(p_dog, embedding)[0], image,
                           class_activation_map(feature_map[0], self._head))
