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
from catdog_model.hub import LocalHub, next_version
from bench.servers import Nginx, Postgres, ServerUnavailable, free_port

SHARED = PROJECT_ROOT.parent / "shared"
PHOTOS_DIR = Path(os.environ.get("CATDOG_TEST_PHOTOS", SHARED / "data" / "cats_vs_dogs"))
WEIGHTS_DIR = Path(os.environ.get("CATDOG_WEIGHTS_DIR", SHARED / "weights"))


def _weights_reason() -> str | None:
    try:
        WeightsSource(WEIGHTS_DIR, offline=True).locate(0.5)
    except BackboneUnavailable as error:
        return f"ImageNet MobileNetV2 weights unavailable: {error}"
    return None


_missing_weights = _weights_reason()
requires_weights = pytest.mark.skipif(_missing_weights is not None, reason=_missing_weights or "")
requires_photos = pytest.mark.skipif(not PHOTOS_DIR.is_dir(),
                                     reason=f"real photos not found at {PHOTOS_DIR} (set CATDOG_TEST_PHOTOS)")


# The app's retraining, small: a handful of epochs (the defaults run up to 60), fine-tuning one block for one epoch.
SMALL_RETRAIN_RECIPE = ('{"training": {"epochs": 8, "patience": 2}, '
                        '"fine_tuning": {"blocks": 1, "epochs": 1, "batch_size": 16}}')


# How long a test waits for a retraining to reach its end (or a stage): a safety net for a stuck one, far beyond
# the 20-60 s one takes here, because the child runs niced and on a busy machine gets only what others leave.
RETRAINING_SECONDS = 1800


@pytest.fixture(scope="session", autouse=True)
def offline(tmp_path_factory):
    """Tests never download: the app and the programs tests start read the weights from WEIGHTS_DIR; and their
    retrainings follow the small recipe unless a test says otherwise. The apps they start give open connections
    a second when they are stopped: a gradio_client's heartbeat, an open stream, would hold each stop for the
    default 10 s.

    Each test worker's Gradio servers keep uploads in the worker's own folder: Gradio files an upload under its
    content's hash, and a server that stops deletes the files it received, so another worker's server stopping
    would delete the same photo under a server that is about to read it."""
    _temporary.append(tmp_path_factory)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("CATDOG_OFFLINE", "1"), ("CATDOG_WEIGHTS_DIR", str(WEIGHTS_DIR)),
                            ("CATDOG_RETRAIN_RECIPE", SMALL_RETRAIN_RECIPE), ("CATDOG_SHUTDOWN_GRACE_SECONDS", "1")):
            patch.setenv(name, os.environ.get(name, value))
        patch.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio-files")))
        yield


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One embedding cache for the whole run: each photo is embedded once across all tests."""
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture
def settings(tmp_path, cache_dir) -> Settings:
    return dataclasses.replace(Settings.from_env(), weights_dir=WEIGHTS_DIR, models_dir=tmp_path / "models",
                               data_dir=tmp_path / "data", cache_dir=cache_dir)


@pytest.fixture
def start_service():
    """Service(settings).start(), closed when the test ends, failed or not: no test leaves its threads or an
    embedding child running beside the tests after it."""
    import contextlib

    from catdog_model.service import Service

    with contextlib.ExitStack() as closing:  # each one closed, even when closing another fails
        def start(settings: Settings) -> Service:
            service = Service(settings)
            closing.callback(service.close)  # before start(): a start that fails halfway is closed too
            return service.start()
        yield start


@pytest.fixture
def env(tmp_path, cache_dir, monkeypatch) -> dict[str, str]:
    """Environment for the command-line programs: a private hub and Gradio upload folder, the shared cache, the
    weights."""
    values = {"CATDOG_MODELS_DIR": str(tmp_path / "models"), "CATDOG_CACHE_DIR": str(cache_dir),
              "GRADIO_TEMP_DIR": str(tmp_path / "gradio-files"),
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


def start_postgres() -> Postgres:
    """A PostgreSQL server of its own (close() it); skips, saying how to install it, without the package."""
    try:
        return Postgres()
    except ServerUnavailable as missing:
        pytest.skip(str(missing))


def start_nginx(upstreams: list[str]) -> Nginx:
    """nginx before upstreams (close() it); skips, saying how to install it, without the package."""
    try:
        return Nginx(upstreams)
    except ServerUnavailable as missing:
        pytest.skip(str(missing))


def trusted_photos(service) -> list:
    """The trusted photos a retraining by this service is judged on."""
    from catdog_model.config import TrainingConfig
    from catdog_model.retrain_data import trusted_examples

    config = TrainingConfig()
    return trusted_examples(service.settings, config.seed, config.validation_fraction, config.test_fraction)


def training_data(service):
    """The Dataset a retraining by this service would train on."""
    from catdog_model.retrain_data import training_dataset

    return training_dataset(service.settings, service.curation.uploads, trusted_photos(service))


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

    # A client a test leaves connected (gradio_client's event stream) would hold uvicorn's graceful shutdown
    # for the app's whole grace period: a second here, nothing is in flight when a test's server stops.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port or free_port(), log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(timeout=120)
        if thread.is_alive():
            raise RuntimeError("the test server did not stop within 2 minutes")

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

    from catdog_model.app import build_app
    from catdog_model.service import Service

    root = tmp_path_factory.mktemp("app")
    shutil.copytree(shipped_models(), root / "models", ignore=shutil.ignore_patterns(".lock"))
    settings = dataclasses.replace(Settings.from_env(), weights_dir=WEIGHTS_DIR, models_dir=root / "models",
                                   data_dir=root / "data", cache_dir=cache_dir, admin_token="s3cret")
    service = Service(settings).start()
    url, stop = serve_in_thread(build_app(service))
    yield url + "/", service
    stop()
    service.close()


# In shipped_models(): the exports of v1 and v2, published after the repository's versions; this one is servable
# besides production, which is the repository's own.
REPOSITORY_HUB = LocalHub(PROJECT_ROOT / "models", Settings.from_env().model_name)
PRODUCTION = REPOSITORY_HUB.production()
OTHER_VERSION = next_version(REPOSITORY_HUB.versions())
_temporary: list = []  # the session's tmp_path_factory
_prepared: list[Path] = []


def shipped_models() -> Path:
    """A copy of the repository's models/ where, besides production, two more versions can be served: copies of
    production published as the next two versions (OTHER_VERSION and the one after), and production promoted
    back last, so a rollback reaches the second. Built on first use, once per test run, in pytest's temporary
    folder (`catdog export` itself is tested in test_cli)."""
    import shutil

    if not _prepared:
        root = _temporary[0].mktemp("shipped") / "models"
        shutil.copytree(PROJECT_ROOT / "models", root, ignore=shutil.ignore_patterns(".lock"))
        hub = LocalHub(root, REPOSITORY_HUB.repo.name)
        for _ in range(2):
            hub.push(hub.download(PRODUCTION), write_card=lambda version: f"# {version}, a copy of {PRODUCTION}\n")
        for version in (*hub.versions()[-2:], PRODUCTION):
            hub.promote(version)
        _prepared.append(root)
    return _prepared[0]


def patient_client(url: str):
    """A gradio_client that waits up to 120 s on each network step (connect, read, write) rather than httpx's
    5 s: a server sharing two busy cores with a training beside it once took longer to take an upload."""
    from gradio_client import Client

    return Client(url, verbose=False, httpx_kwargs={"timeout": 120})
