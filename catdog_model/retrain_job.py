"""The retraining child: python -m catdog_model.retrain_job [prepare], settings as JSON in
CATDOG_RETRAIN_SETTINGS (not on the command line, where `ps` would show the admin token) and its recipe in
CATDOG_RETRAIN_CONFIG. It prints one JSON object a line: {"stage", "done", "total"} while it works, {"log": …} for
notes, {"result": …} or {"error": …} at the end. `prepare` only embeds the base data and the trusted photos with
production's backbone into the cache, so that the next retraining finds them there, and measures every servable
version on the trusted photos (catdog_model.scores) for the Versions table. The server's side is
catdog_model.retraining."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from typing import Callable

import numpy as np

from .config import Settings, TrainingConfig
from .errors import ServiceError
from .data import Example, deduplicate
from .embeddings import ticking
from .finetune import FineTuneConfig
from .images import ImageLimits
from .retrain_data import trusted_examples, training_dataset
from .scores import kept_score, note_trusted_set, scored, trusted_signature, version_id
from .uploads import UploadStore

logger = logging.getLogger(__name__)
TRAINING_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "matplotlib")  # requirements-train.txt
CHILD_NICENESS = 10  # the server's requests come first: a retraining takes the cores they leave


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """What one retraining from the app does; the child receives it (tests make it small)."""

    training: TrainingConfig = TrainingConfig()
    fine_tuning: FineTuneConfig | None = None  # None: a new head on production's backbone (seconds)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RetrainConfig":
        """The fields given, over the defaults: '{"training": {"epochs": 5}}' changes the epochs alone."""
        values = json.loads(text)
        return cls(TrainingConfig(**values.get("training", {})),
                   values.get("fine_tuning") and FineTuneConfig(**values["fine_tuning"]))

    @classmethod
    def from_settings(cls, settings: Settings) -> "RetrainConfig":
        """CATDOG_RETRAIN_RECIPE over the defaults, or a sentence saying how to write it."""
        if not settings.retrain_recipe:
            return cls()
        try:
            return cls.from_json(settings.retrain_recipe)
        except (ValueError, TypeError, AttributeError, ServiceError) as error:
            raise ServiceError(f"CATDOG_RETRAIN_RECIPE is not a recipe ({error}): write JSON such as "
                               '{"training": {"epochs": 20}, "fine_tuning": {"blocks": 4}}, with the fields of '
                               "TrainingConfig and FineTuneConfig (docs/configuration.md).") from None


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
    backbone as its export runs it (no TensorFlow), into the embedding cache; then score the versions."""
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
    embedded = (cache.count(served.spec.id) - before) // len(config.views)
    if trusted:
        note_trusted_set(settings.cache_dir, trusted)
    return {"embedded": embedded, "scored": score_versions(hub, settings, trusted, cache, progress, emit)}


def score_versions(hub, settings: Settings, trusted: list[Example], cache, progress,
                   emit: Callable[[dict], None]) -> list[str]:
    """Measure every servable version not yet measured on the trusted photos (production first), each with its
    own backbone as its export runs it and its head in numpy: the Versions table's comparable figures. The
    versions measured now; one that cannot be measured is logged and passed over."""
    from .explain import Head
    from .served_backbone import ServedBackbone
    from .serving import ModelLoadError

    if not trusted:
        return []
    production, measured, signature = hub.production(), [], trusted_signature(trusted)
    for version in sorted(hub.versions(), key=lambda name: name != production):
        try:
            folder = hub.download(version)
            if kept_score(settings.cache_dir, version_id(folder), signature) is not None:
                continue
            backbone = ServedBackbone(folder, settings.backbone_batch_size)
            scored(settings.cache_dir, folder, trusted, lambda: measured_on(
                version, backbone, Head.load(folder), trusted, cache,
                lambda stage, done, total: progress(f"scoring {version}", done, total)))
            measured.append(version)
        except ModelLoadError:  # no serving export: nothing to measure it with here
            continue
        except Exception as error:  # the Hub, a damaged file, photos that no longer decode: the next version
            emit({"log": f"{version} could not be measured on the trusted photos: {error}"})
    return measured


def measured_on(version: str, backbone, head, trusted: list[Example], cache, progress) -> dict:
    """The metrics of `head` on `backbone`'s embeddings of the trusted photos (mirror-averaged where the
    version's export is)."""
    from .evaluation import compute_metrics
    from .training import embed_examples

    views = ("original", "flipped") if backbone.tta else ("original",)
    embeddings, kept, _ = embed_examples(backbone, trusted, cache, views, progress)
    p_dog = np.mean([head.p_dog(embeddings[view]) for view in views], axis=0)
    return {"version": version, **compute_metrics([example.label for example in kept], p_dog)}


def run(settings: Settings, plan: RetrainConfig, emit: Callable[[dict], None]) -> dict:
    """Train on base data + uploads — a new head on production's backbone, or with plan.fine_tuning a
    fine-tuned model — publish it, compare it with production on the trusted photos, decide."""
    progress = progress_to(emit)
    with ticking(progress, "reading data"):
        from .classifier import Classifier, load_classifier
        from .evaluation import compute_metrics
        from .gate import promotion_gate
        from .hub import open_hub
        from .training import embed_examples, embedding_cache, publish, refuse_too_few_images, train

        config = plan.training
        hub = open_hub(settings)
        production = hub.production()
        served = served_backbone(hub, production, settings, emit)
        uploads = UploadStore(settings.data_dir / "uploads", ImageLimits.from_settings(settings))
        trusted = trusted_examples(settings, config.seed, config.validation_fraction, config.test_fraction)
        dataset = training_dataset(settings, uploads, trusted)
    counts = dataset.counts()
    refuse_too_few_images(dataset)  # before seconds of loading Keras
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
    if trusted:
        note_trusted_set(settings.cache_dir, trusted)
    candidate_metrics = scored(settings.cache_dir, hub.download(version), trusted,
                               lambda: judged(trained.classifier)) if trusted else None
    production_metrics = scored(settings.cache_dir, hub.download(compared), trusted,
                                lambda: judged(production_model)) if trusted and production_model else None
    decision = promotion_gate(candidate_metrics and candidate_metrics["accuracy"],
                              production_metrics and production_metrics["accuracy"], len(trusted),
                              settings.gate_min_images, settings.promotion_tolerance, settings.gate_min_accuracy,
                              candidate_metrics and candidate_metrics["log_loss"],
                              production_metrics and production_metrics["log_loss"], settings.gate_log_loss_margin)
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


if __name__ == "__main__":
    main()
