"""Serving on ONNX Runtime: the export agrees with Keras, a version without one is refused with the command that
makes it, the server never imports TensorFlow, retraining runs (and fails, and dies) in its own process, and
the plain REST route answers like Gradio's /predict."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from catdog_model.classifier import load_classifier
from catdog_model.config import Settings
from catdog_model.export import ExportError, check_export, sample_images
from catdog_model.hub import LocalHub
from catdog_model.serving import ModelLoadError, ServingModel
from catdog_model.service import ServiceError
from bench.servers import wait_for
from tests.conftest import OTHER_VERSION, RETRAINING_SECONDS, WEIGHTS_DIR, patient_client, requires_weights, shipped_models

pytestmark = [pytest.mark.heavy, requires_weights]  # Keras, TensorFlow and exports


def hub_copy(root: Path) -> LocalHub:
    shutil.copytree(shipped_models(), root / "models", ignore=shutil.ignore_patterns(".lock"))
    return LocalHub(root / "models", Settings.from_env().model_name)


def test_the_export_answers_as_the_keras_model_does(settings, small_photo_dir, tmp_path):
    hub = hub_copy(tmp_path)
    keras_model = load_classifier(hub, "production", dataclasses.replace(settings, weights_dir=WEIGHTS_DIR))
    served = ServingModel.load(hub.download("production"), hub.production())
    photos = [path.read_bytes() for folder in ("cats", "dogs") for path in sorted((small_photo_dir / folder).iterdir())]
    images = np.concatenate([np.stack([served.decode(photo) for photo in photos]), sample_images(served.image_size)])
    expected_p_dog, expected_embeddings = keras_model.predict_arrays(images)
    p_dog, embeddings = served.run(images)
    assert np.abs(p_dog - expected_p_dog).max() < 1e-4
    assert np.abs(embeddings - expected_embeddings).max() < 1e-3
    assert [prediction.label for prediction in served.predict(photos)] == ["cat"] * 30 + ["dog"] * 30


def test_an_export_that_disagrees_with_keras_is_refused(settings, tmp_path):
    hub = hub_copy(tmp_path)
    other_model = load_classifier(hub, "v1", dataclasses.replace(settings, weights_dir=WEIGHTS_DIR))
    with pytest.raises(ExportError, match="differs from the Keras model by up to .* the version was not written"):
        check_export(other_model, hub.download("production") / "model.onnx")


def test_a_version_without_an_export_is_refused_for_serving_with_the_command(start_service, settings, tmp_path):
    hub = hub_copy(tmp_path)
    with pytest.raises(ModelLoadError, match=r"v3 has no serving export .*python -m catdog export --version v3"):
        ServingModel.load(hub.download("v3"), "v3")
    service = start_service(dataclasses.replace(settings, models_dir=tmp_path / "models"))
    with pytest.raises(ServiceError, match="v3 cannot be promoted: .*python -m catdog export --version v3"):
        service.promote("v3")
    assert service.health()["model_version"] == hub.production()


@pytest.fixture
def app_process(tmp_path, cache_dir, small_photo_dir):
    from bench.loadtest import App

    hub_copy(tmp_path)
    env = {**os.environ, "CATDOG_MODELS_DIR": str(tmp_path / "models"), "CATDOG_DATA_DIR": str(tmp_path / "data"),
           "CATDOG_CACHE_DIR": str(cache_dir), "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR), "CATDOG_OFFLINE": "1",
           "CATDOG_BASE_DATA_DIR": str(small_photo_dir), "CATDOG_RELOAD_SECONDS": "0",
           "PYTHONPATH": str(Path(__file__).parent.parent)}
    env.pop("CATDOG_ADMIN_TOKEN", None)
    app = App(env)
    yield app
    if app.process.poll() is None:
        app.stop()


def loaded_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_server_never_imports_tensorflow_while_it_serves_promotes_and_retrains(app_process, small_photo_dir):
    from gradio_client import handle_file

    url = app_process.url
    client = patient_client(url)
    photo = sorted((small_photo_dir / "dogs").iterdir())[0]
    assert client.predict(handle_file(str(photo)), api_name="/predict")["label"] == "dog"
    assert client.predict(OTHER_VERSION, "", api_name="/promote") == f"Production is now {OTHER_VERSION}."
    client.predict("", api_name="/rollback")
    client.predict("", api_name="/retrain")
    assert wait_for(lambda: not client.predict(api_name="/retrain_status")["running"], RETRAINING_SECONDS)
    status = client.predict(api_name="/retrain_status")
    assert status["stage"] == "done", (status["error"], status["log"])
    assert "Published" in " ".join(status["log"])
    libraries = loaded_libraries(app_process.process.pid)
    assert "tensorflow" not in libraries and "onnxruntime" in libraries
    assert psutil.Process(app_process.process.pid).memory_info().rss < 700 * 2**20


def test_a_killed_retraining_leaves_the_server_serving_and_says_what_happened(app_process, small_photo_dir):
    client = patient_client(app_process.url)
    serving = httpx.get(app_process.url + "/health").json()["model_version"]
    client.predict("", api_name="/retrain")
    server = psutil.Process(app_process.process.pid)
    assert wait_for(lambda: server.children(), 30)
    child = server.children()[0]
    assert wait_for(lambda: client.predict(api_name="/retrain_status")["stage"] not in ("starting",),
                    RETRAINING_SECONDS)
    os.kill(child.pid, signal.SIGKILL)
    assert wait_for(lambda: not client.predict(api_name="/retrain_status")["running"], 30)
    status = client.predict(api_name="/retrain_status")
    assert status["stage"] == "failed" and "signal SIGKILL" in status["error"]
    assert httpx.get(app_process.url + "/health").json()["model_version"] == serving
    client.predict("", api_name="/retrain")  # and the next retraining may start
    assert client.predict(api_name="/retrain_status")["running"]


def test_a_retraining_child_never_outlives_the_server(app_process):
    patient_client(app_process.url).predict("", api_name="/retrain")
    server = psutil.Process(app_process.process.pid)
    assert wait_for(lambda: server.children(), 30)
    child = server.children()[0]
    os.kill(server.pid, signal.SIGKILL)
    app_process.process.wait(timeout=30)
    assert wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 15)


def test_the_rest_route_answers_like_the_gradio_api(server, small_photo_dir):
    url, service = server
    photo = sorted((small_photo_dir / "cats").iterdir())[3]
    with httpx.Client(base_url=url, timeout=30) as http:
        answer = http.post("api/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert answer.status_code == 200
        body = answer.json()
        assert body["label"] == "cat" and body["version"] == service.health()["model_version"]
        assert abs(body["p_cat"] + body["p_dog"] - 1) < 1e-6 and isinstance(body["flags"], list)
        refused = http.post("api/predict", files={"file": ("notes.jpg", b"not a photo", "image/jpeg")})
        assert refused.status_code == 400 and "not an image that can be read" in refused.json()["error"]
        empty = http.post("api/predict", files={"file": ("empty.jpg", b"", "image/jpeg")})
        assert empty.status_code == 400 and "empty" in empty.json()["error"]
        missing = http.post("api/predict")  # no file field at all
        assert missing.status_code == 400 and "field named `file`" in missing.json()["error"]
    service.log.flush()
    assert service.log.statistics()["sources"]["rest"] >= 1


def test_the_rest_route_gives_each_class_its_own_probability_as_gradio_does(server, small_photo_dir):
    from gradio_client import handle_file

    url, _ = server
    client = patient_client(url)
    with httpx.Client(base_url=url, timeout=30) as http:
        for folder, label in (("cats", "cat"), ("dogs", "dog")):
            photo = sorted((small_photo_dir / folder).iterdir())[4]
            body = http.post("api/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
            assert body["label"] == label and body[f"p_{label}"] > 0.5, body
            gradio = client.predict(handle_file(str(photo)), api_name="/predict")
            confidences = {item["label"]: item["confidence"] for item in gradio["confidences"]}
            assert body["p_cat"] == pytest.approx(confidences["cat"], abs=1e-6)
            assert body["p_dog"] == pytest.approx(confidences["dog"], abs=1e-6)


def test_the_rest_route_refuses_files_over_the_upload_limit(start_service, settings, tmp_path):
    from catdog_model.app import build_app
    from tests.conftest import serve_in_thread

    hub_copy(tmp_path)
    url, stop = serve_in_thread(build_app(start_service(dataclasses.replace(settings, models_dir=tmp_path / "models",
                                                                            max_upload_mb=1))))
    try:
        answer = httpx.post(url + "/api/predict", files={"file": ("big.jpg", b"x" * 1_500_000)}, timeout=30)
        assert answer.status_code == 413 and "CATDOG_MAX_UPLOAD_MB" in answer.json()["error"]
        # A chunked body (no Content-Length) that goes on and on: 3 MB are sent, the rest never comes. The answer
        # must come now, counted from what arrived — not after the parser has spooled the whole body to disk.
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port.rstrip("/"))), timeout=20) as connection:
            connection.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                               b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
            head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="huge.jpg"\r\n\r\n'
            connection.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            for _ in range(48):
                connection.sendall(b"%x\r\n%s\r\n" % (2**16, b"x" * 2**16))
            assert connection.recv(4096).startswith(b"HTTP/1.1 413")
    finally:
        stop()


def test_finished_gradio_sessions_are_forgotten_and_pending_ones_kept():
    import asyncio
    from types import SimpleNamespace

    from catdog_model.web import forget_finished_sessions

    sessions = {f"finished-{index}": set() for index in range(1000)} | {"pending": {"event-1"}}
    blocks = SimpleNamespace(_queue=SimpleNamespace(pending_event_ids_session=sessions))

    async def run_briefly():
        task = asyncio.create_task(forget_finished_sessions(blocks, every_seconds=0.01))
        await asyncio.sleep(0.1)
        task.cancel()

    asyncio.run(run_briefly())
    assert sessions == {"pending": {"event-1"}}


def test_a_retraining_outlives_the_server_thread_that_started_it(start_service, settings, small_photo_dir, tmp_path):
    import threading

    hub_copy(tmp_path)
    service = start_service(dataclasses.replace(settings, models_dir=tmp_path / "models",
                                                base_data_dir=small_photo_dir))
    starter = threading.Thread(target=service.start_retrain)  # as a Gradio worker thread, retired when idle
    starter.start()
    starter.join()
    assert wait_for(lambda: not service.retrainer.last().running, RETRAINING_SECONDS)
    assert service.retrainer.last().stage == "done", (service.retrainer.last().error, service.retrainer.last().log)
