"""What the app calls: serve production (load, swap, follow the alias, predict, log), take uploads, start a
retraining in its own process, promote and roll back. No TensorFlow here: models are served from model.onnx."""

from __future__ import annotations

import csv
import dataclasses
import hmac
import logging
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np

from . import LABELS
from .config import Settings
from .errors import CatdogError, ServiceError, public_message, shown
from .data import IMAGE_SUFFIXES, Dataset, folder_signature, load_folder, normalize_label
from .hub import open_hub
from .images import ImageLimits, content_hash, load_image, read_bytes, return_large_buffers_to_the_system, waiting_at_most
from .drift import drift_report
from .monitoring import LoggedPrediction, LogUnavailable, PredictionLog, window_start
from .reports import (confidence_histogram, dataset_table, label_mix, monitoring_summary, over_time,
                      production_line, production_table, quality_over_time, retraining_comparison,
                      retraining_progress, retraining_verdict, versions_table)
from .production import Production
from .retrain_data import base_examples
from .retrain_job import RetrainConfig
from .retraining import Retrainer
from .prediction import Prediction
from .serving import ServingModel
from .uploads import SUSPECT_FOLDER, UNLABELLED_FOLDER, RequestLimits, UploadStore

logger = logging.getLogger(__name__)
UPLOAD_SYNC_CLOSE_SECONDS = 60
UPLOAD_SYNC_MINUTES = 1
BATCH_COLUMNS = ("file", "label", "p_dog", "confidence", "flags", "error")
LOG_LINES_SHOWN = 30
THUMBNAIL_SIDE = 160
BATCH_CHUNK = 32  # photos decoded and run together: memory stays bounded whatever the batch's size
REVIEW_QUEUE_LIMIT = 200  # photos waiting for a label (about 1 MB each at most): then no more are kept


class NotAllowed(ServiceError):
    """A mutating action without the admin token (or with a wrong one)."""


def writable_folder(path: Path, variable: str) -> None:
    """Create the folder now, or say which setting to change, rather than fail at the first prediction."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise ServiceError(f"{variable} ({path}) cannot be written: {error.strerror}. Point {variable} at a "
                           f"folder this user can write.") from None


class Service:
    """What the app does, for the web layer. Built, then start()ed — which loads production and starts the
    background work: following the alias, embedding the base data, syncing uploads to the Hub — and close()d."""

    def __init__(self, settings: Settings, retrain_config: RetrainConfig = RetrainConfig()):
        return_large_buffers_to_the_system()
        writable_folder(settings.data_dir, "CATDOG_DATA_DIR")
        self.settings = settings
        self.limits = ImageLimits.from_settings(settings)
        self.hub = open_hub(settings)
        self.log = PredictionLog(settings.prediction_log_url, settings.replica, settings.log_buffer_rows)
        self.uploads = UploadStore(settings.data_dir / "uploads", self.limits, RequestLimits.from_settings(settings))
        self.upload_sync = None
        self.started_at = time.time()
        self._base_counts_cache: tuple[tuple, dict[str, int]] | None = None
        self.retrainer = Retrainer(settings, self._after_retraining, retrain_config)
        if not settings.admin_token and not settings.on_loopback:
            logger.warning("CATDOG_ADMIN_TOKEN is not set and the server listens on %s: uploads, retraining, "
                           "promotion and rollback are refused until it is set.", settings.server_name)
        self.production = Production(settings, self.hub, self.limits)
        self._started = self._closed = False

    def start(self) -> Service:
        """Serve production and start the background work (once; later calls do nothing)."""
        if not self._started:
            self._started = True
            self.production.start()
            self.upload_sync = self._upload_sync() if self.settings.hub_dataset else None
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
        if self.upload_sync:
            try:
                self.upload_sync.trigger().result(timeout=UPLOAD_SYNC_CLOSE_SECONDS)
            except Exception as error:  # the Hub is unreachable: the uploads stay on this disk
                logger.warning("uploads not yet committed to %s stay on this disk: %s", self.settings.hub_dataset,
                               public_message(error))
            self.upload_sync.stop()

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
        classifier = self.production.serving()
        started = time.perf_counter()
        data = read_bytes(source)
        prediction = classifier.predict_one(data)
        latency_ms = (time.perf_counter() - started) * 1000
        self._log(prediction, latency_ms, content_hash(data), origin)
        if self.settings.review_queue and prediction.flags:
            self._keep_for_labelling(data)
        return prediction, latency_ms

    def _keep_for_labelling(self, data: bytes) -> None:
        """CATDOG_REVIEW_QUEUE: a photo production was unsure of, or found unfamiliar, waits for a label. The
        prediction stands whatever happens here."""
        try:
            self.uploads.keep_for_labelling(data, REVIEW_QUEUE_LIMIT)
        except (CatdogError, OSError) as error:
            logger.warning("a photo was not kept for labelling: %s", public_message(error))

    def _log(self, prediction: Prediction, latency_ms: float, sha256: str, origin: str) -> None:
        self.log.record(LoggedPrediction(time.time(), prediction.version, prediction.label, prediction.p_dog,
                                         latency_ms, sha256, origin, bool(prediction.flags), prediction.novelty))

    def explain(self, source) -> tuple[Prediction, np.ndarray]:
        """The prediction and the photo with its heat map: red where it pushed towards dog, blue towards cat."""
        model = self.production.serving()
        if not isinstance(model, ServingModel):
            raise ServiceError("This server runs without a model (CATDOG_NOOP_MODEL), so it cannot explain.")
        explanation = model.explain(read_bytes(source))
        return explanation.prediction, explanation.overlay()

    def predict_batch(self, paths: list[str], origin: str = "api") -> list[dict]:
        """One row per file: file, label, p_dog, confidence, flags — or, in `error`, why it was not classified.
        Each file is read and decoded before the next is read, and the decoded photos go through the model
        BATCH_CHUNK at a time: memory stays bounded whatever the batch's size. A file given twice is classified
        once, and the whole batch waits for decode memory no longer than one photo would."""
        self._check_count(paths)
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

    # Data and training

    def _check_count(self, paths: list) -> None:
        if len(paths) > self.settings.max_files:
            raise ServiceError(f"{len(paths)} files in one request; the limit is {self.settings.max_files} "
                               "(CATDOG_MAX_FILES). Send them in smaller groups.")

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

    def upload(self, label: str, paths: list[str]) -> list[dict]:
        if not paths:
            raise ServiceError("No files were uploaded: choose one or more images or a zip archive.")
        self._check_count(paths)
        files = [(Path(path).name, Path(path)) for path in paths]
        with waiting_at_most(self.limits.budget.wait_seconds):
            return [dataclasses.asdict(result) for result in self.uploads.add(label, files, self._doubt_label)]

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

    def review_suspects(self, confirm: bool) -> str:
        reviewed = self.uploads.review_suspects(confirm)
        if not reviewed:
            return "There are no suspect images."
        self._keep_decisions(reviewed, "confirmed" if confirm else "discarded")
        count = len(reviewed)
        images = "1 suspect image" if count == 1 else f"{count} suspect images"
        if confirm:
            return f"{images} confirmed: {'it joins' if count == 1 else 'they join'} training."
        return f"{images} discarded."

    def correct(self, path: str, label: str) -> str:
        """A person says production got this photo wrong: it joins the uploads as a `label` — held as a
        suspect, for an admin to review, when production was sure of the other class — and is counted."""
        if zipfile.is_zipfile(path):
            raise ServiceError("A correction is one photo, not an archive: add archives on the Retrain tab.")
        (result,) = self.upload(label, [path])
        if result["status"] in ("added", "suspect"):
            self._keep_decisions([(normalize_label(label), result["sha256"])], result["status"])
        return {"added": f"Thank you: this photo is kept as a {normalize_label(label)} for the next retraining.",
                "suspect": f"Kept for review as a {normalize_label(label)}: {result['reason']}.",
                "duplicate": f"This photo is already among the uploads: {result['reason']}.",
                }.get(result["status"], f"Not kept: {result['reason']}")

    def label_photo(self, sha256: str, label: str) -> str:
        """A person labels a photo of the review queue: `cat` or `dog` (it joins training), or `discard`."""
        discard = isinstance(label, str) and label.strip().lower() == "discard"
        try:
            named = None if discard else normalize_label(label)
        except ServiceError:
            raise ServiceError(f"Label a photo cat, dog or discard, not {shown(label)}.") from None
        existing = self.uploads.known(sha256) if isinstance(sha256, str) else None
        if existing and self.uploads.label_unlabelled(sha256, None):
            return f"This photo is already among the uploads as a {existing}; it no longer waits for a label."
        if not self.uploads.label_unlabelled(sha256, named):
            raise ServiceError("That photo is no longer waiting for a label: choose one among those shown "
                               "(another admin may have labelled it).")
        self._keep_decisions([(named or "", sha256)], "discarded" if discard else "labelled")
        return "Discarded." if discard else f"Kept as a {named}: it joins the next retraining."

    def photos_to_label(self, limit: int = 48) -> tuple[list[tuple[np.ndarray, str]], list[str]]:
        """Thumbnails of the photos waiting for a label, and their hashes, in the same order."""
        thumbnails, hashes = [], []
        for path in self.uploads.unlabelled()[:limit]:
            try:
                thumbnails.append((load_image(path, size=THUMBNAIL_SIDE, limits=self.limits, fit=True), "to label"))
                hashes.append(path.stem)
            except CatdogError:
                continue
        return thumbnails, hashes

    def _keep_decisions(self, decided: list[tuple[str, str]], status: str) -> None:
        """Count corrections and review decisions in the prediction log; the decision stands if it is down."""
        try:
            for label, sha256 in decided:
                self.log.record_decision(sha256, label, status)
        except LogUnavailable as error:
            logger.warning("a %s decision was not counted: %s", status, error)

    def suspect_gallery(self, limit: int = 48) -> list[tuple[np.ndarray, str]]:
        """Thumbnails of the images held for review, each captioned with the class it was uploaded as."""
        shown = []
        for label, path in self.uploads.suspects()[:limit]:
            try:
                shown.append((load_image(path, size=THUMBNAIL_SIDE, limits=self.limits, fit=True),
                              f"uploaded as {label}"))
            except CatdogError:
                continue  # a file that no longer decodes is not shown; review still confirms or discards it
        return shown

    def _upload_sync(self):
        """A Space's disk is wiped on restart: accepted uploads are also committed, in batches, to a Hub
        dataset repo (CATDOG_HUB_DATASET)."""
        from huggingface_hub import CommitScheduler, HfApi

        self.uploads.root.mkdir(parents=True, exist_ok=True)
        # Suspect images stay on this disk: only confirmed uploads are kept in the dataset.
        return CommitScheduler(repo_id=self.settings.hub_dataset, repo_type="dataset", folder_path=self.uploads.root,
                               every=UPLOAD_SYNC_MINUTES, hf_api=HfApi(endpoint=self.settings.hub_endpoint),
                               ignore_patterns=[f"{folder}/{pattern}" for folder in (SUSPECT_FOLDER, UNLABELLED_FOLDER)
                                                for pattern in ("*", "**")])

    def dataset_stats(self) -> dict:
        base = self._base_counts()
        uploads = self.uploads.counts()
        return {"base": base, "uploads": uploads, "suspect": self.uploads.suspect_counts(),
                "total": {label: base[label] + uploads[label] for label in base}}

    def _base_counts(self) -> dict[str, int]:
        """Photos per class in CATDOG_BASE_DATA_DIR, duplicates removed. Counting them reads every photo and the
        Metrics tab asks on each page load, so the counts are kept until a file there changes."""
        folder = self.settings.base_data_dir
        if self.settings.base_data_hub:  # its local snapshot changes only when it is downloaded again
            if self._base_counts_cache is None:
                try:
                    self._base_counts_cache = ((), Dataset(base_examples(self.settings)).counts())
                except ServiceError as error:  # counted as none until it can be read
                    logger.warning("%s", error)
                    return dict.fromkeys(LABELS, 0)
            return self._base_counts_cache[1]
        if not folder or not folder.is_dir():
            return dict.fromkeys(LABELS, 0)
        signature = folder_signature(folder)
        cached = self._base_counts_cache
        if cached is None or cached[0] != signature:
            self._base_counts_cache = cached = (signature, load_folder(folder).counts())
        return cached[1]

    @property
    def retrain_state(self):
        return self.retrainer.last()

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

    def retrain_status(self) -> dict:
        """The running (or last) retraining: stage, progress, time left, log, result, and its verdict."""
        state, now = self.retrain_state, time.time()
        seconds_left = state.seconds_left(now)
        status = {"running": state.running, "stage": state.stage, "done": state.done, "total": state.total,
                  "seconds_left": None if seconds_left is None else round(seconds_left),
                  "seconds": state.started_at and round((state.finished_at or now) - state.started_at),
                  "log": [public_message(line) for line in state.log[-LOG_LINES_SHOWN:]], "result": state.result,
                  "error": state.error and public_message(state.error),
                  "production": self.health()["model_version"],  # the served one: no Hub call a second
                  "preparing": self._preparing()}
        return {**status, "verdict": retraining_verdict(status)}

    def _preparing(self) -> dict | None:
        """How far the background embedding for the next retraining has got, while it runs."""
        preparation = self.retrainer.preparation
        if not preparation.running:
            return None
        embedding = preparation.stage == "embedding"
        return {"done": preparation.done if embedding else 0, "total": preparation.total if embedding else 0}

    def versions(self) -> list[dict]:
        servable = self._servable_versions()
        return [{"version": row["version"], "production": row["production"], "servable": row["version"] in servable,
                 "created_at": row["created_at"], "test_accuracy": row["test"].get("accuracy"),
                 "test_roc_auc": row["test"].get("roc_auc"), "test_images": row["test"].get("n_images")}
                for row in self.hub.list_versions()]

    def _servable_versions(self) -> set[str]:
        """The versions that carry a serving export, so that promote and rollback can serve them."""
        return {version for version in self.hub.versions() if self.production.servable(version)}

    def metrics(self, window: str = "day") -> dict:
        """Production's test metrics, and live monitoring and drift over the window, across all replicas."""
        production = self.hub.production()
        test = self.hub.metrics()["test"] if production else None
        return {"production": production, "test": test, "monitoring": self.monitoring(window),
                "drift": self.drift(window)}

    def monitoring(self, window: str = "day") -> dict:
        """The prediction log's statistics; while its database is unreachable, the sentence and the buffer."""
        try:
            statistics = {**self.log.statistics(window), "decisions": self.log.decisions(window)}
        except LogUnavailable as error:
            statistics = {"window": window, "error": public_message(error)}
        return {**statistics, **self._log_health()}

    def _log_health(self) -> dict:
        health = self.log.health()
        return {**health, "write_error": health["write_error"] and public_message(health["write_error"])}

    def drift(self, window: str = "day") -> dict:
        model = self.serving_model
        if not isinstance(model, ServingModel):
            return {"verdict": "no model", "sentence": "No model is served.", "tests": {}}
        try:
            recent = self.log.recent_values(model.version, window_start(window))
        except LogUnavailable as error:
            return {"verdict": "unknown", "sentence": public_message(error), "tests": {}}
        reference = model.novelty.reference if model.novelty else None
        return drift_report(model.version, reference, recent)

    def metrics_view(self, window: str = "day") -> dict:
        """What the Metrics tab shows: metrics() as tables, plot data and sentences, and production's own
        confusion matrix and ROC curve (PNG files written with the version)."""
        metrics = self.metrics(window)
        folder = self.hub.download() if metrics["production"] else None
        images = {name: folder / f"{name}.png" if folder and (folder / f"{name}.png").is_file() else None
                  for name in ("confusion_matrix", "roc_curve")}
        monitoring = metrics["monitoring"]
        return {"metrics": metrics, **images, "production_table": production_table(metrics["test"]),
                "versions_table": versions_table(self.versions()), "drift": metrics["drift"]["sentence"],
                "summary": monitoring_summary(monitoring, window), "over_time": over_time(monitoring),
                "quality": quality_over_time(monitoring), "labels": label_mix(monitoring),
                "confidence": confidence_histogram(monitoring),
                "dataset_table": dataset_table(self.dataset_stats())}

    def retrain_view(self, with_versions: bool = True) -> dict:
        """What the Retrain tab shows of the running (or last) retraining, and of production now; with_versions:
        also which versions can be served (it reads every version's configuration, so not every second)."""
        status = self.retrain_status()
        return {"status": status, "progress": retraining_progress(status), "verdict": status["verdict"],
                "comparison": retraining_comparison(status["result"]), "log": "\n".join(status["log"]),
                "production": production_line(status["production"],
                                              self._servable_versions() if with_versions else None)}

    def example_images(self, per_class: int = 2) -> list[str]:
        folder = self.settings.examples_dir
        if not folder or not folder.is_dir():
            return []
        found = []
        for class_folder in sorted(path for path in folder.iterdir() if path.is_dir()):
            images = sorted(path for path in class_folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
            found += [str(path) for path in images[:per_class]]
        return found

    def status(self) -> dict:
        return {**self.health(), "uptime_s": round(time.time() - self.started_at, 1), "load_error": self.load_error,
                "predictions_last_hour": self.monitoring("hour").get("count"), "prediction_log": self._log_health(),
                "versions": self.hub.versions(), "retraining": self.retrain_state.running,
                "uploads": self.uploads.counts()}
