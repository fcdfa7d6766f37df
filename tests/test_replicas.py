"""Replicas: two app processes on one hub — alone, and behind a real nginx (the repository's config) on one
real PostgreSQL prediction log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
import json

import pytest

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.hub import LocalHub
from bench.servers import wait_for
from tests.conftest import (OTHER_VERSION, WEIGHTS_DIR, free_port, patient_client, requires_photos,
                            requires_weights, shipped_models, start_nginx, start_postgres)

pytestmark = [pytest.mark.heavy, requires_weights]


def health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "health", timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


def start_replicas(tmp_path, cache_dir, **environment) -> list[tuple[subprocess.Popen, str]]:
    shutil.copytree(shipped_models(), tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    replicas = []
    for name in ("a", "b"):
        port = free_port()
        env = {**os.environ, "CATDOG_MODELS_DIR": str(tmp_path / "models"), "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR),
               "CATDOG_DATA_DIR": str(tmp_path / name), "CATDOG_CACHE_DIR": str(cache_dir),
               "GRADIO_TEMP_DIR": str(tmp_path / name / "gradio-files"),
               "CATDOG_RELOAD_SECONDS": "1", "GRADIO_SERVER_PORT": str(port), "CATDOG_OFFLINE": "1",
               "CATDOG_REPLICA": name, **environment}
        env.pop("CATDOG_ADMIN_TOKEN", None)
        process = subprocess.Popen([sys.executable, "app.py"], cwd=PROJECT_ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        replicas.append((process, f"http://127.0.0.1:{port}/"))
    return replicas


def stop(replicas) -> None:
    for process, _ in replicas:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)


def test_a_promotion_reaches_every_replica(tmp_path, cache_dir):
    replicas = start_replicas(tmp_path, cache_dir)
    shipped = LocalHub(tmp_path / "models", Settings.from_env().model_name).production()
    try:
        for _, url in replicas:
            assert wait_for(lambda: health(url), 120)["model_version"] == shipped
        (_, first), (_, second) = replicas
        promoted = patient_client(first).predict(OTHER_VERSION, "", api_name="/promote")
        assert promoted == f"Production is now {OTHER_VERSION}."
        assert health(first)["model_version"] == OTHER_VERSION  # the replica that promoted swaps at once
        # the other within its reload interval
        assert wait_for(lambda: (health(second) or {}).get("model_version") == OTHER_VERSION, 30)
    finally:
        stop(replicas)


@requires_photos
def test_replicas_behind_nginx_share_one_postgresql_log_and_survive_losing_one(tmp_path, cache_dir,
                                                                               small_photo_dir):
    from bench.loadtest import run_locust

    database = start_postgres()
    replicas = start_replicas(tmp_path, cache_dir, CATDOG_DATABASE_URL=database.new_database())
    proxy = None
    try:
        for _, url in replicas:
            assert wait_for(lambda: health(url), 120)
        proxy = start_nginx([url.removeprefix("http://").rstrip("/") for _, url in replicas])
        load = run_locust(proxy.url.rstrip("/"), users=6, seconds=10, options=("--load-images", str(small_photo_dir)))
        assert load["requests"] >= 20 and load["failures"] == 0
        # Locust's six users draw six routes: one replica takes all of them one run in 32. New clients, each
        # with a fresh route, make "both served" certain in practice (a replica misses 40 of them 1 run in 10^12).
        photo = sorted((small_photo_dir / "dogs").iterdir())[0]
        new_clients = 40
        for _ in range(new_clients):
            rest_predict(proxy.url, photo)

        (first, first_url), (_, second_url) = replicas
        def logged_alike() -> dict | None:  # every row flushed, and both replicas read the same log
            views = [patient_client(url).predict("all", api_name="/metrics")["monitoring"]
                     for url in (second_url, first_url)]
            counts = {view.get("count", 0) for view in views}
            return views[0] if len(counts) == 1 and min(counts) >= load["requests"] + new_clients else None
        monitoring = wait_for(logged_alike, 30, every=0.5)
        assert set(monitoring["replicas"]) == {"a", "b"}  # both served, and either replica sees all traffic

        through_proxy = patient_client(proxy.url)  # its cookie keeps upload, call and stream on one replica
        assert through_proxy.predict(OTHER_VERSION, "", api_name="/promote") == f"Production is now {OTHER_VERSION}."
        for _, url in replicas:
            assert wait_for(lambda: (health(url) or {}).get("model_version") == OTHER_VERSION, 30)

        first.kill()
        first.wait(timeout=10)
        photo = sorted((small_photo_dir / "dogs").iterdir())[0]
        for _ in range(10):  # new clients: some would have gone to the replica that is gone
            request = urllib.request.Request(proxy.url + "api/predict", data=multipart(photo),
                                             headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert json.loads(response.read())["version"] == OTHER_VERSION
        from gradio_client import handle_file
        assert patient_client(proxy.url).predict(handle_file(str(photo)), api_name="/predict")["label"] == "dog"
    finally:
        if proxy:
            proxy.close()
        stop(replicas)
        database.close()


BOUNDARY = "catdogboundary"


def rest_predict(url: str, photo) -> dict:
    """POST /api/predict as a new client: no cookie, so nginx gives it a fresh route."""
    request = urllib.request.Request(url + "api/predict", data=multipart(photo),
                                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def multipart(path) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()
