"""kill -9 in the middle of the work, with real processes: on restart production is unchanged, no half-written
version is visible, acknowledged uploads are there and whole, and the prediction log is readable."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import threading
import time
import urllib.request

import pytest
from gradio_client import handle_file

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.hub import LocalHub
from bench.loadtest import App
from bench.servers import wait_for
from tests.conftest import RETRAINING_SECONDS, WEIGHTS_DIR, patient_client, requires_weights, shipped_models
from catdog_model.layout import CONFIG_FILE

pytestmark = [pytest.mark.heavy, requires_weights]


def app_env(root, cache_dir) -> dict[str, str]:
    env = {**os.environ, "CATDOG_MODELS_DIR": str(root / "models"), "CATDOG_DATA_DIR": str(root / "data"),
           "CATDOG_CACHE_DIR": str(cache_dir), "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR), "CATDOG_OFFLINE": "1",
           "CATDOG_RELOAD_SECONDS": "0", "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("CATDOG_ADMIN_TOKEN", None)
    return env


def kill(app: App) -> None:
    app._watching = False
    os.kill(app.process.pid, signal.SIGKILL)
    app.process.wait(timeout=30)


def assert_hub_intact(hub: LocalHub, production: str) -> None:
    assert hub.production() == production
    shipped = shipped_models() / hub.repo.name
    for version in hub.versions():  # every visible version is complete
        folder = hub.repo / version
        for name, sha in json.loads((folder / CONFIG_FILE).read_text())["files"].items():
            if not (shipped / version / name).exists() and not (folder / name).exists():
                continue  # the repository keeps the full-model files of its production version only
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha


def assert_uploads_whole(root) -> list:
    stored = [path for path in (root / "data" / "uploads").rglob("*") if path.is_file() and
              not path.name.endswith(".tmp")]
    for path in stored:  # each stored file is complete: its name is the hash of its content
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem
    return stored


def test_kill_during_retraining(tmp_path, small_photo_dir):
    shutil.copytree(shipped_models(), tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    hub = LocalHub(tmp_path / "models", Settings.from_env().model_name)
    production, versions_before = hub.production(), hub.versions()
    env = app_env(tmp_path, tmp_path / "fresh-cache")  # an empty cache: the retraining has to embed
    app = App(env)
    client = patient_client(app.url)
    acknowledged = 0
    for folder, label in (("cats", "cat"), ("dogs", "dog")):
        photos = [handle_file(str(path)) for path in sorted((small_photo_dir / folder).iterdir())]
        results, *_ = client.predict(label, photos, "", api_name="/upload_training_data")
        acknowledged += sum(row[1] == "added" for row in results["data"])
    client.predict(handle_file(str(sorted((small_photo_dir / "cats").iterdir())[0])), api_name="/predict")
    client.predict("", api_name="/retrain")
    deadline = time.time() + RETRAINING_SECONDS
    while client.predict(api_name="/retrain_status")["stage"] not in ("embedding", "training"):
        assert time.time() < deadline
        time.sleep(0.2)
    kill(app)

    assert_hub_intact(hub, production)
    assert set(versions_before) <= set(hub.versions())
    assert len(assert_uploads_whole(tmp_path)) == acknowledged == 60
    with sqlite3.connect(tmp_path / "data" / "predictions.sqlite") as log:
        log.execute("SELECT COUNT(*) FROM predictions").fetchone()

    restarted = App(env)
    try:
        assert json.loads(urllib.request.urlopen(restarted.url + "/health").read()) == {
            "status": "ok", "model_loaded": True, "model_version": production, "precision": "fp32"}
        stats = patient_client(restarted.url).predict(api_name="/dataset_stats")
        assert stats["uploads"] == {"cat": 30, "dog": 30}
    finally:
        restarted.stop()


def test_kill_during_an_upload_batch(tmp_path, cache_dir, small_photo_dir):
    shutil.copytree(shipped_models(), tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    env = app_env(tmp_path, cache_dir)
    app = App(env)
    photos = [handle_file(str(path)) for folder in ("cats", "dogs") for path in sorted((small_photo_dir / folder)
                                                                                        .iterdir())]
    first, *_ = patient_client(app.url).predict("cat", photos[:10], "", api_name="/upload_training_data")
    errors = []
    uploading = threading.Thread(target=lambda: errors.append(
        _try(lambda: patient_client(app.url).predict("dog", photos[10:], "", api_name="/upload_training_data"))))
    uploading.start()

    def stored_files() -> int:  # complete ones: a file being written is a .tmp until it is renamed
        return sum(path.is_file() and path.suffix != ".tmp" for path in (tmp_path / "data" / "uploads").rglob("*"))

    # The second batch has begun to land (or its call failed: then say how).
    wait_for(lambda: stored_files() > 10 or errors, seconds=120, every=0.005)
    assert stored_files() > 10, f"the second upload failed before storing a file: {errors}"
    kill(app)
    uploading.join(timeout=60)

    stored = assert_uploads_whole(tmp_path)
    assert 0 < len(stored) - 10 < len(photos) - 10, "the kill must land while the second batch is being stored"
    assert len([path for path in stored if path.parent.name == "cat"]) == 10  # all acknowledged uploads
    restarted = App(env)
    try:
        stats = patient_client(restarted.url).predict(api_name="/dataset_stats")
        # Cats sent as "dog" are held as suspect: every stored file is counted once, in one or the other.
        assert stats["uploads"]["cat"] == 10
        assert stats["uploads"]["dog"] + stats["suspect"]["dog"] == len(stored) - 10
    finally:
        restarted.stop()


def _try(call):
    try:
        return call()
    except Exception as error:  # the server died mid-request: that is the point of this test
        return error
