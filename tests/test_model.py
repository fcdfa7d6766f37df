"""The real model: train on real photos, publish, load, predict; the shipped production model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from catdog_model.backbone import BackboneSpec, BackboneUnavailable, WeightsSource
from catdog_model.data import load_folder, split_examples, version_splits
from catdog_model.embeddings import EmbeddingCache, embed_images
from catdog_model.errors import ServiceError
from catdog_model.classifier import load_classifier
from catdog_model.hub import LocalHub, open_hub
from catdog_model.version_metrics import read_metrics
from catdog_model.images import InvalidImage
from catdog_model.config import Settings
from catdog_model.training import TrainingConfig, embed_examples, embedding_cache, publish, train
from tests.conftest import PHOTOS_DIR, requires_photos, requires_weights, shipped_models

pytestmark = [pytest.mark.heavy, requires_weights]  # Keras, TensorFlow and exports
SMALL = TrainingConfig(seed=5, epochs=15, image_size=160)  # small and quick; the shipped model uses the defaults


def test_weights_are_found_and_verified_in_the_weights_dir(tmp_path, monkeypatch, settings):
    assert WeightsSource.from_settings(settings).locate(0.5).parent == settings.weights_dir
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.delenv("CATDOG_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface_hub's switch turns downloads off too
    monkeypatch.setenv("CATDOG_WEIGHTS_DIR", str(tmp_path))
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_224_no_top.h5"
    with pytest.raises(BackboneUnavailable, match=f"{name}.*downloads are off.*CATDOG_WEIGHTS_DIR"):
        WeightsSource.from_settings(Settings.from_env()).locate(0.5)
    (tmp_path / name).write_bytes(b"not the weights")
    with pytest.raises(BackboneUnavailable, match=f"{name} has sha256 .*expected 279052de"):
        WeightsSource(tmp_path, offline=True).locate(0.5)


def test_backbone_identity_follows_its_configuration():
    ids = {BackboneSpec.for_alpha(0.5).id, BackboneSpec.for_alpha(0.35).id, BackboneSpec.for_alpha(0.5, 160).id}
    assert len(ids) == 3
    with pytest.raises(BackboneUnavailable, match="Alpha 1.0 is not supported"):
        BackboneSpec.for_alpha(1.0)


@pytest.fixture(scope="module")
def small_trained(small_photo_dir, cache_dir, tmp_path_factory):
    from tests.conftest import WEIGHTS_DIR

    settings = dataclasses.replace(Settings.from_env(), weights_dir=WEIGHTS_DIR, cache_dir=cache_dir,
                                   models_dir=tmp_path_factory.mktemp("models"))
    dataset = load_folder(small_photo_dir)
    trained = train(dataset, settings, SMALL, source=str(small_photo_dir))
    hub = open_hub(settings)
    version = publish(trained, hub, settings.model_name)
    hub.promote(version)
    return settings, dataset, trained, hub


def test_training_on_real_photos_gives_a_version_that_loads_and_predicts(small_trained):
    settings, dataset, trained, hub = small_trained
    assert hub.production() == "v1"
    metrics = read_metrics(hub)
    assert metrics["data"]["splits"] == {"train": 42, "validation": 6, "test": 12}
    assert metrics["data"]["content_hash"] == dataset.content_hash()
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["training"]["epochs_run"] >= 1
    card = (hub.repo / "v1" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: keras" in card and "model-index:" in card
    assert "python -m catdog evaluate" in card
    classifier = load_classifier(hub, "production", settings)
    assert classifier.version == "v1" and classifier.spec.image_size == 160
    splits = split_examples(dataset.examples, SMALL.seed)
    predictions = classifier.predict([example.data for example in splits.train])
    training_accuracy = np.mean([p.label == example.label for p, example in zip(predictions, splits.train)])
    assert training_accuracy >= 0.9
    assert all(abs(p.p_cat + p.p_dog - 1) < 1e-6 and p.version == "v1" for p in predictions)


def test_same_seed_gives_the_same_model(small_trained, small_photo_dir):
    settings, dataset, trained, _ = small_trained
    again = train(dataset, settings, SMALL)
    for first, second in zip(trained.classifier.head.get_weights(), again.classifier.head.get_weights()):
        np.testing.assert_array_equal(first, second)
    assert again.metrics["training"]["images_embedded"] == 0  # everything came from the cache


def test_predict_matches_the_cached_embedding_path(small_trained):
    settings, dataset, trained, hub = small_trained
    classifier = load_classifier(hub, "v1", settings)
    examples = dataset.examples[:10]
    direct = np.array([p.p_dog for p in classifier.predict([example.data for example in examples])])
    embeddings, _, _ = embed_examples(classifier.backbone, examples, embedding_cache(settings), classifier.views())
    np.testing.assert_allclose(direct, classifier.p_dog_from_embeddings(embeddings), atol=1e-4)
    one_at_a_time = [classifier.predict(example.data)[0].p_dog for example in examples]
    np.testing.assert_allclose(direct, one_at_a_time, atol=1e-5)


def test_bad_images_are_rejected_by_predict_and_reported_by_training(small_trained, tmp_path):
    settings, dataset, _, hub = small_trained
    classifier = load_classifier(hub, "v1", settings)
    with pytest.raises(InvalidImage, match="empty"):
        classifier.predict(b"")
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    good = dataset.examples[0]
    arrays, rejected = embed_images(classifier.backbone, [(good.sha256, good.data), ("bad", b"GIF89a broken")],
                                    cache, ("original",))
    assert arrays["original"].shape == (1, classifier.backbone.dim)
    assert list(rejected) == ["bad"] and "not an image" in rejected["bad"]
    assert cache.count(classifier.spec.id) == 1


def test_too_few_images_is_a_clear_error(small_photo_dir, settings):
    dataset = load_folder(small_photo_dir)
    dataset.examples = [example for example in dataset.examples if example.label == "dog"][:20]
    with pytest.raises(ValueError, match="at least 5 images of each class"):
        train(dataset, settings, SMALL)


def test_training_from_a_datasets_imagefolder(small_photo_dir, settings):
    from catdog_model.data import load_hf_dataset

    trained = train(load_hf_dataset(str(small_photo_dir)), settings, SMALL)
    assert trained.metrics["data"]["n_images"] == 60


@requires_photos
def test_the_shipped_production_model_is_right_on_photos_it_never_saw(settings):
    shipped = LocalHub(shipped_models(), settings.model_name)
    if shipped.production() is None:
        pytest.skip("no shipped model in models/")
    metrics = read_metrics(shipped)
    classifier = load_classifier(shipped, "production", settings)
    test_split = version_splits(load_folder(PHOTOS_DIR).examples, metrics["data"]).test
    sample = test_split[::10]  # 50 of the held-out photos, both classes
    predictions = classifier.predict([example.data for example in sample])
    accuracy = np.mean([p.label == example.label for p, example in zip(predictions, sample)])
    assert accuracy >= 0.94
    # Trained on more folders than PHOTOS_DIR, the version's test split holds these photos and others.
    assert metrics["test"]["accuracy"] >= 0.98 and metrics["test"]["n_images"] >= len(test_split)


@requires_photos
def test_a_version_run_at_a_larger_input_keeps_its_own_weights(settings):
    shipped = LocalHub(shipped_models(), settings.model_name)
    classifier = load_classifier(shipped, "production", settings)
    sample = version_splits(load_folder(PHOTOS_DIR).examples, read_metrics(shipped)["data"]).test[::25]
    photos = [example.data for example in sample]
    same = classifier.at_image_size(classifier.image_size)
    np.testing.assert_allclose([p.p_dog for p in same.predict(photos)], [p.p_dog for p in classifier.predict(photos)],
                               atol=1e-5)
    larger = classifier.at_image_size(classifier.image_size + 64)
    assert larger.image_size == classifier.image_size + 64 and larger.spec.id != classifier.spec.id  # cached apart
    assert np.mean([p.label == example.label for p, example in zip(larger.predict(photos), sample)]) >= 0.9


def test_evaluate_refuses_an_image_size_no_backbone_can_run(capsys):
    from catdog_model.cli_evaluate import parse_arguments

    for size in ("0", "16", "-5", "100000", "big"):
        with pytest.raises(SystemExit):
            parse_arguments(["--data-dir", "photos", "--image-size", size])
        assert f"'{size}' is not a size from 32 to 1024 pixels" in capsys.readouterr().err
    assert parse_arguments(["--data-dir", "photos", "--image-size", "352"]).image_size == 352


def test_the_head_is_fitted_on_the_training_split_only(small_trained):
    settings, dataset, trained, hub = small_trained
    splits = split_examples(dataset.examples, SMALL.seed, SMALL.validation_fraction, SMALL.test_fraction)
    held_out = {example.sha256 for example in splits.validation + splits.test}
    assert sorted(trained.fitted_sha256) == sorted(example.sha256 for example in splits.train)
    assert held_out and not held_out & set(trained.fitted_sha256)


def test_a_version_with_any_file_changed_is_refused(small_trained, tmp_path):
    import json
    import shutil

    from catdog_model.classifier import Classifier, ModelLoadError

    settings, _, _, hub = small_trained
    original = hub.download("v1")
    listed = json.loads((original / "config.json").read_text())["files"]
    assert {"head.weights.h5", "novelty.npz", "metrics.json", "history.json", "confusion_matrix.png"} <= set(listed)
    for name in [*listed, "config.json"]:
        copy = tmp_path / name
        shutil.copytree(original, copy)
        (copy / name).chmod(0o644)
        if name == "config.json":  # the file that holds the hashes: changing one of them is caught too
            (copy / name).write_text((copy / name).read_text().replace(listed["novelty.npz"], "0" * 64))
        else:
            (copy / name).write_bytes((copy / name).read_bytes() + b" ")
        with pytest.raises(ModelLoadError, match="does not match the sha256"):
            Classifier.load(copy, WeightsSource.from_settings(settings))


def test_a_fine_tuned_version_carries_the_whole_model_and_serves_like_keras(small_photo_dir, settings):
    import json

    from catdog_model.finetune import FineTuneConfig
    from catdog_model.serving import ServingModel

    dataset = load_folder(small_photo_dir)
    trained = train(dataset, settings, SMALL, source=str(small_photo_dir),
                    fine_tuning=FineTuneConfig(blocks=1, epochs=1, batch_size=16))
    assert trained.classifier.spec.fine_tuned and trained.metrics["training"]["fine_tuning"]["epochs_run"] == 1
    assert trained.classifier.spec.id != BackboneSpec.for_alpha(SMALL.alpha, SMALL.image_size).id
    hub = open_hub(settings)
    version = publish(trained, hub, settings.model_name)
    folder = hub.download(version)
    config = json.loads((folder / "config.json").read_text())
    assert {"model.keras", "model.onnx", "novelty.npz"} <= set(config["files"])
    assert config["backbone"]["fine_tuned"] == trained.classifier.spec.fine_tuned
    assert "each drawn apart" in (folder / "README.md").read_text(), "its card describes the augmentation it had"
    photos = [path.read_bytes() for path in sorted((small_photo_dir / "dogs").iterdir())[:4]]
    reloaded = load_classifier(hub, version, dataclasses.replace(settings, weights_dir=None))  # no ImageNet file
    served = ServingModel.load(folder, version)
    expected = [prediction.p_dog for prediction in trained.classifier.predict(photos)]
    for model in (reloaded, served):
        assert np.allclose([prediction.p_dog for prediction in model.predict(photos)], expected, atol=1e-4)


def small_classifier(settings):
    """An untrained head on ImageNet's backbone at 96 px: fine-tuning it takes seconds."""
    from catdog_model.backbone import Backbone
    from catdog_model.classifier import Classifier, HeadConfig, build_head

    backbone = Backbone(BackboneSpec.for_alpha(0.5, 96), WeightsSource.from_settings(settings), batch_size=8)
    head_config = HeadConfig(embedding_dim=backbone.dim)
    return Classifier(backbone, build_head(head_config), head_config)


def cats_and_dogs(small_photo_dir) -> tuple[list, list]:
    photos = load_folder(small_photo_dir).examples
    return [example for example in photos if example.label == "cat"], [example for example in photos if example.label == "dog"]


def test_fine_tuning_augments_each_photo_apart_and_draws_crop_mirror_and_contrast_independently():
    from catdog_model.finetune import FineTuneConfig, augmented_stream

    size, copies = 20, 64
    config = FineTuneConfig(batch_size=copies, rotation=0.0, contrast=0.1)  # no rotation: each draw can be read back
    margin = int(round(size * (1 + config.crop_margin)))
    photo = np.random.default_rng(0).integers(64, 192, (margin, margin, 3)).astype(np.uint8)  # no clipping
    photos, _ = next(iter(augmented_stream(np.repeat(photo[np.newaxis], copies, axis=0), np.zeros(copies, np.float32),
                                           size, config, seed=3)))

    def drawn(output: np.ndarray) -> tuple[tuple[int, int], bool, float]:
        """The crop offset and mirroring that explain the output, and its contrast factor."""
        fits = []
        for top in range(margin - size + 1):
            for left in range(margin - size + 1):
                for mirrored in (False, True):
                    crop = photo[top:top + size, left:left + size].astype(float)
                    crop = crop[:, ::-1] if mirrored else crop
                    slope, _ = np.polyfit(crop.ravel(), output.astype(float).ravel(), 1)
                    error = np.abs(output - ((crop - crop.mean((0, 1))) * slope + crop.mean((0, 1)))).max()
                    fits.append((error, (top, left), mirrored, slope))
        error, offset, mirrored, factor = min(fits, key=lambda fit: fit[0])
        assert error <= 1, "each output is a crop of the photo, perhaps mirrored, with its contrast changed"
        return offset, mirrored, factor

    draws = [drawn(output) for output in np.asarray(photos)]
    assert len({offset for offset, _, _ in draws}) > 4, "photos in one batch are cropped at different places"
    sides = {(mirrored, factor > 1) for _, mirrored, factor in draws if abs(factor - 1) > 0.01}
    assert sides == {(False, False), (False, True), (True, False), (True, True)}, \
        "contrast is lowered as well as raised, on mirrored and unmirrored photos alike"


def test_fine_tuning_trains_the_top_blocks_but_leaves_batch_normalization_at_imagenet_values(small_photo_dir,
                                                                                             settings):
    import keras

    from catdog_model.backbone import build_backbone
    from catdog_model.finetune import FineTuneConfig, fine_tune

    spec = BackboneSpec.for_alpha(0.5, 96)
    classifier = small_classifier(settings)
    cats, dogs = cats_and_dogs(small_photo_dir)
    tuned, _ = fine_tune(classifier, cats[:4] + dogs[:4], cats[4:6] + dogs[4:6],
                         FineTuneConfig(blocks=2, epochs=1, batch_size=4), seed=0, weights=WeightsSource.from_settings(settings))

    def layers(model) -> dict:
        base = next(layer for layer in model.layers if isinstance(layer, keras.Model))
        return {layer.name: layer for layer in base.layers if layer.weights}

    before, after = layers(build_backbone(spec, WeightsSource.from_settings(settings))), layers(tuned.backbone.model)

    def changed(name: str) -> bool:
        return any(not np.array_equal(old, new) for old, new in zip(before[name].get_weights(),
                                                                     after[name].get_weights()))

    normalizations = [name for name, layer in after.items() if isinstance(layer, keras.layers.BatchNormalization)]
    assert any(name.startswith("block_16_") for name in normalizations)
    assert [name for name in normalizations if changed(name)] == []
    assert changed("block_16_project") and changed("block_15_expand") and changed("Conv_1")
    assert not changed("block_14_project")  # below the unfrozen blocks


def test_weight_averaging_keeps_the_mean_of_the_last_epochs_weights_only():
    import keras

    from catdog_model.finetune import _weight_averaging_callback

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    averaging = _weight_averaging_callback()(1)  # from the second epoch on
    averaging.set_model(model)
    for epoch, value in enumerate([1.0, 2.0, 4.0]):
        model.set_weights([np.full((2, 1), value, np.float32), np.full((1,), -value, np.float32)])
        averaging.on_epoch_end(epoch)
    kernel, bias = averaging.mean()
    assert np.allclose(kernel, 3.0) and np.allclose(bias, -3.0)


@pytest.mark.parametrize("options, message", [
    (dict(average_last=2), "average_last needs schedule cosine"),
    (dict(schedule="cosine", epochs=3, average_last=4), "average_last must be between 0 and the epochs"),
    (dict(schedule="step"), "schedule must be one of plateau, cosine, not 'step'"),
    (dict(label_smoothing=0.5), "label_smoothing must be at least 0 and below 0.5"),
    (dict(runs=0), "runs must be at least 1"),
    (dict(mixup=-0.2), "mixup must be a finite number, 0 \\(off\\) or more"),
    (dict(mixup=float("nan")), "mixup must be a finite number, 0 \\(off\\) or more"),
    (dict(mixup=float("inf")), "mixup must be a finite number, 0 \\(off\\) or more"),
    (dict(pull_to_start=-1.0), "pull_to_start must be a finite number, 0 \\(off\\) or more"),
    (dict(pull_to_start=float("nan")), "pull_to_start must be a finite number, 0 \\(off\\) or more"),
    (dict(pull_to_start=float("inf")), "pull_to_start must be a finite number, 0 \\(off\\) or more"),
])
def test_a_fine_tuning_recipe_that_cannot_work_is_refused_with_its_reason(options, message):
    from catdog_model.finetune import FineTuneConfig

    with pytest.raises(ServiceError, match=message):
        FineTuneConfig(**options)


@pytest.mark.parametrize("strength, rate, left", [
    (50.0, None, 1.0),  # 50 × Adam's 0.01: half-way back from 2 away
    (50.0, 0.005, 1.5),  # the rate as it is now (lowered on a plateau): a quarter of the way
    (200.0, None, 0.0),  # 2 × the distance would overshoot: all the way back, no further
])
def test_the_pull_to_start_moves_each_pulled_weight_back_by_its_share_of_the_distance_and_no_other(strength, rate,
                                                                                                  left):
    import keras

    from catdog_model.finetune import _pull_to_start_callback

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="backbone"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    backbone = model.get_layer("backbone")
    model.set_weights([np.ones((2, 2), np.float32), np.ones(2, np.float32), np.ones((2, 1), np.float32),
                       np.ones(1, np.float32)])
    pull = _pull_to_start_callback()(backbone.trainable_weights, strength)
    pull.set_model(model)
    if rate is not None:
        model.optimizer.learning_rate = rate
    model.set_weights([weight + 2 for weight in model.get_weights()])  # as a training step moved them
    pull.on_train_batch_end(0)
    kernel, bias, head_kernel, head_bias = model.get_weights()
    assert np.allclose(kernel, 1 + left) and np.allclose(bias, 1 + left)
    assert np.allclose(head_kernel, 3.0) and np.allclose(head_bias, 3.0)  # only the weights it was given


def test_a_full_pull_to_start_leaves_the_fine_tuned_backbone_where_it_started(small_photo_dir, settings):
    """L2-SP at its strongest (strength × learning rate = 1): every step is undone, so the trained blocks end as
    they began, in each run; the option reaches the training loop, and the head still learns."""
    from catdog_model.backbone import build_backbone
    from catdog_model.finetune import FineTuneConfig, fine_tune

    classifier = small_classifier(settings)
    start = build_backbone(BackboneSpec.for_alpha(0.5, 96), WeightsSource.from_settings(settings))
    config = FineTuneConfig(blocks=1, epochs=1, batch_size=4, runs=2)
    began = [np.array(weight) for weight in start.get_weights()]
    cats, dogs = cats_and_dogs(small_photo_dir)
    tuned, _ = fine_tune(classifier, cats[:4] + dogs[:4], cats[4:6] + dogs[4:6],
                         dataclasses.replace(config, pull_to_start=1 / config.learning_rate), seed=0,
                         weights=WeightsSource.from_settings(settings), start=start)
    assert all(np.allclose(before, after, rtol=0, atol=1e-6)
               for before, after in zip(began, tuned.backbone.model.get_weights()))
    assert any(not np.array_equal(before, after)
               for before, after in zip(classifier.head.get_weights(), tuned.head.get_weights()))


def test_mixup_blends_each_photo_and_its_label_by_the_same_weight_and_a_seed_repeats_it():
    import tensorflow as tf

    from catdog_model.finetune import mixed

    black, white = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)
    photos, labels = tf.constant(np.stack([black, white, black, white])), tf.constant([0.0, 1.0, 0.0, 1.0])
    blended, targets = mixed(photos, labels, 0.4, tf.constant([[7, 0], [7, 1]]))
    white_share = blended.numpy()[:, 0, 0, 0] / 255  # a black photo blended with a white one: its share shows
    assert np.allclose(white_share, targets.numpy(), atol=1 / 255)
    assert 0 < targets.numpy().min() and targets.numpy().max() < 1  # each one blended (Beta(0.4) draws no 0 or 1)
    again, _ = mixed(photos, labels, 0.4, tf.constant([[7, 0], [7, 1]]))
    other, _ = mixed(photos, labels, 0.4, tf.constant([[8, 0], [8, 1]]))
    assert np.array_equal(again.numpy(), blended.numpy()) and not np.array_equal(other.numpy(), blended.numpy())


def test_a_small_mixup_alpha_never_gives_a_nan_weight():
    import tensorflow as tf

    from catdog_model.finetune import mixed

    photos, labels = tf.zeros((4096, 1, 1, 3), tf.uint8), tf.constant([0.0, 1.0] * 2048)
    # In float32 a Gamma(0.01) draw would underflow to 0 about 1 time in 3, and a weight of 0 / 0 would be nan.
    _, targets = mixed(photos, labels, 0.01, tf.constant([[1, 0], [1, 1]]))
    assert np.isfinite(targets.numpy()).all()


def test_the_stream_blends_each_of_its_batches_with_weights_of_its_own_and_its_seed_repeats_them():
    from catdog_model.finetune import FineTuneConfig, augmented_stream

    rng = np.random.default_rng(0)
    photos, labels = rng.integers(0, 256, (40, 46, 46, 3), dtype=np.uint8), (np.arange(40) % 2).astype(np.float32)

    def batches(config):
        stream = iter(augmented_stream(photos, labels, 40, config, seed=1))
        return [tuple(part.numpy() for part in next(stream)) for _ in range(3)]

    plain, blended = batches(FineTuneConfig(batch_size=8)), batches(FineTuneConfig(batch_size=8, mixup=0.4))
    assert all(np.array_equal(one, other) for batch, again in zip(blended, batches(FineTuneConfig(batch_size=8,
               mixup=0.4))) for one, other in zip(batch, again))
    weights = []
    for (photo, label), (mixed_photo, mixed_label) in zip(plain, blended):  # mixup comes after the augmentation
        assert mixed_label.dtype == np.float32 and set(label.tolist()) <= {0.0, 1.0}
        partner = photo[::-1].astype(float)
        # Each photo's weight, read off a pixel where it and its partner differ most.
        at = np.abs(photo - partner).reshape(len(photo), -1).argmax(axis=1)
        pixel, other, mixed_pixel = (array.reshape(len(photo), -1)[range(len(photo)), at]
                                     for array in (photo.astype(float), partner, mixed_photo.astype(float)))
        weight = (mixed_pixel - other) / (pixel - other)
        assert np.allclose(mixed_label, weight * label + (1 - weight) * label[::-1], atol=0.02)
        weights.append(weight)
    assert not np.allclose(weights[0], weights[1], atol=0.02) and not np.allclose(weights[1], weights[2], atol=0.02)


def test_training_accuracy_under_mixup_counts_a_blended_photo_by_its_larger_share():
    from catdog_model.finetune import rounded_accuracy

    labels, p_dog = np.array([[0.73], [0.2], [0.9]], np.float32), np.array([[0.8], [0.1], [0.3]], np.float32)
    assert np.allclose(np.asarray(rounded_accuracy(labels, p_dog)).ravel(), [1, 1, 0])


def test_the_cosine_schedule_runs_every_epoch_and_measures_the_averaged_weights(small_photo_dir, settings):
    from catdog_model.finetune import FineTuneConfig, fine_tune

    classifier = small_classifier(settings)
    cats, dogs = cats_and_dogs(small_photo_dir)
    _, info = fine_tune(classifier, cats[:4] + dogs[:4], cats[4:6] + dogs[4:6],
                        FineTuneConfig(blocks=1, epochs=3, batch_size=4, patience=0, schedule="cosine",
                                       average_last=2, label_smoothing=0.1),
                        seed=0, weights=WeightsSource.from_settings(settings))
    assert info["epochs_run"] == 3  # no early stopping, whatever the patience
    assert len(info["history"]["averaged_val_loss"]) == 1


def test_fine_tuning_continues_from_the_backbone_it_is_given_not_from_imagenet(small_photo_dir, settings):
    """The app's fine-tuning starts from production's fine-tuned backbone: the layers it leaves frozen keep
    that backbone's weights."""
    import keras

    from catdog_model.backbone import build_backbone
    from catdog_model.finetune import FineTuneConfig, fine_tune

    spec = BackboneSpec.for_alpha(0.5, 96)
    classifier = small_classifier(settings)
    start = build_backbone(spec, WeightsSource.from_settings(settings))
    base = next(layer for layer in start.layers if isinstance(layer, keras.Model))
    kernel, *rest = base.get_layer("block_2_project").get_weights()
    base.get_layer("block_2_project").set_weights([kernel + 0.01, *rest])  # as an earlier fine-tuning left it
    cats, dogs = cats_and_dogs(small_photo_dir)
    tuned, _ = fine_tune(classifier, cats[:4] + dogs[:4], cats[4:6] + dogs[4:6],
                         FineTuneConfig(blocks=2, epochs=1, batch_size=4), seed=0, weights=WeightsSource.from_settings(settings),
                         start=start)
    tuned_base = next(layer for layer in tuned.backbone.model.layers if isinstance(layer, keras.Model))
    assert np.array_equal(tuned_base.get_layer("block_2_project").get_weights()[0], kernel + 0.01)


def test_several_fine_tuning_runs_become_one_model_the_mean_of_their_weights(small_photo_dir, settings):
    """Runs seeded apart from the same start (a model soup), as the app runs them: from production's fine-tuned
    backbone. The model is the mean of what each run alone gives (fine-tuning is repeatable: the same seed, the
    same weights), so every run began at the given backbone, not at ImageNet's; and each run's validation loss
    and the mean's are recorded."""
    import keras

    from catdog_model.backbone import build_backbone
    from catdog_model.finetune import FineTuneConfig, fine_tune

    cats, dogs = cats_and_dogs(small_photo_dir)
    classifier = small_classifier(settings)
    config = FineTuneConfig(blocks=1, epochs=1, batch_size=4, learning_rate=1e-3)  # a rate at which seeds tell

    def production_backbone():
        """A private copy each time (fine-tuning trains it in place), with a frozen layer as an earlier
        fine-tuning left it."""
        start = build_backbone(classifier.backbone.spec, WeightsSource.from_settings(settings))
        base = next(layer for layer in start.layers if isinstance(layer, keras.Model))
        kernel, *rest = base.get_layer("block_2_project").get_weights()
        base.get_layer("block_2_project").set_weights([kernel + 0.01, *rest])
        return start

    def tuned(seed: int, runs: int = 1):
        model, info = fine_tune(classifier, cats[:4] + dogs[:4], cats[4:6] + dogs[4:6],
                                dataclasses.replace(config, runs=runs), seed=seed,
                                weights=WeightsSource.from_settings(settings), start=production_backbone())
        return model.backbone.model.get_weights() + model.head.get_weights(), info

    first, again, second = (tuned(seed)[0] for seed in (5, 5, 6))
    assert all(np.array_equal(one, other) for one, other in zip(first, again))
    assert any(not np.array_equal(one, other) for one, other in zip(first, second))
    soup, info = tuned(5, runs=2)
    for mean, one, other in zip(soup, first, second):
        np.testing.assert_allclose(mean, (one.astype(np.float64) + other) / 2, atol=1e-6)
    assert info["epochs_run"] == 2 and len(info["history"]["runs"]) == 2
    assert all(loss > 0 for loss in info["history"]["runs_val_loss"] + info["history"]["soup_val_loss"])
