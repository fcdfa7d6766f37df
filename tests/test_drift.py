"""Drift, end to end: predictions go through the service into the prediction log, and the Metrics tab's
verdict compares them with the production version's validation photos."""

from __future__ import annotations

import dataclasses
import io
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from catdog_model.config import Settings
from catdog_model.data import load_folder, version_splits
from catdog_model.drift import MIN_RECENT
from catdog_model.service import Service
from catdog_model.version_metrics import read_metrics
from catdog_model.cli_novelty import package_photos
from tests.conftest import PHOTOS_DIR, WEIGHTS_DIR, requires_photos, shipped_models

STREAM = MIN_RECENT + 20


def make_service(start_service, root, cache_dir) -> Service:
    shutil.copytree(shipped_models(), root / "models", ignore=shutil.ignore_patterns(".lock"))
    service = start_service(dataclasses.replace(Settings.from_env(), weights_dir=WEIGHTS_DIR,
                                                models_dir=root / "models", data_dir=root / "data",
                                                cache_dir=cache_dir))
    model = service.serving_model
    if model is None or model.novelty is None or not model.novelty.reference:
        pytest.skip("the shipped production version keeps no validation reference")
    return service


def other_pictures(count: int) -> list[bytes]:
    """Pictures that are not pet photos: crops of the photos that ship inside the libraries (a person, a
    temple, a flower, a cheetah, …), noise and flat colours, each a little different."""
    chooser, generator = random.Random(0), np.random.default_rng(0)
    sources = [Image.open(path).convert("RGB") for path in package_photos()]
    pictures = []
    for index in range(count):
        if index % 4 == 3:
            pixels = generator.integers(0, 256, (96, 96, 3), dtype=np.uint8)
            picture = Image.fromarray(pixels if index % 8 == 3 else np.full_like(pixels, pixels[0, 0]))
        else:
            source = chooser.choice(sources)
            side = int(min(source.size) * chooser.uniform(0.5, 1.0))
            left, top = chooser.randint(0, source.width - side), chooser.randint(0, source.height - side)
            picture = source.crop((left, top, left + side, top + side))
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG")
        pictures.append(buffer.getvalue())
    return pictures


@requires_photos
def test_a_stream_of_real_photos_shows_no_drift(start_service, tmp_path, cache_dir):
    service = make_service(start_service, tmp_path, cache_dir)
    metrics = read_metrics(service.hub)
    held_out = version_splits(load_folder(PHOTOS_DIR).examples, metrics["data"]).test  # never trained on
    for example in held_out[::len(held_out) // STREAM][:STREAM]:
        service.predict(example.data)
    service.log.flush()

    report = service.dashboard.drift("hour")
    assert report["verdict"] == "no drift", report["sentence"]
    assert report["recent"] == STREAM and set(report["tests"]) == {"p_dog", "confidence", "novelty"}


def test_a_stream_of_other_pictures_is_called_drift(start_service, tmp_path, cache_dir):
    service = make_service(start_service, tmp_path, cache_dir)
    for picture in other_pictures(STREAM):
        service.predict(picture)
    service.log.flush()

    report = service.dashboard.drift("hour")
    assert report["verdict"] == "drift", report["sentence"]
    assert report["tests"]["novelty"]["drifted"]  # unfamiliar pictures: the unfamiliarity score moved
    assert report["sentence"].startswith(f"Drift: the last {STREAM} predictions")
