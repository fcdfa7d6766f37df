"""Production, served: the hub's production version loaded from its model.onnx, swapped on promote and
rollback, followed when another replica moves the alias — every change under one lock."""

from __future__ import annotations

import logging
import threading

import numpy as np

from .config import Settings
from .errors import ServiceError
from .hub import HubError, ModelHub
from .images import DEFAULT_LIMITS, ImageLimits
from .prediction import Prediction
from .serving import ImageModel, ModelLoadError, ServingModel, read_config_files
from .config import DEFAULT_LOW_CONFIDENCE
from .layout import ONNX_FILE

LOAD_ERRORS = (HubError, ModelLoadError)
logger = logging.getLogger(__name__)


class ConstantModel(ImageModel):
    """CATDOG_NOOP_MODEL=1, for load tests only: the same app and endpoint with no decoding and no inference,
    to measure what serving costs by itself."""

    precision = "none"

    def __init__(self):
        super().__init__("noop", None, DEFAULT_LOW_CONFIDENCE, DEFAULT_LIMITS)

    def decode(self, source) -> np.ndarray:
        return np.zeros((1, 1, 3), np.uint8)

    def predict_decoded(self, images: np.ndarray) -> list[Prediction]:
        return [Prediction("cat", 0.5, 0.5, self.version)] * len(images)


class Production:
    def __init__(self, settings: Settings, hub: ModelHub, limits: ImageLimits):
        self.settings = settings
        self.hub = hub
        self.limits = limits
        self.model: ServingModel | ConstantModel | None = None
        self.load_error: str | None = None
        # Every change of production (the hub's alias, loading, the swap) happens under this one lock, so the
        # alias and the model being served never disagree, whoever promotes, rolls back or follows a replica.
        self.lock = threading.RLock()
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None

    def start(self) -> Production:
        """Load production and serve it; follow the alias (another replica may move it) every reload_seconds."""
        self.reload()
        # The no-op model of the load tests never follows the alias: it would swap the real model in.
        if self.settings.reload_seconds > 0 and not self.settings.noop_model and self._follower is None:
            self._follower = threading.Thread(target=self._follow, name="follow-production", daemon=True)
            self._follower.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following the alias; what is served stays. A follower in the middle of a download is not waited
        for longer than timeout: it swaps nothing once stopped."""
        self._stopping.set()
        if self._follower:
            self._follower.join(timeout)

    def _load_ready(self, revision: str) -> ServingModel:
        version = self.hub.resolve(revision)
        # One inference thread (CATDOG_SERVING_THREADS) leaves the other core to the web server's own work.
        model = ServingModel.load(self.hub.download(version), version, threads=self.settings.serving_threads,
                                  precision=self.settings.serving_precision,
                                  low_confidence=self.settings.low_confidence, limits=self.limits)
        if model.precision != self.settings.serving_precision:
            logger.warning("%s has no int8 export (CATDOG_SERVING_PRECISION=int8): serving its float export; "
                           "publish one with `catdog export --version %s --int8 --data-dir …`.", version, version)
        # The first call allocates ONNX Runtime's buffers: pay it here, not in a request.
        model.run(np.zeros((1, model.image_size, model.image_size, 3), np.uint8))
        return model

    def _swap(self, model: ServingModel) -> None:
        """One assignment, so predictions in flight finish on the old model."""
        self.model, self.load_error = model, None

    def reload(self) -> None:
        """Load production and serve it."""
        if self.settings.noop_model:
            self.model = ConstantModel()
            return
        with self.lock:
            try:
                self._swap(self._load_ready("production"))
            except LOAD_ERRORS as error:
                self.load_error = str(error)

    def _follow(self) -> None:
        """Replicas behind a load balancer share one hub: each one swaps models when the alias moves. The hub is
        read and the model loaded outside the lock — a slow hub never holds up a promotion or a rollback here —
        and swapped in only if nothing was swapped meanwhile."""
        while not self._stopping.wait(self.settings.reload_seconds):
            served = self.model
            try:
                production = self.hub.production()
            except Exception as error:  # a hub down for a moment must not end this thread: the next pass retries
                logger.warning("cannot read the production alias: %s", error)
                continue
            serving = served.version if served else None
            if production is None or production == serving:
                continue
            logger.info("production moved from %s to %s; reloading", serving, production)
            try:
                model = self._load_ready(production)
            except Exception as error:
                self.load_error = str(error)
                logger.warning("cannot load production %s: %s", production, error)
                continue
            with self.lock:
                if self.model is served and not self._stopping.is_set():  # nothing was swapped meanwhile
                    self._swap(model)

    def serving(self) -> ServingModel | ConstantModel:
        """The model to answer a request with; a sentence if there is none."""
        model = self.model
        if model is None:
            raise ServiceError(f"No model is loaded: {self.load_error}")
        return model

    def promote(self, version: str) -> str:
        """Serve version; it is loaded first, so a version that cannot load never becomes production."""
        if not isinstance(version, str) or not version.strip():
            raise ServiceError("Say which version to promote, for example v3 (see the versions table).")
        with self.lock:
            version = self.hub.resolve(version.strip())
            model = self._loaded_or_refused(version, "promoted")
            self.hub.promote(version)
            self._swap(model)
        return version

    def rollback(self) -> tuple[str, list[str]]:
        """Serve the latest version that production replaced and that can be served (loaded first, like
        promote); the later ones, which never can (no export, or files that fail their checks), leave the
        history. A version the hub cannot give now (a network error) stops the rollback: nothing changes.
        Returns the version and those skipped."""
        with self.lock:
            previous = self.hub.refs()["previous"]
            if not previous:
                raise ServiceError("There is no earlier production version to roll back to.")
            refusals = []
            for candidate in reversed(previous):
                try:
                    model = self._load_ready(candidate)
                    break
                except HubError as error:
                    raise ServiceError(f"{candidate} cannot be fetched now: {error} Production is unchanged; "
                                       "roll back again once the hub answers.") from None
                except ModelLoadError as error:
                    refusals.append((candidate, error))
            else:
                (first, error), others = refusals[0], [version for version, _ in refusals[1:]]
                raise ServiceError(f"{first} cannot be rolled back to: {error}" + (
                    f" ({', '.join(others)} cannot be served either)" if others else ""))
            version = self.hub.rollback(to=model.version)
            if version == model.version:
                self._swap(model)
            else:  # another process moved the alias in between: serve what the hub now says
                self.reload()
        return version, [version for version, _ in refusals]

    def servable(self, version: str) -> bool:
        """Whether the version carries a serving export (the repository keeps production's alone; the files are
        checked when it is loaded)."""
        try:
            folder = self.hub.download(version)
            return ONNX_FILE in read_config_files(folder) and (folder / ONNX_FILE).is_file()
        except (HubError, ModelLoadError):
            return False

    def _loaded_or_refused(self, version: str, action: str) -> ServingModel:
        try:
            return self._load_ready(version)
        except LOAD_ERRORS as error:
            raise ServiceError(f"{version} cannot be {action}: {error}") from None

    def health(self) -> dict:
        model = self.model
        return {"status": "ok" if model else "not ready", "model_loaded": model is not None,
                "model_version": model.version if model else None, "precision": model.precision if model else None}
