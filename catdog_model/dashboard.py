"""What the Metrics and Retrain tabs and /api/status read: production's test metrics, live monitoring and drift
from the prediction log, the versions, the retraining's progress and verdict, the dataset's counts — as
numbers, and as the tables, plot data and sentences of catdog_model.reports. It only reads."""

from __future__ import annotations

import time
from pathlib import Path

from .curation import Curation
from .drift import drift_report
from .errors import LogUnavailable, public_message
from .hub import HubError, ModelHub
from .monitoring import PredictionLog, window_start
from .production import Production
from .reports import (confidence_histogram, dataset_table, label_mix, metric_cards, monitoring_summary, over_time,
                      production_line, production_table, quality_over_time, retraining_comparison,
                      retraining_progress, retraining_verdict, versions_table)
from .retraining import Retrainer
from .scores import kept_score, noted_trusted_set, version_id
from .serving import ServingModel
from .version_metrics import metrics_table, read_metrics

LOG_LINES_SHOWN = 30


class Dashboard:
    def __init__(self, hub: ModelHub, log: PredictionLog, production: Production, retrainer: Retrainer,
                 curation: Curation, cache_dir: Path):
        self.hub = hub
        self.log = log
        self.production = production
        self.retrainer = retrainer
        self.curation = curation
        self.cache_dir = cache_dir  # where the versions' scores on the trusted photos are kept
        self._version_ids: dict[str, str] = {}
        self.started_at = time.time()

    def metrics(self, window: str = "day") -> dict:
        """Production's test metrics, and live monitoring and drift over the window, across all replicas."""
        production = self.hub.production()
        test = read_metrics(self.hub)["test"] if production else None
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
        model = self.production.model
        if not isinstance(model, ServingModel):
            return {"verdict": "no model", "sentence": "No model is served.", "tests": {}}
        try:
            recent = self.log.recent_values(model.version, window_start(window))
        except LogUnavailable as error:
            return {"verdict": "unknown", "sentence": public_message(error), "tests": {}}
        reference = model.novelty.reference if model.novelty else None
        return drift_report(model.version, reference, recent)

    def versions(self) -> list[dict]:
        """Every version: production or not, servable or not, created; its accuracy and log loss on the trusted
        photos (the same set for every version, so comparable; None until measured — in the background after
        start and after each promotion, or by the gate), and its own test-split figures (each on its own split:
        not comparable)."""
        servable = self._servable_versions()
        trusted = noted_trusted_set(self.cache_dir)
        rows = []
        for row in metrics_table(self.hub):
            score = self._trusted_score(row["version"], trusted["signature"]) \
                if trusted and row["version"] in servable else None
            rows.append({"version": row["version"], "production": row["production"],
                         "servable": row["version"] in servable, "created_at": row["created_at"],
                         "trusted_accuracy": score and score["accuracy"],
                         "trusted_log_loss": score and score["log_loss"],
                         "trusted_images": score and score["n_images"],
                         "test_accuracy": row["test"].get("accuracy"), "test_roc_auc": row["test"].get("roc_auc"),
                         "test_images": row["test"].get("n_images")})
        return rows

    def _trusted_score(self, version: str, signature: str) -> dict | None:
        """The version's kept score on the trusted set; None when not measured, or while its files cannot be
        read (the Hub unreachable): a missing figure, not a failed tab. Versions never change, so each one's
        identity is read once."""
        try:
            if version not in self._version_ids:
                self._version_ids[version] = version_id(self.hub.download(version))
        except (HubError, OSError):
            return None
        return kept_score(self.cache_dir, self._version_ids[version], signature)

    def _servable_versions(self) -> set[str]:
        """The versions that carry a serving export, so that promote and rollback can serve them."""
        return {version for version in self.hub.versions() if self.production.servable(version)}

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
                "cards": metric_cards(monitoring, metrics["drift"], window),
                "summary": monitoring_summary(monitoring, window), "over_time": over_time(monitoring),
                "quality": quality_over_time(monitoring), "labels": label_mix(monitoring),
                "confidence": confidence_histogram(monitoring),
                "dataset_table": dataset_table(self.curation.dataset_stats())}

    def retrain_status(self) -> dict:
        """The running (or last) retraining: stage, progress, time left, log, result, and its verdict."""
        state, now = self.retrainer.last(), time.time()
        seconds_left = state.seconds_left(now)
        status = {"running": state.running, "stage": state.stage, "done": state.done, "total": state.total,
                  "seconds_left": None if seconds_left is None else round(seconds_left),
                  "seconds": state.started_at and round((state.finished_at or now) - state.started_at),
                  "log": [public_message(line) for line in state.log[-LOG_LINES_SHOWN:]], "result": state.result,
                  "error": state.error and public_message(state.error),
                  "production": self.production.health()["model_version"],  # the served one: no Hub call a second
                  "preparing": self._preparing()}
        return {**status, "verdict": retraining_verdict(status)}

    def _preparing(self) -> dict | None:
        """How far the background embedding for the next retraining has got, while it runs."""
        preparation = self.retrainer.preparation
        if not preparation.running:
            return None
        embedding = preparation.stage == "embedding"
        return {"done": preparation.done if embedding else 0, "total": preparation.total if embedding else 0}

    def retrain_view(self, with_versions: bool = True) -> dict:
        """What the Retrain tab shows of the running (or last) retraining, and of production now; with_versions:
        also which versions can be served (it reads every version's configuration, so not every second)."""
        status = self.retrain_status()
        return {"status": status, "progress": retraining_progress(status), "verdict": status["verdict"],
                "comparison": retraining_comparison(status["result"]), "log": "\n".join(status["log"]),
                "production": production_line(status["production"],
                                              self._servable_versions() if with_versions else None)}

    def status(self) -> dict:
        """/api/status: production, uptime, the log's health, the versions, whether a retraining runs, uploads."""
        return {**self.production.health(), "uptime_s": round(time.time() - self.started_at, 1),
                "load_error": self.production.load_error,
                "predictions_last_hour": self.monitoring("hour").get("count"), "prediction_log": self._log_health(),
                "versions": self.hub.versions(), "retraining": self.retrainer.last().running,
                "uploads": self.curation.uploads.counts()}
