"""Benchmark a version (default: production) in process: prediction latency and throughput of the Keras model
and of its serving export (one ONNX Runtime thread, as the app runs it), embedding throughput, training time
with an empty and a warm embedding cache, and peak memory.

    python -m bench.benchmark [--json]
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


def time_predictions(model, photos: list[bytes], repeats: int, prefix: str) -> dict[str, float]:
    """p50 and p95 of one photo at a time, and images per second in batches of 32, after a warm-up."""
    model.predict(photos[:32])
    latencies = []
    for index in range(repeats):
        started = time.perf_counter()
        model.predict_one(photos[index % len(photos)])
        latencies.append(time.perf_counter() - started)
    started, rounds = time.perf_counter(), 4
    for _ in range(rounds):
        model.predict(photos[:32])
    return {f"{prefix}_one_p50_ms": percentile_ms(latencies, 50), f"{prefix}_one_p95_ms": percentile_ms(latencies, 95),
            f"{prefix}_batch32_images_per_s": round(rounds * 32 / (time.perf_counter() - started), 1)}


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

        serving = ServingModel.load(hub.download(classifier.version), classifier.version)  # as the app serves it
        for prefix, model in (("predict", classifier), ("serve", serving)):
            results.update(time_predictions(model, photos, arguments.repeats, prefix))
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
