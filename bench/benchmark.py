"""Benchmark a version (default: production) in process: prediction latency and throughput of the Keras model
and of its serving export (one ONNX Runtime thread, as the app runs it) — float, and int8 where the version has
it —, with --test-data-dir the test split's accuracy of each export, embedding throughput, training time with an
empty and a warm embedding cache, and peak memory.

    python -m bench.benchmark [--json]
    python -m bench.benchmark --version v6 --skip-training \
        --test-data-dir ../shared/data/cats_vs_dogs --test-data-dir ../shared/data/cats_vs_dogs_more
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from catdog_model.cli import user_errors
from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.data import load_folder
from catdog_model.classifier import load_classifier
from catdog_model.hub import open_hub
from catdog_model.version_metrics import read_metrics
from catdog_model.images import load_image
from catdog_model.serving import ServingModel
from catdog_model.training import train

DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data" / "cats_vs_dogs"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR) if DEFAULT_DATA_DIR.is_dir() else None,
                        help="real photos in cats/ and dogs/ (default: ../shared/data/cats_vs_dogs if present; "
                             "else generated JPEGs, and no training times)")
    parser.add_argument("--version", default="production", help="the version to time (default: production)")
    parser.add_argument("--repeats", type=int, default=100, help="single-image predictions to time")
    parser.add_argument("--skip-training", action="store_true", help="do not time training")
    parser.add_argument("--test-data-dir", action="append", default=[],
                        help="the folders the version was trained on: each export's accuracy on its test split")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    return parser.parse_args(argv)


def generated_jpegs(count: int) -> list[bytes]:
    from PIL import Image

    generator = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(generator.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buffer, "JPEG")
        images.append(buffer.getvalue())
    return images


def time_predictions(models: dict, photos: list[bytes], repeats: int) -> dict[str, float]:
    """For each {prefix: model}, p50 and p95 of one photo at a time, and images per second in batches of 32,
    after a warm-up; the models take turns photo by photo and batch by batch, so that a slow second on this
    machine slows each of them alike."""
    latencies: dict[str, list[float]] = {prefix: [] for prefix in models}
    batch_seconds = dict.fromkeys(models, 0.0)
    for model in models.values():
        model.predict(photos[:32])
    for index in range(repeats):
        for prefix, model in models.items():
            started = time.perf_counter()
            model.predict_one(photos[index % len(photos)])
            latencies[prefix].append(time.perf_counter() - started)
    rounds = 4
    for _ in range(rounds):
        for prefix, model in models.items():
            started = time.perf_counter()
            model.predict(photos[:32])
            batch_seconds[prefix] += time.perf_counter() - started
    results = {}
    for prefix in models:
        results.update({f"{prefix}_one_p50_ms": percentile_ms(latencies[prefix], 50),
                        f"{prefix}_one_p95_ms": percentile_ms(latencies[prefix], 95),
                        f"{prefix}_batch32_images_per_s": round(rounds * 32 / batch_seconds[prefix], 1)})
    return results


def test_accuracy(exports: dict, data_dirs: list[str], data: dict, settings) -> dict:
    """Each export's accuracy on the version's test split (cut as its training cut it), with a 95 % interval;
    with a float and an int8 export, how their answers differ there (labels agreeing, |Δ p(dog)|)."""
    from catdog_model.data import load_folders, version_splits
    from catdog_model.data_decisions import DataDecisions
    from catdog_model.quantize import agreement
    from catdog_model.reports import wilson_interval

    test = version_splits(DataDecisions(settings.data_dir).apply(load_folders(data_dirs)).examples, data).test
    results = {"test_images": len(test)}
    answers = {}
    for prefix, model in exports.items():
        answers[prefix] = p_dog = np.concatenate([
            model.run(np.stack([model.decode(example.content) for example in test[start:start + 32]]))[0]
            for start in range(0, len(test), 32)])
        right = int(sum((p >= 0.5) == (example.label == "dog") for p, example in zip(p_dog, test)))
        low, high = wilson_interval(right, len(test))
        results[f"{prefix}_test_accuracy"] = round(right / len(test), 4)
        results[f"{prefix}_test_accuracy_95"] = [round(low, 4), round(high, 4)]
    if {"serve", "serve_int8"} <= answers.keys():
        compared = agreement(answers["serve"], answers["serve_int8"])
        results.update({f"serve_int8_test_{name}": compared[name]
                        for name in ("agreement", "max_p_dog_difference", "mean_p_dog_difference")})
    return results


def percentile_ms(seconds: list[float], percent: float) -> float:
    return round(float(np.percentile(seconds, percent)) * 1000, 2)


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    results: dict = {"machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"}
    with user_errors():
        settings = Settings.from_env()
        started = time.perf_counter()
        hub = open_hub(settings)
        classifier = load_classifier(hub, arguments.version, settings)
        results["model_load_s"] = round(time.perf_counter() - started, 2)
        results["version"], results["tta"] = classifier.version, classifier.tta
        dataset = load_folder(arguments.data_dir) if arguments.data_dir else None
        photos = [example.data for example in dataset.examples[:256]] if dataset else generated_jpegs(256)
        results["images"] = "real photos" if dataset else "generated JPEGs"

        folder = hub.download(classifier.version)
        exports = {"serve": ServingModel.load(folder, classifier.version)}  # as the app serves it
        int8 = ServingModel.load(folder, classifier.version, precision="int8")
        if int8.precision == "int8":
            exports["serve_int8"] = int8
        results.update(time_predictions({"predict": classifier}, photos, arguments.repeats))
        results.update(time_predictions(exports, photos, arguments.repeats))
        if arguments.test_data_dir:
            split = read_metrics(hub, classifier.version)["data"]
            results.update(test_accuracy(exports, arguments.test_data_dir, split, settings))
        started = time.perf_counter()
        decoded = np.stack([load_image(data, size=classifier.spec.image_size) for data in photos])
        results["decode_images_per_s"] = round(len(photos) / (time.perf_counter() - started), 1)
        classifier.backbone.embed(decoded[:32])
        started = time.perf_counter()
        classifier.backbone.embed(decoded)
        results["embed_images_per_s"] = round(len(decoded) / (time.perf_counter() - started), 1)

        if dataset and not arguments.skip_training:
            with tempfile.TemporaryDirectory() as cache_dir:
                cold_settings = dataclasses.replace(settings, cache_dir=Path(cache_dir))
                for name in ("train_cold_s", "train_warm_s"):
                    started = time.perf_counter()
                    train(dataset, cold_settings)
                    results[name] = round(time.perf_counter() - started, 1)
            results["train_images"] = len(dataset.examples)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if arguments.json:
        print(json.dumps(results))
        return
    width = max(map(len, results))
    for name, value in results.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
