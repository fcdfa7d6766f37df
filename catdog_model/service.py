"""What the app calls: serve production (predict, explain, batches; each prediction logged), check the admin
token, start a retraining in its own process, promote and roll back. It builds and owns the parts that do each
job — Production (load, swap, follow the alias), PredictionLog, Retrainer, Curation (uploads and labels),
DataReview (likely problems in the labelled photos, and the admins' decisions about them) and Dashboard (what
the Metrics and Retrain tabs read) — and starts and closes them together. No TensorFlow here:
models are served from model.onnx."""

from __future__ import annotations

import csv
import hmac
import logging
import time
import uuid
from pathlib import Path

import numpy as np

from .atomic import writable_folder
from .config import Settings
from .curation import Curation, refuse_too_many_files
from .dashboard import Dashboard
from .data_review import DataReview, Ranking, Shown
from .errors import CatdogError, ServiceError, public_message
from .data import IMAGE_SUFFIXES
from .hub import open_hub
from .images import (ImageLimits, content_hash, load_image, read_bytes, return_large_buffers_to_the_system,
                     waiting_at_most)
from .monitoring import LoggedPrediction, PredictionLog
from .production import Production
from .retrain_job import RetrainConfig
from .retraining import Retrainer
from .prediction import Prediction
from .serving import ServingModel

logger = logging.getLogger(__name__)
BATCH_COLUMNS = ("file", "label", "p_dog", "confidence", "flags", "error")
BATCH_CHUNK = 32  # photos decoded and run together: memory stays bounded whatever the batch's size
EXPLAIN_SIDE = 512  # the heat map's longer side: the photo at its own aspect ratio, big enough to see


class NotAllowed(ServiceError):
    """A mutating action without the admin token (or with a wrong one)."""


class Service:
    """What the app does, for the web layer: serving and the admin's actions here, uploads and labels in
    `curation`, the tabs' figures in `dashboard`. Built, then start()ed — which loads production and starts the
    background work: following the alias, writing the prediction log, embedding the base data, syncing uploads to
    the Hub — and close()d."""

    def __init__(self, settings: Settings, retrain_config: RetrainConfig | None = None):
        retrain_config = retrain_config or RetrainConfig.from_settings(settings)  # a wrong recipe stops here
        return_large_buffers_to_the_system()
        writable_folder(settings.data_dir, "CATDOG_DATA_DIR")
        self.settings = settings
        self.limits = ImageLimits.from_settings(settings)
        self.hub = open_hub(settings)
        self.log = PredictionLog(settings.prediction_log_url, settings.replica, settings.log_buffer_rows)
        self.retrainer = Retrainer(settings, self._after_retraining, retrain_config)
        if not settings.admin_token and not settings.on_loopback:
            logger.warning("CATDOG_ADMIN_TOKEN is not set and the server listens on %s: uploads, retraining, "
                           "promotion and rollback are refused until it is set.", settings.server_name)
        self.production = Production(settings, self.hub, self.limits)
        self.curation = Curation(settings, self.limits, self.log, self._doubt_label)
        self.dashboard = Dashboard(self.hub, self.log, self.production, self.retrainer, self.curation,
                                   settings.cache_dir)
        self.data_review = DataReview(settings, self.limits, self.curation.uploads, self._embed_in_background)
        self._started = self._closed = False

    def start(self) -> Service:
        """Serve production and start the background work (once; later calls do nothing)."""
        if not self._started:
            self._started = True
            self.production.start()
            self.log.start()
            self.curation.start()
            self.prepare_retraining()
        return self

    def close(self) -> None:
        """Stop the background work (once; later calls do nothing): the retraining and embedding children,
        following the alias, the prediction log's writer (which writes what is buffered first) and the upload
        sync (which commits what is pending)."""
        if self._closed:
            return
        self._closed = True
        self.retrainer.stop()
        self.production.stop()
        self.log.close()
        self.curation.stop()

    def prepare_retraining(self) -> None:
        """Embed the base data with production's backbone in the background (a child process at low priority),
        so that a retraining started later embeds only what is new; where there is base data to embed."""
        settings = self.settings
        if settings.prepare_embeddings and (settings.base_data_hub or settings.trusted_data_dir or (
                settings.base_data_dir and settings.base_data_dir.is_dir())):
            self.retrainer.prepare()

    # Serving: the production unit decides what is served; here each prediction is also logged.

    @property
    def serving_model(self) -> ServingModel | None:
        return self.production.model

    @property
    def load_error(self) -> str | None:
        return self.production.load_error

    def health(self) -> dict:
        return self.production.health()

    def promote(self, version: str) -> str:
        promoted = self.production.promote(version)
        self.prepare_retraining()
        return promoted

    def rollback(self) -> str:
        """Roll back to the latest earlier production that can be served; the sentence saying what happened."""
        version, skipped = self.production.rollback()
        self.prepare_retraining()
        return f"Rolled back: production is now {version}." + (
            f" Skipped {', '.join(skipped)}: {'it' if len(skipped) == 1 else 'they'} cannot be served." if skipped
            else "")

    def predict(self, source, origin: str = "api") -> tuple[Prediction, float]:
        """The prediction and its latency in ms; logged, unless logging fails."""
        model = self.production.serving()
        started = time.perf_counter()
        data = read_bytes(source)
        prediction = model.predict_one(data)
        latency_ms = (time.perf_counter() - started) * 1000
        self._log(prediction, latency_ms, content_hash(data), origin)
        if self.settings.review_queue and prediction.flags:
            self.curation.keep_for_labelling(data)
        return prediction, latency_ms

    def _doubt_label(self, label: str, image: bytes) -> str | None:
        """Why production doubts the image's label, or None: an image it confidently calls the other class
        is held back until an admin confirms it (mislabelled uploads must not train the next version)."""
        model = self.serving_model
        if not isinstance(model, ServingModel):
            return None
        prediction = model.predict_one(image)
        if prediction.label != label and prediction.confidence >= self.settings.suspect_confidence:
            return (f"production ({prediction.version}) says {prediction.label} with {prediction.confidence:.0%} "
                    "confidence; kept out of training until an admin confirms the suspect images")
        return None

    def _log(self, prediction: Prediction, latency_ms: float, sha256: str, origin: str) -> None:
        self.log.record(LoggedPrediction(time.time(), prediction.version, prediction.label, prediction.p_dog,
                                         latency_ms, sha256, origin, bool(prediction.flags), prediction.novelty))

    def explain(self, source) -> tuple[Prediction, np.ndarray]:
        """The prediction and the photo with its heat map: red where it pushed towards dog, blue towards cat."""
        model = self.production.serving()
        if not isinstance(model, ServingModel):
            raise ServiceError("This server runs without a model (CATDOG_NOOP_MODEL), so it cannot explain.")
        data = read_bytes(source)
        explanation = model.explain(data)
        photo = load_image(data, size=EXPLAIN_SIDE, limits=self.limits, fit=True)
        return explanation.prediction, explanation.overlay(photo)

    def predict_batch(self, paths: list[str], origin: str = "api") -> list[dict]:
        """One row per file: file, label, p_dog, confidence, flags — or, in `error`, why it was not classified.
        Each file is read and decoded before the next is read, and the decoded photos go through the model
        BATCH_CHUNK at a time: memory stays bounded whatever the batch's size. A file given twice is classified
        once, and the whole batch waits for decode memory no longer than one photo would."""
        if not paths:
            raise ServiceError("No photos were given: choose one or more photos, then classify them.")
        refuse_too_many_files(paths, self.settings.max_files)
        model = self.production.serving()
        rows = {path: dict.fromkeys(BATCH_COLUMNS, "") | {"file": Path(path).name, "p_dog": None, "confidence": None}
                for path in paths}
        unique = list(rows)
        with waiting_at_most(self.limits.budget.wait_seconds):
            for start in range(0, len(unique), BATCH_CHUNK):
                started, decoded = time.perf_counter(), []
                for path in unique[start:start + BATCH_CHUNK]:
                    try:
                        data = read_bytes(path)
                        decoded.append((rows[path], content_hash(data), model.decode(data)))
                    except CatdogError as error:
                        rows[path]["error"] = public_message(error)
                    data = None  # the file's bytes go before the next file is read
                if not decoded:
                    continue
                predictions = model.predict_decoded(np.stack([image for _, _, image in decoded]))
                latency_ms = (time.perf_counter() - started) * 1000 / len(decoded)
                for (row, sha256, _), prediction in zip(decoded, predictions):
                    row.update(label=prediction.label, p_dog=round(prediction.p_dog, 4),
                               confidence=round(prediction.confidence, 4), flags=", ".join(prediction.flags))
                    self._log(prediction, latency_ms, sha256, origin)
        return [dict(rows[path]) for path in paths]

    def save_batch_csv(self, rows: list[dict]) -> Path:
        """The batch's rows as a CSV file to download. Files older than CATDOG_FILE_CACHE_MINUTES are removed
        here, so the folder never grows without bound."""
        folder = self.settings.data_dir / "batch-results"
        folder.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - self.settings.file_cache_minutes * 60
        for old in folder.glob("*.csv"):
            if old.stat().st_mtime < cutoff:
                old.unlink(missing_ok=True)
        path = folder / f"predictions-{uuid.uuid4().hex[:12]}.csv"
        with open(path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=BATCH_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        return path

    def check_token(self, token: str | None) -> None:
        """Mutating actions need the admin token; without one configured, only on a server that listens on
        loopback (nobody else can reach it)."""
        expected = self.settings.admin_token
        if not expected:
            if self.settings.open_on_loopback:
                return
            raise NotAllowed(f"This server listens on {self.settings.server_name}, so changing data or models "
                             "needs an admin token: set CATDOG_ADMIN_TOKEN and restart the app.")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), expected.encode()):
            raise NotAllowed("This action needs the admin token (CATDOG_ADMIN_TOKEN); the token given is missing "
                             "or wrong.")

    def start_retrain(self, fine_tune: bool = False) -> str:
        if not self.retrainer.start(fine_tune):
            raise ServiceError("A retraining is already running; wait for it to finish (see its status).")
        return "Retraining started."

    def _after_retraining(self, result: dict) -> None:
        """The child's decision holds only against the production it was judged beside."""
        with self.production.lock:
            unchanged = self.hub.production() in (result["production_version"], result["version"])
            promoted = self.settings.auto_promote and result["gate_passed"] and unchanged
            if promoted:
                self.promote(result["version"])
            elif result["gate_passed"] and not unchanged:
                result["reason"] += " (production changed during the comparison: compare again)"
            elif result["gate_passed"]:
                result["reason"] += " (CATDOG_AUTO_PROMOTE is off: promote it by hand)"
        result["promoted"] = promoted
        self.retrainer.state.log.append(f"{result['version']} {'promoted' if promoted else 'not promoted'}: "
                                        f"{result['reason']}")

    def review_data(self, top: int, progress=None) -> tuple[Ranking, list[Shown]]:
        """The likeliest problems among the labelled photos, as the served production's backbone sees them; and
        the photos to list."""
        model = self.production.model
        if not isinstance(model, ServingModel):
            raise ServiceError("Data issues are found with production's backbone, and no model is being served: "
                               "promote a version first.")
        return self.data_review.find(model.version, self.hub.download(model.version), top, progress)

    def _embed_in_background(self) -> str:
        """Have the labelled photos embedded outside requests: the background child, unless it already runs, is
        switched off, or a retraining runs (which embeds them itself); the sentence saying which."""
        if not self.settings.prepare_embeddings:
            return ("Embedding in the background is off (CATDOG_PREPARE_EMBEDDINGS=0): the next retraining embeds "
                    "them; find data issues again after it.")
        if self.retrainer.preparation.running or self.retrainer.prepare():
            return ("The server embeds them in the background now (about a minute per thousand photos): find data "
                    "issues again then.")
        return "The retraining that runs now embeds them: find data issues again when it has ended."

    def example_images(self, per_class: int = 2) -> list[str]:
        folder = self.settings.examples_dir
        if not folder or not folder.is_dir():
            return []
        found = []
        for class_folder in sorted(path for path in folder.iterdir() if path.is_dir()):
            images = sorted(path for path in class_folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
            found += [str(path) for path in images[:per_class]]
        return found
