"""Two app processes share one hub; a promotion through one is followed by the other."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import json

from gradio_client import Client

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.hub import LocalHub
from tests.conftest import OTHER_VERSION, WEIGHTS_DIR, free_port, requires_weights, shipped_models

pytestmark = [requires_weights]


def health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "health", timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


def wait_for(condition, seconds: float):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    return None


def test_a_promotion_reaches_every_replica(tmp_path, cache_dir):
    shutil.copytree(shipped_models(), tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    shipped = LocalHub(tmp_path / "models", Settings.from_env().model_name).production()
    replicas = []
    for name in ("a", "b"):
        port = free_port()
        env = {**os.environ, "CATDOG_MODELS_DIR": str(tmp_path / "models"), "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR),
               "CATDOG_DATA_DIR": str(tmp_path / name), "CATDOG_CACHE_DIR": str(cache_dir),
               "CATDOG_RELOAD_SECONDS": "1", "GRADIO_SERVER_PORT": str(port), "CATDOG_OFFLINE": "1"}
        env.pop("CATDOG_ADMIN_TOKEN", None)
        process = subprocess.Popen([sys.executable, "app.py"], cwd=PROJECT_ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        replicas.append((process, f"http://127.0.0.1:{port}/"))
    try:
        for _, url in replicas:
            assert wait_for(lambda: health(url), 120)["model_version"] == shipped
        (_, first), (_, second) = replicas
        assert Client(first, verbose=False).predict(OTHER_VERSION, "", api_name="/promote") == f"Production is now {OTHER_VERSION}."
        assert health(first)["model_version"] == OTHER_VERSION  # the replica that promoted swaps at once
        assert wait_for(lambda: health(second)["model_version"] == OTHER_VERSION, 30)  # the other within its interval
    finally:
        for process, _ in replicas:
            process.terminate()
            process.wait(timeout=20)
