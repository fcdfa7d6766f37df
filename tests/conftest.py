"""Shared fixtures. Tests that need the ImageNet weights or the real photos skip, saying why, without them."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import pytest

from catdog_model import LABELS
from catdog_model.backbone import BackboneUnavailable, locate_weights
from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.data import load_folder

SHARED = PROJECT_ROOT.parent / "shared"
PHOTOS_DIR = Path(os.environ.get("CATDOG_TEST_PHOTOS", SHARED / "data" / "cats_vs_dogs"))
WEIGHTS_DIR = Path(os.environ.get("CATDOG_WEIGHTS_DIR", SHARED / "weights"))


def _weights_reason() -> str | None:
    os.environ.setdefault("CATDOG_OFFLINE", "1")  # tests never download
    try:
        locate_weights(0.5, WEIGHTS_DIR)
    except BackboneUnavailable as error:
        return f"ImageNet MobileNetV2 weights unavailable: {error}"
    return None


_missing_weights = _weights_reason()
requires_weights = pytest.mark.skipif(_missing_weights is not None, reason=_missing_weights or "")
requires_photos = pytest.mark.skipif(not PHOTOS_DIR.is_dir(),
                                     reason=f"real photos not found at {PHOTOS_DIR} (set CATDOG_TEST_PHOTOS)")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One embedding cache for the whole run: each photo is embedded once across all tests."""
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture
def settings(tmp_path, cache_dir) -> Settings:
    return dataclasses.replace(Settings.from_env(), weights_dir=WEIGHTS_DIR, models_dir=tmp_path / "models",
                               data_dir=tmp_path / "data", cache_dir=cache_dir)


@pytest.fixture
def env(tmp_path, cache_dir, monkeypatch) -> dict[str, str]:
    """Environment for the command-line programs: a private hub, the shared cache, the weights."""
    values = {"CATDOG_MODELS_DIR": str(tmp_path / "models"), "CATDOG_CACHE_DIR": str(cache_dir),
              "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR), "CATDOG_OFFLINE": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    return {**os.environ, **values}


@pytest.fixture(scope="session")
def small_photo_dir(tmp_path_factory) -> Path:
    """30 distinct real cats and 30 distinct real dogs, chosen by a fixed seed, in cats/ and dogs/."""
    if not PHOTOS_DIR.is_dir():
        pytest.skip(f"real photos not found at {PHOTOS_DIR}")
    root = tmp_path_factory.mktemp("small-photos")
    chooser = random.Random(7)
    examples = load_folder(PHOTOS_DIR).examples
    for label in LABELS:
        (root / f"{label}s").mkdir()
        for example in chooser.sample([example for example in examples if example.label == label], 30):
            (root / example.source).write_bytes(example.data)
    return root
