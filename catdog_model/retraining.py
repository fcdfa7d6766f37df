"""Retraining from the app, in its own process: the server never imports TensorFlow and keeps serving at its
own memory while a child trains, publishes, compares and reports.

Child:  python -m catdog_model.retraining [prepare], settings as JSON in CATDOG_RETRAIN_SETTINGS (not on the
        command line, where `ps` would show the admin token) — prints one JSON object a line:
        {"stage", "done", "total"} while it works, {"log": …} for notes, {"result": …} at the end.
        `prepare` only embeds the base data and the trusted photos with production's backbone into the cache,
        so that the next retraining finds them there.
Server: Retrainer starts one child at a time, follows its lines, and hears how it ended. It prepares after the
        server starts and after each change of production; a retraining that starts ends a preparation (what
        it embedded is kept).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from . import LABELS
from .atomic import write_atomically
from .config import PROJECT_ROOT, Settings, TrainingConfig
from .data import Dataset, Example, deduplicate, load_folder, load_hf_dataset, split_examples
from .embeddings import ticking
from .errors import ServiceError
from .finetune import FineTuneConfig
from .images import ImageLimits
from .uploads import UploadStore

logger = logging.getLogger(__name__)
LAST_RETRAINING_FILE = "last_retraining.json"
TRAINING_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "matplotlib")  # requirements-train.txt
CHILD_NICENESS = 10  # the server's requests come first: a retraining takes the cores they leave


@dataclasses.dataclass
class RetrainState:
    running: bool = False
    stage: str = "idle"
    done: int = 0
    total: int = 0
    log: list[str] = dataclasses.field(default_factory=list)
    result: dict | None = None
    error: str | None = None
    started_at: float | None = None  # time.time() of the start, and of the current stage's start
    stage_started_at: float | None = None
    finished_at: float | None = None
    stage_first_done: int | None = None  # how far the stage was when this part of it began (a stage may resume)

    def seconds_left(self, now: float) -> float | None:
        """The current stage's time left, from its pace so far; None before there is a pace to go by."""
        first = self.stage_first_done or 0
        if not (self.running and self.stage_started_at and self.total and first < self.done < self.total):
            return None
        return (now - self.stage_started_at) / (self.done - first) * (self.total - self.done)

    def stage_changed(self, stage: str, now: float) -> None:
        self.stage, self.stage_started_at, self.done, self.total, self.stage_first_done = stage, now, 0, 0, None

    def progressed(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.stage_first_done is None:
            self.stage_first_done = done


# What the server and the child both need to know about the data.

def base_examples(settings: Settings) -> list[Example]:
    """CATDOG_BASE_DATA_DIR's photos: a folder's, or a Hub dataset's (hf:<repo>)."""
    if settings.base_data_hub:
        return hub_dataset(settings.base_data_hub, settings.hub_endpoint).examples
    base = settings.base_data_dir
    return load_folder(base).examples if base and base.is_dir() else []


def trusted_examples(settings: Settings, seed: int, validation_fraction: float,
                     test_fraction: float) -> list[Example]:
    """The fixed held-out photos the gate judges on: CATDOG_TRUSTED_DATA_DIR, else the base data's test split;
    never uploads."""
    trusted = settings.trusted_data_dir
    if trusted and trusted.is_dir():
        return load_folder(trusted).examples
    return split_examples(base_examples(settings), seed, validation_fraction, test_fraction).test


def hub_dataset(repo: str, endpoint: str | None) -> Dataset:
    """A Hub dataset repo of class folders (cat/ and dog/, or cats/ and dogs/), read through `datasets`
    (imagefolder) from its local snapshot; empty while it has none."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", endpoint=endpoint))
        if not any((folder / name).is_dir() for label in LABELS for name in (label, f"{label}s")):
            return Dataset([])
        return load_hf_dataset(str(folder))
    except Exception as error:  # the network, the Hub's answer, the dataset's files: one sentence
        raise ServiceError(f"The Hub dataset {repo} cannot be read now ({type(error).__name__}): check its name, "
                           "HF_TOKEN and the network, or set a folder.") from error


def training_dataset(settings: Settings, uploads: UploadStore, trusted: list[Example]) -> Dataset:
    """Base data and confirmed uploads, less the trusted photos (a candidate never trains on its judge)."""
    examples = base_examples(settings) + list(uploads.dataset().examples)
    if settings.hub_dataset:  # the uploads, kept in a Hub dataset
        examples += hub_dataset(settings.hub_dataset, settings.hub_endpoint).examples
    excluded = {example.sha256 for example in trusted}
    return deduplicate([example for example in examples if example.sha256 not in excluded])


# The child.

@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """What one retraining from the app does; the child receives it (tests make it small)."""

    training: TrainingConfig = TrainingConfig()
    fine_tuning: FineTuneConfig | None = None  # None: a new head on production's backbone (seconds)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RetrainConfig":
        values = json.loads(text)
        return cls(TrainingConfig(**values["training"]),
                   values["fine_tuning"] and FineTuneConfig(**values["fine_tuning"]))


def served_backbone(hub, version: str | None, settings: Settings, emit: Callable[[dict], None]):
    """Production's backbone as its export runs it, or None (and why, in the log) when it has no export."""
    from .serving import ModelLoadError
    from .served_backbone import ServedBackbone

    if version is None:
        emit({"log": "There is no production version: the new version starts from ImageNet's backbone."})
        return None
    try:
        return ServedBackbone(hub.download(version), settings.backbone_batch_size)
    except ModelLoadError as error:
        emit({"log": f"{error} The new version starts from ImageNet's backbone."})
        return None


def progress_to(emit: Callable[[dict], None]) -> Callable[[str, int, int], None]:
    """A progress callback that reports to the server as the child's protocol says."""
    return lambda stage, done, total: emit({"stage": stage, "done": done, "total": total})


def prepare(settings: Settings, plan: RetrainConfig, emit: Callable[[dict], None]) -> dict:
    """Embed what the next retraining will need — base data, uploads, trusted photos — with production's
    backbone as its export runs it (no TensorFlow), into the embedding cache."""
    progress = progress_to(emit)
    with ticking(progress, "reading data"):
        from .embeddings import EmbeddingCache, embed_images
        from .hub import open_hub

        hub = open_hub(settings)
        served = served_backbone(hub, hub.production(), settings, emit)
        if served is None:
            return {"embedded": 0}
        config = served.training_config(plan.training)
        trusted = trusted_examples(settings, config.seed, config.validation_fraction, config.test_fraction)
        uploads = UploadStore(settings.data_dir / "uploads", ImageLimits.from_settings(settings))
        examples = deduplicate(training_dataset(settings, uploads, trusted).examples + trusted).examples
        cache = EmbeddingCache.in_folder(settings.cache_dir)
        before = cache.count(served.spec.id)
    embed_images(served, [(example.sha256, example.content) for example in examples], cache, config.views,
                 progress)
    return {"embedded": (cache.count(served.spec.id) - before) // len(config.views)}


GATE_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss", "n_images")  # numbers (roc_auc may be None)


def are_scores(metrics) -> bool:
    """Whether `metrics` is what compute_metrics gives: numbers where the gate and the tab read them."""
    return isinstance(metrics, dict) and all(isinstance(metrics.get(name), (int, float)) for name in GATE_METRICS)


def trusted_signature(trusted: list[Example]) -> str:
    """Names one trusted set: its photos and their labels, in any order."""
    return hashlib.sha256("\n".join(sorted(f"{example.sha256} {example.label}" for example in trusted)).encode()
                          ).hexdigest()


def gate_metrics(settings: Settings, folder: Path, trusted: list[Example], measure: Callable[[], dict]) -> dict:
    """The metrics on the trusted photos of the version in `folder`: measure()d once, then read back, so a
    second retraining judged beside the same production skips that part. The key names the version's files (its
    config.json lists their sha256, whatever the version is called) and the photos; what is read back must be
    numbers, or it is measured again."""
    version_id = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:32]
    path = settings.cache_dir / "gate" / f"{version_id}-{trusted_signature(trusted)[:32]}.json"
    try:
        kept = json.loads(path.read_text())
        if are_scores(kept):
            return kept
    except (OSError, ValueError):
        pass
    metrics = measure()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(metrics).encode())
    except OSError as error:
        logger.warning("the gate's metrics of %s could not be kept: %s", folder.name, error.strerror)
    return metrics


def run(settings: Settings, plan: RetrainConfig, emit: Callable[[dict], None]) -> dict:
    """Train on base data + uploads — a new head on production's backbone, or with plan.fine_tuning a
    fine-tuned model — publish it, compare it with production on the trusted photos, decide."""
    progress = progress_to(emit)
    with ticking(progress, "reading data"):
        from .classifier import Classifier, load_classifier
        from .evaluation import compute_metrics
        from .gate import promotion_gate
        from .hub import open_hub
        from .training import embed_examples, embedding_cache, publish, train

        config = plan.training
        hub = open_hub(settings)
        production = hub.production()
        served = served_backbone(hub, production, settings, emit)
        uploads = UploadStore(settings.data_dir / "uploads", ImageLimits.from_settings(settings))
        trusted = trusted_examples(settings, config.seed, config.validation_fraction, config.test_fraction)
        dataset = training_dataset(settings, uploads, trusted)
    counts = dataset.counts()
    emit({"log": f"Training data: {counts['cat']:,} cats and {counts['dog']:,} dogs ({len(dataset.duplicates):,} "
                 f"duplicates left out); {len(trusted):,} trusted held-out photos to judge by."})
    if served:
        emit({"log": f"A new head on {production}'s backbone, embedded by its export on ONNX Runtime" +
                     (", then its backbone fine-tuned further." if plan.fine_tuning else ".")})
    with ticking(progress, "loading Keras"):
        import keras  # noqa: F401 — seconds of imports, shown ticking rather than in silence
    trained = train(dataset, settings, config, fine_tuning=plan.fine_tuning, backbone=served, progress=progress,
                    source=str(settings.data_dir / "uploads"), command="retrain from the app")
    if trained.metrics["training"]["kept_starting_head"]:
        emit({"log": f"These photos did not lower the validation loss of {production}'s head, so the new version "
                     "keeps that head unchanged."})
    version = publish(trained, hub, settings.model_name, progress=progress)
    emit({"log": f"Published {version}."})
    compared = None if production in (None, version) else production

    def comparing(stage: str, done: int, total: int) -> None:
        emit({"stage": "comparing", "done": done, "total": total})

    def judged(classifier: Classifier) -> dict:
        embeddings, kept, _ = embed_examples(classifier.backbone, trusted, embedding_cache(settings),
                                             classifier.views(), comparing)
        return {"version": classifier.version, **compute_metrics([example.label for example in kept],
                                                                 classifier.p_dog_from_embeddings(embeddings))}

    comparing("comparing", 0, len(trusted))
    # Production as its export embeds (cached): a head-only candidate shares those embeddings.
    production_model = compared and (Classifier(served, served.head(), served.head_config, tta=served.tta,
                                                version=compared) if served else load_classifier(hub, compared,
                                                                                                 settings))
    candidate_metrics = judged(trained.classifier) if trusted else None
    production_metrics = gate_metrics(settings, hub.download(compared), trusted,
                                      lambda: judged(production_model)) if trusted and production_model else None
    decision = promotion_gate(candidate_metrics and candidate_metrics["accuracy"],
                              production_metrics and production_metrics["accuracy"], len(trusted),
                              settings.gate_min_images, settings.promotion_tolerance, settings.gate_min_accuracy)
    return {"version": version, "candidate": candidate_metrics, "production": production_metrics,
            "production_version": compared, "gate_passed": decision.passed, "reason": decision.reason}


SETTINGS_VARIABLE = "CATDOG_RETRAIN_SETTINGS"
CONFIG_VARIABLE = "CATDOG_RETRAIN_CONFIG"
PARENT_VARIABLE = "CATDOG_RETRAIN_PARENT"  # the server's pid: the child may start after the server is gone


def exit_with_parent(every_seconds: float = 1.0) -> None:
    """End this process as soon as the server that started it is gone (even killed by SIGKILL): its parent
    then becomes another process. (prctl's PR_SET_PDEATHSIG would fire when the server *thread* that started
    the child ends — a Gradio worker thread, which its pool retires when idle.)"""
    parent = int(os.environ.get(PARENT_VARIABLE) or os.getppid())

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main() -> None:
    exit_with_parent()
    os.nice(CHILD_NICENESS)
    settings = Settings.from_json(os.environ[SETTINGS_VARIABLE])
    plan = RetrainConfig.from_json(os.environ[CONFIG_VARIABLE])
    work = prepare if sys.argv[1:] == ["prepare"] else run

    def emit(message: dict) -> None:
        print(json.dumps(message), flush=True)

    try:
        emit({"result": work(settings, plan, emit)})
    except ModuleNotFoundError as error:
        left_out = (error.name or "").split(".")[0] in TRAINING_PACKAGES
        emit({"error": f"Retraining needs {error.name}, which this installation leaves out (a serving image, "
                       "requirements-serve.txt): retrain where requirements.txt is installed." if left_out
              else str(error)})
        sys.exit(1)
    except Exception as error:  # whatever went wrong reaches the server as one sentence, then the exit code
        emit({"error": str(error) or type(error).__name__})
        logger.exception("%s failed", "preparing" if work is prepare else "retraining")
        sys.exit(1)


# The server's side.

class Retrainer:
    """One retraining child at a time; on_result(result) runs in the server when a child succeeds."""

    def __init__(self, settings: Settings, on_result: Callable[[dict], None],
                 config: RetrainConfig = RetrainConfig()):
        self.settings = settings
        self.on_result = on_result
        self.config = config
        self.state = self._kept()  # the last retraining, as the data folder keeps it across restarts
        self.process: subprocess.Popen | None = None
        self.preparation = RetrainState()  # the latest preparation of embeddings, in the background
        self.preparer: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self, fine_tune: bool = False) -> bool:
        """False if a retraining is already running. fine_tune: the backbone's top too (minutes), with
        self.config's fine-tuning recipe (FineTuneConfig's defaults where it has none). A preparation that is
        running ends first."""
        plan = dataclasses.replace(self.config, fine_tuning=(self.config.fine_tuning or FineTuneConfig())
                                   if fine_tune else None)
        with self._lock:
            if self.state.running:
                return False
            self._end(self.preparer)
            now = time.time()
            self.state = RetrainState(running=True, stage="starting", log=["Retraining started."], started_at=now,
                                      stage_started_at=now)
            self.process = self._spawn([], plan)
        threading.Thread(target=self._follow, args=(self.process, self.state, self._finish_retraining),
                         name="retrain-follow", daemon=True).start()
        return True

    def prepare(self) -> bool:
        """Embed the next retraining's photos with production's backbone, in the background, ending a
        preparation for an earlier production first; False (nothing started) while a retraining runs."""
        with self._lock:
            if _alive(self.process):
                return False
            self._end(self.preparer)
            now = time.time()
            self.preparation = RetrainState(running=True, stage="starting", started_at=now, stage_started_at=now)
            self.preparer = self._spawn(["prepare"], self.config)
        threading.Thread(target=self._follow, args=(self.preparer, self.preparation, self._finish_preparation),
                         name="prepare-follow", daemon=True).start()
        return True

    def _spawn(self, arguments: list[str], plan: RetrainConfig) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "catdog_model.retraining", *arguments], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), SETTINGS_VARIABLE: self.settings.to_json(),
                 CONFIG_VARIABLE: plan.to_json(), PARENT_VARIABLE: str(os.getpid())})

    def _follow(self, process: subprocess.Popen, state: RetrainState,
                finish: Callable[[subprocess.Popen, RetrainState, int, list[str]], None]) -> None:
        stderr: list[str] = []
        reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
        reader.start()
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):  # a stray line from a library: not the child's protocol
                continue
            if "stage" in message:
                if message["stage"] != state.stage:
                    total = message.get("total")
                    stage = message["stage"]
                    state.log.append(stage[:1].upper() + stage[1:] + (f": {total:,} to do" if total else "…"))
                    state.stage_changed(message["stage"], time.time())
                state.progressed(message.get("done", 0), message.get("total", 0))
            state.log.extend([message["log"]] if "log" in message else [])
            state.error = message.get("error", state.error)
            state.result = message.get("result", state.result)
        code = process.wait()
        reader.join(timeout=5)
        finish(process, state, code, stderr)
        state.finished_at = time.time()
        state.running = False

    def _finish_retraining(self, process: subprocess.Popen, state: RetrainState, code: int,
                           stderr: list[str]) -> None:
        if code == 0 and state.result:
            try:
                self.on_result(state.result)
                state.stage = "done"
            except Exception as error:  # a promotion that fails is reported like a failed retraining
                state.error, state.stage = str(error), "failed"
        else:
            if code < 0:
                state.error = f"The retraining process was stopped by signal {signal.Signals(-code).name}."
            elif not state.error:
                state.error = f"The retraining process failed (exit code {code})."
            state.stage = "failed"
            logger.warning("retraining failed: %s %s", state.error, "".join(stderr[-20:]).strip())
        state.log.append(f"Failed: {state.error}" if state.stage == "failed" else "Finished.")
        self._keep(dataclasses.replace(state, running=False, finished_at=time.time()))

    def _finish_preparation(self, process: subprocess.Popen, state: RetrainState, code: int,
                            stderr: list[str]) -> None:
        if code == 0:
            state.stage = "done"
        elif getattr(process, "ended_by_us", False):
            state.stage = "stopped"  # a retraining took over; what was embedded is kept
        else:
            state.stage, state.error = "failed", state.error or f"exit code {code}"
            logger.warning("preparing the next retraining's embeddings failed: %s %s", state.error,
                           "".join(stderr[-20:]).strip())

    def _keep(self, state: RetrainState) -> None:
        """The finished retraining, kept in the data folder: a reload or a restart shows it again."""
        try:
            write_atomically(self.settings.data_dir / LAST_RETRAINING_FILE,
                             json.dumps(dataclasses.asdict(state), indent=1).encode())
        except OSError as error:
            logger.warning("the last retraining's result could not be kept: %s", error.strerror)

    def _kept(self) -> RetrainState:
        """The last retraining kept in the data folder, as it ended; idle when there is none, or when what is
        there is not a retraining's state."""
        path = self.settings.data_dir / LAST_RETRAINING_FILE
        if not path.is_file():
            return RetrainState()
        try:
            kept = json.loads(path.read_text())
            state = RetrainState(**{field.name: kept[field.name] for field in dataclasses.fields(RetrainState)
                                    if field.name in kept})
            valid = (isinstance(state.stage, str) and isinstance(state.log, list)
                     and all(isinstance(line, str) for line in state.log)
                     and (state.result is None or (isinstance(state.result.get("version"), str) and all(
                         state.result.get(side) is None or are_scores(state.result[side])
                         for side in ("candidate", "production"))))
                     and all(isinstance(value, (int, float, type(None))) for value in
                             (state.done, state.total, state.started_at, state.finished_at)))
            if valid:
                return dataclasses.replace(state, running=False)  # its process ended with the server that ran it
        except (OSError, ValueError, TypeError, AttributeError) as error:
            logger.warning("the last retraining's result could not be read: %s", error)
            return RetrainState()
        logger.warning("the last retraining's result in %s is not a retraining's state; it is not shown", path)
        return RetrainState()

    def last(self) -> RetrainState:
        """The current retraining's state; before one has run since this server started, the last one kept."""
        return self.state

    def stop(self) -> None:
        """End the running children (the server is shutting down)."""
        for process in (self.process, self.preparer):
            self._end(process)

    @staticmethod
    def _end(process: subprocess.Popen | None) -> None:
        if _alive(process):
            process.ended_by_us = True
            process.kill()
            process.wait(timeout=30)


def _alive(process: subprocess.Popen | None) -> bool:
    return process is not None and process.poll() is None


if __name__ == "__main__":
    main()
