"""Phase 2 of transfer learning: unfreeze the top of the backbone and train it with the head, on augmented
photos, at a small learning rate, choosing the epoch on validation loss (Keras's transfer-learning recipe); or,
with the cosine schedule, for a fixed number of epochs, optionally averaging the last epochs' weights. Label
smoothing, mixup (photos blended in pairs, their labels alike) and L2-SP weight decay (the backbone pulled back
towards its starting weights) are options of either; so is running the whole fine-tuning several times from the
same start, each run seeded apart, and averaging the runs' weights (a uniform "model soup": one model, so no
more cost to serve).

BatchNormalization layers stay frozen and in inference mode: their statistics come from ImageNet, and a few
thousand photos in small batches would only make them noisier."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time

import numpy as np

from . import LABELS
from .backbone import Backbone, WeightsSource, build_backbone
from .classifier import Classifier
from .data import Example
from .config import option
from .embeddings import ProgressCallback, ticking
from .errors import ServiceError
from .images import InvalidImage, load_image

DECODE_PROGRESS_EVERY = 50
VALIDATION_BATCH_SIZE = 32
# MobileNetV2's 16 inverted-residual blocks are block_1 … block_16, then Conv_1; "the top N blocks" counts back.
LAST_BLOCK = 16
SCHEDULES = ("plateau", "cosine")
# Recorded with each fine-tuned version, so its card says which augmentation it had (card.augmentation_description).
AUGMENTATION_REVISION = 2


@dataclasses.dataclass(frozen=True)
class FineTuneConfig:
    blocks: int = option(8, "MobileNetV2 blocks unfrozen from the top (Conv_1 always), chosen on validation loss")
    epochs: int = option(8, "plateau: an upper bound, early stopping ends sooner; cosine: every epoch runs")
    batch_size: int = option(32, "photos per step")
    learning_rate: float = option(2e-5, "Adam's first learning rate; lowered as the schedule says")
    patience: int = option(2, "plateau: epochs without a lower validation loss before stopping")
    crop_margin: float = option(0.15, "photos are decoded this much larger and randomly cropped back")
    rotation: float = option(0.03, "largest random rotation, as a fraction of a full turn")
    contrast: float = option(0.1, "largest random contrast change")
    label_smoothing: float = option(0.0, "training targets pulled this far towards 0.5 (0: the labels as given)")
    mixup: float = option(0.0, "mixup: each training photo blended with another of its batch, and their labels "
                          "alike, by a weight drawn from Beta(this, this) (0: off; 0.2 is usual)")
    schedule: str = option("plateau", "plateau: the rate drops when validation loss stalls and training stops "
                           "early; cosine: the rate falls along a cosine to 0 over all the epochs",
                           choices=list(SCHEDULES))
    average_last: int = option(0, "cosine: the model is the mean of the weights after each of the last N "
                               "epochs (weight averaging; 0: the last epoch's weights)")
    runs: int = option(1, "fine-tune this many times from the same start (run k seeded with the seed + k) and "
                       "keep the mean of the runs' weights: a uniform model soup, one model to serve")
    pull_to_start: float = option(0.0, "L2-SP weight decay: after each step every trained backbone weight moves "
                                  "back towards its value when fine-tuning began by this times the learning "
                                  "rate (at most 1) of its distance (decoupled, as AdamW decays towards 0; 0: off)")

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.runs < 1:
            raise ServiceError("Fine-tuning epochs, batch size and runs must be at least 1.")
        if self.schedule not in SCHEDULES:
            raise ServiceError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}.")
        if not 0 <= self.label_smoothing < 0.5:
            raise ServiceError(f"label_smoothing must be at least 0 and below 0.5, not {self.label_smoothing}.")
        if not (self.mixup >= 0 and math.isfinite(self.mixup)):
            raise ServiceError(f"mixup must be a finite number, 0 (off) or more, not {self.mixup}.")
        if not (self.pull_to_start >= 0 and math.isfinite(self.pull_to_start)):
            raise ServiceError(f"pull_to_start must be a finite number, 0 (off) or more, not {self.pull_to_start}.")
        if not 0 <= self.average_last <= self.epochs:
            raise ServiceError(f"average_last must be between 0 and the epochs ({self.epochs}), "
                               f"not {self.average_last}.")
        if self.average_last and self.schedule != "cosine":
            raise ServiceError("average_last needs schedule cosine: early stopping would end the epochs it averages.")
        if not 0 <= self.blocks <= LAST_BLOCK:
            raise ServiceError(f"blocks must be between 0 and {LAST_BLOCK}, not {self.blocks}.")


def unfreeze_top(backbone_model, blocks: int) -> list[str]:
    """Make the top `blocks` blocks and Conv_1 trainable, BatchNormalization excepted; returns their names."""
    import keras

    base = next(layer for layer in backbone_model.layers if isinstance(layer, keras.Model))
    prefixes = tuple(f"block_{index}_" for index in range(LAST_BLOCK - blocks + 1, LAST_BLOCK + 1)) + ("Conv_1",)
    base.trainable = True
    unfrozen = []
    for layer in base.layers:
        layer.trainable = (layer.name.startswith(prefixes)
                           and not isinstance(layer, keras.layers.BatchNormalization))
        if layer.trainable and layer.weights:
            unfrozen.append(layer.name)
    return unfrozen


def augmented_stream(images: np.ndarray, labels: np.ndarray, size: int, config: FineTuneConfig, seed: int):
    """The training photos (uint8, decoded crop_margin larger) as an endless tf.data stream of batches of
    (photos of `size`, labels), reshuffled each pass; each photo randomly cropped, mirrored, rotated and changed
    in contrast, each drawn apart; with mixup, then blended in pairs within its batch, the labels becoming
    shares between 0 and 1. The same seed gives the same stream."""
    import keras
    import tensorflow as tf

    # A seed each: layers seeded alike draw the same number, so a photo would be mirrored exactly when it is
    # rotated one way and its contrast lowered. Contrast as a pair: Keras reads a single factor as "up to +f".
    augment = keras.Sequential([
        keras.layers.RandomCrop(size, size, seed=4 * seed),
        keras.layers.RandomFlip("horizontal", seed=4 * seed + 1),
        keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=4 * seed + 2),
        keras.layers.RandomContrast((config.contrast, config.contrast), seed=4 * seed + 3),
    ], name="augment")

    def augmented(photo, label):
        pixels = augment(tf.cast(photo, tf.float32), training=True)
        return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8), label

    # Endless, read steps_per_epoch batches an epoch: Keras then keeps one iterator for the whole fit — a new one
    # each epoch stood still for 10-60 s (the photos are a constant of the dataset's graph, copied again for each
    # iterator) — and every batch is full, so one trace serves. Each photo is augmented alone, before batching
    # (Keras's RandomCrop draws one offset per batch), and in order: a parallel map draws in a racy order.
    batches = (tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(images), seed=seed).repeat()
               .map(augmented).batch(config.batch_size))
    if config.mixup:
        batches = batches.enumerate().map(
            lambda index, batch: mixed(*batch, config.mixup, tf.stack([[seed, 2 * index], [seed, 2 * index + 1]])))
    return batches.prefetch(2)


def mixed(photos, labels, alpha: float, seeds):
    """Mixup (Zhang et al., 2018): each photo of the batch blended with the photo at the mirror position of the
    batch (with an odd batch size the middle photo keeps itself), by a weight w ~ Beta(alpha, alpha) of its own,
    and its label by the same w. Stateless draws from the two seeds (the stream's seed and the batch's index), so
    a stream is blended the same way each time."""
    import tensorflow as tf

    count = tf.shape(labels)[0]
    first, second = (tf.random.stateless_gamma([count], seed=seeds[draw], alpha=alpha) for draw in (0, 1))
    # Beta(alpha, alpha) from two Gammas. TensorFlow's draws are never 0 (they stop at the smallest normal
    # float32), so even a small alpha never makes this 0 / 0.
    weight = first / (first + second)
    pixels = (weight[:, None, None, None] * tf.cast(photos, tf.float32)
              + (1 - weight[:, None, None, None]) * tf.cast(photos[::-1], tf.float32))
    blended = tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), tf.uint8)
    return blended, weight * labels + (1 - weight) * labels[::-1]


def rounded_accuracy(labels, p_dog):
    """Keras's binary accuracy with each label first rounded to the class holding its larger share: Keras's own
    counts a hit only where a label is exactly 0 or 1, so it would miss every blended (mixup) photo."""
    import keras

    return keras.metrics.binary_accuracy(keras.ops.round(labels), p_dog)


def decode_all(examples: list[Example], size: int, progress: ProgressCallback | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[Example]]:
    """uint8 images (N, size, size, 3), labels (N,), and the examples that decoded."""
    images, labels, kept = [], [], []
    for index, example in enumerate(examples):
        if progress and index % DECODE_PROGRESS_EVERY == 0:
            progress("decoding", index, len(examples))
        try:
            images.append(load_image(example.data, size=size))
        except InvalidImage:
            continue
        labels.append(LABELS.index(example.label))
        kept.append(example)
    return np.stack(images), np.array(labels, dtype=np.float32), kept


def fine_tune(classifier: Classifier, train: list[Example], validation: list[Example], config: FineTuneConfig,
              seed: int, weights: WeightsSource, progress: ProgressCallback | None = None, start=None
              ) -> tuple[Classifier, dict]:
    """A new Classifier whose backbone's top is trained with the (phase-1) head; and what happened. start: a
    backbone (Keras model, a private copy) to continue from, as a version fine-tuned it; else ImageNet's."""
    import keras

    started = time.perf_counter()
    spec = classifier.spec
    size = spec.image_size
    keras.utils.set_random_seed(seed)
    # A fresh copy of the backbone: the shared frozen one keeps serving embeddings for other versions.
    backbone_model = start if start is not None else build_backbone(spec, weights)
    unfrozen = unfreeze_top(backbone_model, config.blocks)
    starting_backbone = backbone_model.get_weights()
    image = keras.Input((size, size, 3), dtype="uint8", name="image")
    model = head = None

    margin_size = int(round(size * (1 + config.crop_margin)))
    train_images, train_labels, _ = decode_all(train, margin_size, progress)
    validation_images, validation_labels, _ = decode_all(validation, size, progress)
    steps = -(-len(train_images) // config.batch_size)
    per_epoch = steps + -(-len(validation_images) // VALIDATION_BATCH_SIZE)

    def fit(run: int) -> dict:
        """One fine-tuning from the start, seeded by the seed + run, exactly as it would run alone with that
        seed: the head is made afresh after seeding, so even its dropout draws alike. Its history."""
        nonlocal model, head
        run_seed = seed + run
        keras.utils.set_random_seed(run_seed)
        if run:
            backbone_model.set_weights(starting_backbone)
        head = keras.models.clone_model(classifier.head)
        head.set_weights(classifier.head.get_weights())
        model = keras.Model(image, head(backbone_model(image)), name="catdog")
        train_data = augmented_stream(train_images, train_labels, size, config, run_seed)
        if config.schedule == "cosine":
            learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.epochs * steps)
            callbacks = []
        else:
            learning_rate = config.learning_rate
            callbacks = [
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience,
                                              restore_best_weights=True),
                keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1),
            ]
        averaging = (_weight_averaging_callback()(config.epochs - config.average_last) if config.average_last
                     else None)
        if averaging:
            callbacks.append(averaging)
        if config.pull_to_start:
            trained = [weight for weight in backbone_model.weights if weight.trainable]
            callbacks.append(_pull_to_start_callback()(trained, config.pull_to_start))
        # Compiled afresh each run: a new optimizer, so no run inherits another's moments or lowered rate.
        accuracy = keras.metrics.MeanMetricWrapper(rounded_accuracy, name="accuracy") if config.mixup else "accuracy"
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=keras.losses.BinaryCrossentropy(label_smoothing=config.label_smoothing),
                      metrics=[accuracy])
        if progress:  # batch by batch, each epoch's validation pass included: an epoch takes a minute or more
            callbacks.append(_batch_progress_callback()(progress, run * config.epochs * per_epoch, steps, per_epoch,
                                                        config.runs * config.epochs * per_epoch))
        fitted = model.fit(train_data, validation_data=(validation_images, validation_labels),
                           epochs=config.epochs, steps_per_epoch=steps, validation_batch_size=VALIDATION_BATCH_SIZE,
                           shuffle=False,  # the dataset shuffles itself
                           callbacks=callbacks, verbose=0)
        history = {key: [float(value) for value in values] for key, values in fitted.history.items()}
        if averaging:
            model.set_weights(averaging.mean())
            history["averaged_val_loss"] = [validation_loss()]
        return history

    def validation_loss() -> float:
        with ticking(progress, "measuring the validation loss"):
            return float(model.evaluate(validation_images, validation_labels, batch_size=VALIDATION_BATCH_SIZE,
                                        verbose=0)[0])

    runs, soup = [], None
    for run in range(config.runs):
        history = fit(run)
        runs.append({"history": history, "val_loss": validation_loss() if config.runs > 1 else None,
                     "epochs_run": len(history.get("loss", []))})
        if config.runs > 1:
            weights = [np.asarray(weight, dtype=np.float64) for weight in model.get_weights()]
            soup = weights if soup is None else [total + weight for total, weight in zip(soup, weights)]
    history = runs[0]["history"]
    if config.runs > 1:
        # BatchNormalization stays at ImageNet's statistics in every run, so the mean of the weights needs no
        # statistics recomputed: it is a model as it stands.
        model.set_weights([(total / config.runs).astype(np.float32) for total in soup])
        history = {"runs": [run["history"] for run in runs], "runs_val_loss": [run["val_loss"] for run in runs],
                   "soup_val_loss": [validation_loss()]}
    # The fine-tuned backbone gets an identity of its own, so no embedding cached for another backbone is used.
    digest = hashlib.sha256(b"".join(np.asarray(weight).tobytes() for weight in backbone_model.get_weights()))
    tuned_spec = dataclasses.replace(spec, fine_tuned=digest.hexdigest()[:16])
    tuned = Classifier(Backbone(tuned_spec, None, classifier.backbone.batch_size, model=backbone_model), head,
                       classifier.head_config, tta=classifier.tta, low_confidence=classifier.low_confidence,
                       limits=classifier.limits)
    return tuned, {"config": dataclasses.asdict(config), "augmentation": AUGMENTATION_REVISION,
                   "unfrozen_layers": len(unfrozen),
                   "epochs_run": sum(run["epochs_run"] for run in runs), "history": history,
                   "seconds": round(time.perf_counter() - started, 1)}


def _batch_progress_callback():
    import keras

    class BatchProgress(keras.callbacks.Callback):
        """Each batch, counted from `offset` of `total` (runs before this one included); and, until the first
        training and validation batches end, the seconds of Keras tracing its steps (tens of seconds on two busy
        cores, with no batch to count)."""

        def __init__(self, progress: ProgressCallback, offset: int, steps: int, per_epoch: int, total: int):
            super().__init__()
            self.progress, self.offset, self.steps, self.per_epoch, self.total = (progress, offset, steps,
                                                                                  per_epoch, total)
            self.epoch, self.tracing = 0, None

        def _trace(self, stage: str | None) -> None:
            if self.tracing:
                self.tracing.__exit__(None, None, None)
            self.tracing = stage and ticking(self.progress, stage)
            if self.tracing:
                self.tracing.__enter__()

        def _done(self, batch: int) -> None:
            self.progress("fine-tuning", self.offset + self.epoch * self.per_epoch + batch + 1, self.total)

        def on_train_begin(self, logs=None):
            self._trace("preparing the training step")

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            self._trace(None)
            self._done(batch)

        def on_test_begin(self, logs=None):
            if self.epoch == 0:
                self._trace("preparing the validation step")

        def on_test_batch_end(self, batch, logs=None):
            self._trace(None)
            self._done(self.steps + batch)

        def on_train_end(self, logs=None):
            self._trace(None)

    return BatchProgress


def _pull_to_start_callback():
    import keras

    class PullToStart(keras.callbacks.Callback):
        """L2-SP (Li, Grandvalet and Davoine, *Explicit Inductive Bias for Transfer Learning with Convolutional
        Networks*, 2018), decoupled from the gradient as AdamW decouples its decay: after each step, each of
        `variables` moves back towards its value when this fine-tuning began (ImageNet's, or the backbone's it
        continues from) by strength × the optimizer's learning rate (at most all the way) of its distance. The rate
        is read after the step: a schedule's, for the next step."""

        def __init__(self, variables, strength: float):
            super().__init__()
            self.variables, self.strength = list(variables), strength
            self.starts = [keras.ops.copy(variable.value) for variable in self.variables]

        def on_train_batch_end(self, batch, logs=None):
            # Once a step: fine_tune compiles with Keras's one step per execution (several would share one call).
            rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            share = min(1.0, self.strength * rate)
            for variable, start in zip(self.variables, self.starts):
                variable.assign(variable - share * (variable - start))

    return PullToStart


def _weight_averaging_callback():
    import keras

    class WeightAveraging(keras.callbacks.Callback):
        """The running mean of the model's weights at the end of each epoch from `first` (0-based) on."""

        def __init__(self, first: int):
            super().__init__()
            self.first, self.count, self.total = first, 0, None

        def on_epoch_end(self, epoch, logs=None):
            if epoch < self.first:
                return
            weights = [np.asarray(weight, dtype=np.float64) for weight in self.model.get_weights()]
            self.total = weights if self.total is None else [a + b for a, b in zip(self.total, weights)]
            self.count += 1

        def mean(self) -> list[np.ndarray]:
            return [(total / self.count).astype(np.float32) for total in self.total]

    return WeightAveraging


def embed_views(classifier: Classifier, examples: list[Example], views: tuple[str, ...],
                progress: ProgressCallback | None = None) -> dict[str, np.ndarray]:
    """Embeddings of each view ("original", "flipped") of the examples, by the classifier's own backbone."""
    from .backbone import flip_horizontal

    images, _, _ = decode_all(examples, classifier.spec.image_size, progress)
    step = classifier.backbone.batch_size
    embedded = {}
    for view in views:
        chunks = []
        for start in range(0, len(images), step):
            if progress:
                progress(f"embedding ({view})", start, len(images))
            batch = images[start:start + step]
            chunks.append(classifier.backbone.embed(flip_horizontal(batch) if view == "flipped" else batch))
        embedded[view] = np.concatenate(chunks) if chunks else classifier.backbone.embed(images)
    return embedded
