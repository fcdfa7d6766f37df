"""Shared fixtures. Tests that need the ImageNet weights or the real photos skip, saying why, without them."""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import pytest

from catdog_model import LABELS
from catdog_model.backbone import BackboneUnavailable, WeightsSource
from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.data import load_folder
from tests.servers import free_port

SHARED = PROJECT_ROOT.parent / "shared"
PHOTOS_DIR = Path(os.environ.get("CATDOG_TEST_PHOTOS", SHARED / "data" / "cats_vs_dogs"))
WEIGHTS_DIR = Path(os.environ.get("CATDOG_WEIGHTS_DIR", SHARED / "weights"))


def _weights_reason() -> str | None:
    os.environ.setdefault("CATDOG_OFFLINE", "1")  # tests never download
    os.environ.setdefault("CATDOG_WEIGHTS_DIR", str(WEIGHTS_DIR))  # for the app and programs that tests start
    try:
        WeightsSource(WEIGHTS_DIR, offline=True).locate(0.5)
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


def random_jpeg(seed: int, side: int = 32) -> bytes:
    """A small JPEG of noise, different for each seed."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def serve_in_thread(app, port: int | None = None):
    """Run an ASGI app with uvicorn on a loopback port (a free one unless given); returns (url, stop)."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(timeout=10)

    return f"http://127.0.0.1:{server.config.port}", stop


HUB_TOKEN = "hf_test_token"


@pytest.fixture(scope="session")
def hub_server():
    """The Hub-protocol test server on loopback: (endpoint URL, its state)."""
    from tests.hub_server import create_hub_app

    app, state = create_hub_app(token=HUB_TOKEN)
    url, stop = serve_in_thread(app)
    yield url, state
    stop()


@pytest.fixture
def hf_env(hub_server, tmp_path, monkeypatch):
    """Point this process's huggingface_hub at the test server, with a private cache."""
    from huggingface_hub import constants

    url, _ = hub_server
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    return {"HF_ENDPOINT": url, "HF_HUB_CACHE": str(tmp_path / "hf-cache"), "HF_TOKEN": HUB_TOKEN}


@pytest.fixture(scope="module")
def server(tmp_path_factory, cache_dir):
    """The app on a real loopback server, with a private copy of the shipped models and admin token s3cret."""
    import shutil

    from app import build_app
    from catdog_model.service import Service

    root = tmp_path_factory.mktemp("app")
    shutil.copytree(shipped_models(), root / "models", ignore=shutil.ignore_patterns(".lock"))
    settings = dataclasses.replace(Settings.from_env(), weights_dir=WEIGHTS_DIR, models_dir=root / "models",
                                   data_dir=root / "data", cache_dir=cache_dir, admin_token="s3cret")
    service = Service(settings)
    url, stop = serve_in_thread(build_app(service))
    yield url + "/", service
    stop()


# In shipped_models(): the exports of v1 and v2, published after the repository's versions; this one is servable
# besides production.
OTHER_VERSION = f"v{len(list((PROJECT_ROOT / 'models' / Settings.from_env().model_name).glob('v*'))) + 1}"
_prepared: list[Path] = []


def shipped_models() -> Path:
    """A copy of the repository's models/ where, besides production, v1 and v2 are servable too: their
    serving exports are published as the next two versions (OTHER_VERSION and the one after, as
    `python -m training.export` does), and production is promoted back last, so a rollback reaches the second.
    Built once per test run."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from catdog_model.hub import LocalHub

    if not _prepared:
        root = Path(tempfile.mkdtemp(prefix="catdog-shipped-")) / "models"
        shutil.copytree(PROJECT_ROOT / "models", root, ignore=shutil.ignore_patterns(".lock"))
        env = {**os.environ, "CATDOG_MODELS_DIR": str(root), "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR),
               "CATDOG_OFFLINE": "1", "CATDOG_DATA_DIR": str(root.parent / "data"), "PYTHONPATH": str(PROJECT_ROOT)}
        for version in ("v1", "v2"):
            subprocess.run([sys.executable, "-m", "training.export", "--version", version], env=env, check=True,
                           capture_output=True, cwd=PROJECT_ROOT)
        hub = LocalHub(root, Settings.from_env().model_name)
        production = hub.production()
        for version in (*hub.versions()[-2:], production):
            hub.promote(version)
        _prepared.append(root)
    return _prepared[0]
