"""What the app calls: predict, take uploads, retrain in the background, compare, promote and roll back."""

from __future__ import annotations

import dataclasses
import hmac
import os
import logging
import threading
import time
from pathlib import Path

import numpy as np

from .backbone import BackboneUnavailable, limit_threads
from .classifier import Classifier, ModelLoadError, Prediction
from .config import Settings
from .data import IMAGE_SUFFIXES, Dataset, deduplicate, load_folder, load_hf_dataset, split_examples
from .evaluation import compute_metrics
from .hub import HubError, open_hub
from .images import content_hash, read_bytes
from .monitoring import LoggedPrediction, PredictionLog
from .reports import plot_monitoring, plot_versions
from .training import TrainingConfig, embed_examples, embedding_cache, publish, train
from .uploads import UploadStore

LOAD_ERRORS = (HubError, ModelLoadError, BackboneUnavailable)
logger = logging.getLogger(__name__)
UPLOAD_SYNC_MINUTES = 1
RETRAIN_BATCH_SIZE = 4


class ServiceError(ValueError):
    """Something the user asked that cannot be done; the message says what to do instead."""


@dataclasses.dataclass
class RetrainState:
    running: bool = False
    stage: str = "idle"
    done: int = 0
    total: int = 0
    log: list[str] = dataclasses.field(default_factory=list)
    result: dict | None = None
    error: str | None = None


class ConstantModel:
    """CATDOG_NOOP_MODEL=1, for load tests only: the same app and endpoint with no decoding and no inference,
    to measure what serving costs by itself."""

    version = "noop"

    def predict_concurrently(self, source) -> Prediction:
        return Prediction("cat", 0.5, 0.5, self.version)


class Service:
    def __init__(self, settings: Settings, training_config: TrainingConfig = TrainingConfig()):
        # On a small machine one inference thread serves more requests: the other cores stay free for the web
        # server's own work (measured in README, "Serving under load").
        limit_threads(settings.serving_threads)
        self.settings = settings
        self.training_config = training_config
        self.hub = open_hub(settings)
        self.log = PredictionLog(settings.data_dir / "predictions.sqlite")
        self.uploads = UploadStore(settings.data_dir / "uploads", settings.max_pixels)
        self.upload_sync = self._upload_sync() if settings.hub_dataset else None
        self.started_at = time.time()
        self.classifier: Classifier | None = None
        self.load_error: str | None = None
        self.retrain_state = RetrainState()
        self._retrain_lock = threading.Lock()
        self.reload()
        if settings.reload_seconds > 0:
            threading.Thread(target=self._follow_production, name="follow-production", daemon=True).start()

    # Serving

    def _load_ready(self, revision: str) -> Classifier:
        classifier = self.hub.load(revision, self.settings)
        # The first call traces the compiled function (about a second): pay it here, not in a request.
        size = classifier.spec.image_size
        classifier.predict_arrays(np.zeros((1, size, size, 3), np.uint8))
        return classifier

    def reload(self) -> None:
        """Load production; the swap is one assignment, so predictions in flight finish on the old model."""
        if self.settings.noop_model:
            self.classifier = ConstantModel()
            return
        try:
            self.classifier = self._load_ready("production")
            self.load_error = None
        except LOAD_ERRORS as error:
            self.load_error = str(error)

    def _follow_production(self) -> None:
        """Replicas behind a load balancer share one hub: each one swaps models when the alias moves."""
        while True:
            time.sleep(self.settings.reload_seconds)
            try:
                production = self.hub.production()
            except Exception as error:  # A hub that is down for a moment must not stop the replica.
                logger.warning("cannot read the production alias: %s", error)
                continue
            serving = self.classifier.version if self.classifier else None
            if production != serving:
                logger.info("production moved from %s to %s; reloading", serving, production)
                self.reload()

    def _serving(self) -> Classifier:
        classifier = self.classifier
        if classifier is None:
            raise ServiceError(f"No model is loaded: {self.load_error}")
        return classifier

    def predict(self, source, origin: str = "api") -> tuple[Prediction, float]:
        """The prediction and its latency in ms; logged, unless logging fails."""
        classifier = self._serving()
        started = time.perf_counter()
        data = read_bytes(source)
        prediction = classifier.predict_concurrently(data)
        latency_ms = (time.perf_counter() - started) * 1000
        self.log.record(LoggedPrediction(time.time(), prediction.version, prediction.label, prediction.p_dog,
                                         latency_ms, content_hash(data), origin, bool(prediction.flags)))
        return prediction, latency_ms

    def predict_batch(self, paths: list[str], origin: str = "api") -> list[dict]:
        """One row per file: file, label, p_dog, confidence, flags — or the reason it was rejected."""
        self._check_count(paths)
        rows = []
        for path in paths:
            name = Path(path).name
            try:
                prediction, _ = self.predict(path, origin)
            except ValueError as error:
                rows.append({"file": name, "label": "", "p_dog": None, "confidence": None, "flags": str(error)})
                continue
            rows.append({"file": name, "label": prediction.label, "p_dog": round(prediction.p_dog, 4),
                         "confidence": round(prediction.confidence, 4), "flags": ", ".join(prediction.flags)})
        return rows

    # Data and training

    def _check_count(self, paths: list) -> None:
        if len(paths) > self.settings.max_files:
            raise ServiceError(f"{len(paths)} files in one request; the limit is {self.settings.max_files} "
                               "(CATDOG_MAX_FILES). Send them in smaller groups.")

    def check_token(self, token: str | None) -> None:
        expected = self.settings.admin_token
        if expected and not hmac.compare_digest((token or "").encode(), expected.encode()):
            raise ServiceError("This action needs the admin token (CATDOG_ADMIN_TOKEN); the token given is missing "
                               "or wrong.")

    def upload(self, label: str, paths: list[str]) -> list[dict]:
        if not paths:
            raise ServiceError("No files were uploaded: choose one or more images or a zip archive.")
        self._check_count(paths)
        files = [(Path(path).name, Path(path).read_bytes()) for path in paths]
        return [dataclasses.asdict(result) for result in self.uploads.add(label, files)]

    def _upload_sync(self):
        """A Space's disk is wiped on restart: accepted uploads are also committed, in batches, to a Hub
        dataset repo (CATDOG_HUB_DATASET)."""
        from huggingface_hub import CommitScheduler, HfApi

        self.uploads.root.mkdir(parents=True, exist_ok=True)
        return CommitScheduler(repo_id=self.settings.hub_dataset, repo_type="dataset", folder_path=self.uploads.root,
                               every=UPLOAD_SYNC_MINUTES, hf_api=HfApi(endpoint=os.environ.get("HF_ENDPOINT")))

    def sync_uploads(self) -> None:
        """Commit pending uploads to the Hub dataset now rather than at the next scheduled batch."""
        if self.upload_sync:
            self.upload_sync.trigger().result()

    def hub_uploads(self) -> Dataset:
        """The uploads kept in the Hub dataset, read back through `datasets` (imagefolder)."""
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(self.settings.hub_dataset, repo_type="dataset",
                                        endpoint=os.environ.get("HF_ENDPOINT")))
        if not any((folder / label).is_dir() for label in ("cat", "dog")):
            return Dataset([])
        return load_hf_dataset(str(folder))

    def training_dataset(self) -> Dataset:
        examples = list(self.uploads.dataset().examples)
        if self.settings.hub_dataset:
            examples += self.hub_uploads().examples
        if self.settings.base_data_dir and self.settings.base_data_dir.is_dir():
            examples = load_folder(self.settings.base_data_dir).examples + examples
        return deduplicate(examples)

    def dataset_stats(self) -> dict:
        base = (load_folder(self.settings.base_data_dir).counts()
                if self.settings.base_data_dir and self.settings.base_data_dir.is_dir() else {"cat": 0, "dog": 0})
        uploads = self.uploads.counts()
        return {"base": base, "uploads": uploads, "total": {label: base[label] + uploads[label] for label in base}}

    def start_retrain(self) -> str:
        if not self._retrain_lock.acquire(blocking=False):
            raise ServiceError("A retraining is already running; wait for it to finish (see its status).")
        self.retrain_state = RetrainState(running=True, stage="starting", log=["Retraining started."])
        threading.Thread(target=self._retrain, name="retrain", daemon=True).start()
        return "Retraining started."

    def _progress(self, stage: str, done: int, total: int) -> None:
        state = self.retrain_state
        if stage != state.stage:
            state.log.append(f"{stage}: {total} to do")
        state.stage, state.done, state.total = stage, done, total

    def _retrain(self) -> None:
        state = self.retrain_state
        try:
            dataset = self.training_dataset()
            state.log.append(f"Dataset: {dataset.counts()} after removing {len(dataset.duplicates)} duplicates.")
            # Small embedding batches: each backbone call is short, so requests never wait long behind one.
            trained = train(dataset, dataclasses.replace(self.settings, batch_size=RETRAIN_BATCH_SIZE),
                            self.training_config, progress=self._progress,
                            source=str(self.settings.data_dir / "uploads"), command="retrain from the app")
            version = publish(trained, self.hub, self.settings.model_name)
            state.log.append(f"Published {version}.")
            state.stage = "comparing"
            comparison = self.compare(version, dataset)
            promoted = self.settings.auto_promote and comparison["gate_passed"]
            if promoted:
                self.promote(version)
            state.log.append(f"{version} {'promoted' if promoted else 'not promoted'}: {comparison['reason']}")
            state.result = {"version": version, "promoted": promoted, **comparison}
            state.stage = "done"
        except Exception as error:  # Whatever happens in the background must reach the user, not vanish.
            state.error = str(error) or type(error).__name__
            state.stage = "failed"
            state.log.append(f"Failed: {state.error}")
            logger.exception("retraining failed")
        finally:
            state.running = False
            self._retrain_lock.release()

    def compare(self, candidate: str, dataset: Dataset) -> dict:
        """Candidate and production on the same held-out photos: the candidate's test split."""
        data = self.hub.metrics(candidate)["data"]
        held_out = split_examples(dataset.examples, data["split_seed"], data["validation_fraction"],
                                  data["test_fraction"]).test
        results = {"candidate": self._evaluate(candidate, held_out)}
        production = self.hub.production()
        if production is None or production == candidate:
            return {**results, "production": None, "gate_passed": True, "reason": "there is no production model"}
        results["production"] = self._evaluate(production, held_out)
        margin = results["candidate"]["accuracy"] - results["production"]["accuracy"]
        passed = margin >= -self.settings.promotion_tolerance
        reason = (f"accuracy {results['candidate']['accuracy']:.4f} vs production {production} "
                  f"{results['production']['accuracy']:.4f} on {len(held_out)} held-out images")
        return {**results, "production_version": production, "gate_passed": passed, "reason": reason}

    def _evaluate(self, version: str, examples) -> dict:
        classifier = self.hub.load(version, self.settings)
        embeddings, kept, _ = embed_examples(classifier.backbone, examples, embedding_cache(self.settings),
                                             classifier.views())
        return {"version": version, **compute_metrics([example.label for example in kept],
                                                      classifier.p_dog_from_embeddings(embeddings))}

    # Versions

    def promote(self, version: str) -> str:
        """Serve version; it is loaded first, so a version that cannot load never becomes production."""
        version = self.hub.resolve(version)
        try:
            classifier = self._load_ready(version)
        except LOAD_ERRORS as error:
            raise ServiceError(f"{version} cannot be promoted: {error}") from None
        self.hub.promote(version)
        self.classifier, self.load_error = classifier, None
        return version

    def rollback(self) -> str:
        version = self.hub.rollback()
        self.reload()
        return version

    def versions(self) -> list[dict]:
        return [{"version": row["version"], "production": row["production"], "created_at": row["created_at"],
                 "test_accuracy": row["test"].get("accuracy"), "test_roc_auc": row["test"].get("roc_auc"),
                 "test_images": row["test"].get("n_images")} for row in self.hub.list_versions()]

    def metrics(self) -> dict:
        """Production's test metrics and the live statistics of the prediction log."""
        production = self.hub.production()
        test = self.hub.metrics()["test"] if production else None
        return {"production": production, "test": test, "monitoring": self.log.statistics()}

    def figures(self) -> dict[str, Path | None]:
        """PNG paths: production's confusion matrix and ROC curve, accuracy across versions, monitoring."""
        folder = self.settings.data_dir / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        production = self.hub.download() if self.hub.production() else None
        saved = {name: production / f"{name}.png" if production and (production / f"{name}.png").is_file()
                 else None for name in ("confusion_matrix", "roc_curve")}
        return {**saved, "versions": plot_versions(self.hub.list_versions(), folder / "versions.png"),
                "monitoring": plot_monitoring(self.log.rows(), folder / "monitoring.png")}

    def comparison(self) -> list[dict]:
        """The last retraining's candidate beside production, metric by metric, on the same photos."""
        result = self.retrain_state.result
        if not result:
            return []
        production = result.get("production") or {}
        return [{"metric": name, "candidate": result["candidate"].get(name), "production": production.get(name)}
                for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "n_images")]

    def example_images(self, per_class: int = 2) -> list[str]:
        folder = self.settings.examples_dir
        if not folder or not folder.is_dir():
            return []
        found = []
        for class_folder in sorted(path for path in folder.iterdir() if path.is_dir()):
            images = sorted(path for path in class_folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
            found += [str(path) for path in images[:per_class]]
        return found

    def health(self) -> dict:
        classifier = self.classifier
        return {"status": "ok" if classifier else "not ready", "model_loaded": classifier is not None,
                "model_version": classifier.version if classifier else None}

    def status(self) -> dict:
        return {**self.health(), "uptime_s": round(time.time() - self.started_at, 1), "load_error": self.load_error,
                "predictions": self.log.statistics(since=self.started_at).get("count", 0),
                "versions": self.hub.versions(), "retraining": self.retrain_state.running,
                "uploads": self.uploads.counts()}
