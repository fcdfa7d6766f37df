"""Fit a head on cached embeddings, evaluate it on held-out splits, and publish it as a new version."""

from __future__ import annotations

import dataclasses
import datetime
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from . import LABELS
from .backbone import Backbone, BackboneSpec, WeightsSource, get_backbone
from .card import render_model_card
from .classifier import Classifier, HeadConfig, build_head, save_version_files, seal_version_files
from .config import Settings, TrainingConfig
from .data import Dataset, Example, split_examples
from .embeddings import EmbeddingCache, ProgressCallback, embed_images, ticking
from .images import ImageLimits
from .errors import ServiceError
from .evaluation import compute_metrics, save_plots
from .export import export_onnx
from .finetune import FineTuneConfig, embed_views, fine_tune
from .hub import ModelHub
from .novelty import NoveltyDetector
from .served_backbone import ServedBackbone
from .layout import CONFIG_FILE, HISTORY_FILE, METRICS_FILE

MIN_IMAGES_PER_CLASS = 5
PUBLISHING_STEPS = 4  # the model's files, its export, metrics and plots, the hub
NOVELTY_SAMPLE = 1024  # training photos embedded again after fine-tuning, for the unfamiliar flag's reference


@dataclasses.dataclass
class TrainedModel:
    classifier: Classifier
    metrics: dict
    history: dict
    test_labels: list[str]
    test_p_dog: np.ndarray
    fitted_sha256: list[str]  # the images the head was fitted on: the training split only


def embedding_cache(settings: Settings) -> EmbeddingCache:
    return EmbeddingCache.in_folder(settings.cache_dir)


def embed_examples(backbone: Backbone, examples: list[Example], cache: EmbeddingCache | None,
                   views: tuple[str, ...], progress: ProgressCallback | None = None):
    """Embeddings of examples for each view, the examples that decoded, and {source: reason} for the rest."""
    arrays, rejected = embed_images(backbone, [(example.sha256, example.content) for example in examples], cache,
                                    views, progress)
    kept = [example for example in examples if example.sha256 not in rejected]
    reasons = {example.source: rejected[example.sha256] for example in examples if example.sha256 in rejected}
    return arrays, kept, reasons


def refuse_too_few_images(dataset: Dataset) -> None:
    counts = dataset.counts()
    if min(counts.values()) < MIN_IMAGES_PER_CLASS:
        raise ServiceError(f"Training needs at least {MIN_IMAGES_PER_CLASS} images of each class; "
                           f"this dataset has {counts['cat']} cats and {counts['dog']} dogs.")


def train(dataset: Dataset, settings: Settings, config: TrainingConfig = TrainingConfig(),
          progress: ProgressCallback | None = None, source: str = "", command: str = "",
          fine_tuning: FineTuneConfig | None = None, backbone: Backbone | ServedBackbone | None = None
          ) -> TrainedModel:
    """Phase 1: a head on cached frozen embeddings — of ImageNet's backbone, or of `backbone` (a version's,
    as its export runs it: the new head then goes on that version's backbone). With fine_tuning, phase 2 then
    trains the top of the backbone with that head on augmented photos; validation and test are then measured
    with the fine-tuned backbone."""
    refuse_too_few_images(dataset)
    import keras  # seconds: only once there is something to train
    started = time.perf_counter()
    splits = split_examples(dataset.examples, config.seed, config.validation_fraction, config.test_fraction)
    if isinstance(backbone, ServedBackbone):
        config = backbone.training_config(config)
    backbone = backbone or get_backbone(BackboneSpec.for_alpha(config.alpha, config.image_size), WeightsSource.from_settings(settings),
                                        settings.backbone_batch_size)
    cache = embedding_cache(settings)
    views = config.views
    cached_before = cache.count(backbone.spec.id)
    arrays, kept, rejected = embed_examples(backbone, splits.train + splits.validation + splits.test, cache,
                                            views, progress)
    embedding_seconds = time.perf_counter() - started
    position = {example.sha256: index for index, example in enumerate(kept)}

    def gather(examples: list[Example]) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
        present = [example for example in examples if example.sha256 in position]
        rows = [position[example.sha256] for example in present]
        return ({view: array[rows] for view, array in arrays.items()}, [example.label for example in present],
                [example.sha256 for example in present])

    train_views, train_labels, fitted_sha256 = gather(splits.train)
    validation_views, validation_labels, _ = gather(splits.validation)
    test_views, test_labels, _ = gather(splits.test)
    train_y = np.array([LABELS.index(label) for label in train_labels])
    train_x = train_views["original"]
    if config.augment:
        train_x, train_y = np.concatenate([train_x, train_views["flipped"]]), np.concatenate([train_y, train_y])
    validation_y = np.array([LABELS.index(label) for label in validation_labels])

    keras.utils.set_random_seed(config.seed)
    head_config = HeadConfig(embedding_dim=backbone.dim, hidden_units=config.hidden_units,
                             dropout_rate=config.dropout_rate)
    head = build_head(head_config)
    learning_rate = config.learning_rate
    if isinstance(backbone, ServedBackbone) and config.warm_start:
        # The version's head learnt from its own photos (thousands, with its fine-tuning): the new one starts
        # there and moves slowly, rather than forgetting them for the few hundred given here.
        head.set_weights(backbone.head().get_weights())
        learning_rate = config.warm_learning_rate
    head.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy", metrics=["accuracy"])
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=max(1, config.patience // 3)),
    ]
    if progress:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: progress("training", epoch + 1, config.epochs)))
    fit_started = time.perf_counter()
    warm = isinstance(backbone, ServedBackbone) and config.warm_start
    if warm:
        starting_weights = head.get_weights()
        starting_loss = head.evaluate(validation_views["original"], validation_y, verbose=0)[0]
    fitted = head.fit(train_x, train_y, validation_data=(validation_views["original"], validation_y),
                      epochs=config.epochs, batch_size=config.batch_size, class_weight=_class_weight(train_y),
                      callbacks=callbacks, verbose=0)
    # A version's head moves only where the new data lowers the validation loss; else it stays as it was.
    kept_starting_head = warm and min(fitted.history["val_loss"]) >= starting_loss
    if kept_starting_head:
        head.set_weights(starting_weights)
    fit_seconds = time.perf_counter() - fit_started

    classifier = Classifier(backbone, head, head_config, tta=config.tta == "on",
                            low_confidence=settings.low_confidence, limits=ImageLimits.from_settings(settings))
    if config.tta == "auto":
        # Averaging with the mirror image is kept only if it lowers the validation log loss.
        plain = classifier.p_dog_from_embeddings(validation_views, tta=False)
        mirrored = classifier.p_dog_from_embeddings(validation_views, tta=True)
        classifier.tta = bool(compute_metrics(validation_labels, mirrored)["log_loss"]
                              < compute_metrics(validation_labels, plain)["log_loss"])
    fine_tuned = None
    if fine_tuning:
        # What phase 1 alone reached, on the same photos, for the comparison in metrics.json.
        frozen = {"validation": compute_metrics(validation_labels, classifier.p_dog_from_embeddings(validation_views)),
                  "test": compute_metrics(test_labels, classifier.p_dog_from_embeddings(test_views))}
        present = {example.sha256 for example in kept}
        with ticking(progress, "loading the backbone to fine-tune"):
            start = backbone.keras_backbone() if isinstance(backbone, ServedBackbone) else None
        classifier, fine_tuned = fine_tune(
            classifier, [example for example in splits.train if example.sha256 in present],
            [example for example in splits.validation if example.sha256 in present], fine_tuning, config.seed,
            WeightsSource.from_settings(settings), progress, start)
        fine_tuned["frozen_backbone"] = frozen
        views = classifier.views()
        # The backbone changed, so every embedding is computed again with it (none from the frozen cache).
        train_views = embed_views(classifier, [example for example in splits.train if example.sha256 in present]
                                  [:NOVELTY_SAMPLE], views, progress)
        validation_views = embed_views(classifier, [example for example in splits.validation
                                                    if example.sha256 in present], views, progress)
        test_views = embed_views(classifier, [example for example in splits.test if example.sha256 in present],
                                 views, progress)
    classifier.novelty = NoveltyDetector.fit(train_views["original"], validation_views["original"], config.seed)
    test_p_dog = classifier.p_dog_from_embeddings(test_views)
    validation_p_dog = classifier.p_dog_from_embeddings(validation_views)
    classifier.novelty.reference["p_dog"] = np.asarray(validation_p_dog, dtype=np.float32)
    evaluated = {
        "validation": compute_metrics(validation_labels, validation_p_dog),
        "test": compute_metrics(test_labels, test_p_dog),
    }
    history = {key: [float(value) for value in values] for key, values in fitted.history.items()}
    if fine_tuned:
        history["fine_tuning"] = fine_tuned["history"]
    metrics = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "validation": evaluated["validation"],
        "test": evaluated["test"],
        "data": {
            "name": Path(source).name or "images", "source": source, "n_images": len(kept),
            "counts": {label: sum(example.label == label for example in kept) for label in LABELS},
            "n_duplicates": len(dataset.duplicates), "rejected": rejected, "decisions": dataset.decisions,
            "content_hash": dataset.content_hash(), "splits": splits.sizes(), "split_seed": config.seed,
            "validation_fraction": config.validation_fraction, "test_fraction": config.test_fraction,
        },
        "training": {
            "seed": config.seed, "epochs_run": len(history.get("loss", [])), "augment": config.augment,
            "kept_starting_head": kept_starting_head,
            "tta": classifier.tta, "config": dataclasses.asdict(config),
            "images_embedded": cache.count(backbone.spec.id) - cached_before,
            "embedding_seconds": round(embedding_seconds, 2), "fit_seconds": round(fit_seconds, 2),
            "seconds": round(time.perf_counter() - started, 2),
            **({"fine_tuning": {key: value for key, value in fine_tuned.items() if key != "history"}}
               if fine_tuned else {}),
        },
        "novelty": {
            "threshold": round(classifier.novelty.threshold, 4),
            "test_flagged_share": round(float(classifier.novelty.is_unfamiliar(test_views["original"]).mean()), 4),
        },
        "command": command,
    }
    return TrainedModel(classifier, metrics, history, test_labels, test_p_dog, fitted_sha256)


def _class_weight(labels: np.ndarray) -> dict[int, float] | None:
    """Balanced weights when one class has clearly more examples; None when they are about even."""
    counts = np.bincount(labels, minlength=2)
    if counts.min() >= 0.9 * counts.max():
        return None
    return {index: float(len(labels) / (2 * count)) for index, count in enumerate(counts)}


def publish(trained: TrainedModel, hub: ModelHub, model_name: str, progress: ProgressCallback | None = None
            ) -> str:
    """Write the trained model as the hub's next version; returns the version name."""
    def step(done: int) -> None:
        if progress:
            progress("publishing", done, PUBLISHING_STEPS)

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        classifier = trained.classifier
        step(0)
        if isinstance(classifier.backbone, ServedBackbone):  # a new head on a version's backbone
            classifier.backbone.write_version(folder, classifier.head, lambda: step(1))  # checked against the head
            save_version_files(folder, classifier.spec, classifier.head, classifier.head_config, classifier.tta,
                               classifier.novelty)
        else:
            # A fine-tuned backbone is no longer ImageNet's: the version carries the whole model. So does every
            # version on a remote hub, so that a Space starts without the ImageNet weights; the local hub, which
            # lives in git, holds the backbone's weights only when they are its own.
            classifier.save(folder, full_model=hub.remote or bool(classifier.spec.fine_tuned))
            step(1)
            with ticking(progress, "exporting"):  # tf2onnx: half a minute without steps to count
                export_onnx(classifier, folder)  # checked against Keras: a version never serves other answers
        step(2)
        (folder / METRICS_FILE).write_text(json.dumps(trained.metrics, indent=2) + "\n")
        (folder / HISTORY_FILE).write_text(json.dumps(trained.history, indent=2) + "\n")
        save_plots(trained.test_labels, trained.test_p_dog, folder, title="(test split)")
        step(3)
        version = push_version(folder, hub, model_name, trained.metrics)
        step(PUBLISHING_STEPS)
    trained.classifier.version = version
    return version


def push_version(folder: Path, hub: ModelHub, model_name: str, metrics: dict) -> str:
    """Seal a version's files (config.json lists each with its sha256) and push them, with their model card,
    as the hub's next version; its name."""
    seal_version_files(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    return hub.push(folder, write_card=lambda version: render_model_card(model_name, version, config, metrics))
