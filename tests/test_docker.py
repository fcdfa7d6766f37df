"""No Docker engine runs here, so the image's own command is run on this checkout: its ENV, its CMD, and its
HEALTHCHECK, the way the container would."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from catdog_model.config import PROJECT_ROOT
from bench.servers import wait_for
from tests.conftest import WEIGHTS_DIR, free_port, patient_client, requires_weights, shipped_models

pytestmark = pytest.mark.heavy  # starts servers, trains or builds: make test-fast leaves it out

DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text()


def pinned(name: str) -> set[str]:
    """The packages a requirements file pins."""
    return set(re.findall(r"^([\w\-\[\]]+)==", (PROJECT_ROOT / name).read_text(), re.M))


def instruction(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1].strip() for line in joined.splitlines() if line.startswith(name + " ")]


def command(text: str) -> list[str]:
    """An exec-form command, with the image's `python` played by this venv's interpreter."""
    words = json.loads(text)
    return [sys.executable if words[0] == "python" else words[0], *words[1:]]


def image_environment() -> dict[str, str]:
    return dict(shlex.split(pair)[0].split("=", 1) for line in instruction("ENV") for pair in
                re.findall(r'\S+=(?:"[^"]*"|\S+)', line))


def test_the_image_is_slim_non_root_and_healthchecked():
    assert instruction("FROM") == ["python:3.11-slim"]
    assert instruction("USER") and instruction("USER")[0] not in ("root", "0")
    user, data_dir = instruction("USER")[0], image_environment()["CATDOG_DATA_DIR"]
    # /app belongs to root: unless the data folder is made for the app's user, the app cannot start.
    assert any(f"install -d -o {user}" in line and ("$CATDOG_DATA_DIR" in line or data_dir in line)
               for line in instruction("RUN")), "the image must create CATDOG_DATA_DIR for its user"
    assert instruction("EXPOSE") == ["7860"]
    assert json.loads(instruction("CMD")[0]) == ["python", "app.py"]
    assert image_environment()["GRADIO_SERVER_NAME"] == "0.0.0.0"
    serving, training = pinned("requirements-serve.txt"), pinned("requirements-train.txt")
    assert "tensorflow-cpu" in training and not serving & training
    assert (PROJECT_ROOT / "requirements.txt").read_text().split("\n")[-3:-1] == [
        "-r requirements-serve.txt", "-r requirements-train.txt"]
    assert "REQUIREMENTS: requirements-serve.txt" in (PROJECT_ROOT / "deploy" / "docker-compose.yml").read_text()
    ignored = (PROJECT_ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data"} <= set(ignored)


@requires_weights
def test_the_image_command_serves_and_its_healthcheck_passes(tmp_path):
    port = str(free_port())
    env = {**os.environ, **image_environment(), "GRADIO_SERVER_PORT": port, "CATDOG_DATA_DIR": str(tmp_path),
           "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR), "CATDOG_OFFLINE": "1"}
    healthcheck = command(instruction("HEALTHCHECK")[0].split("CMD", 1)[1])
    process = subprocess.Popen(command(instruction("CMD")[0]), cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while subprocess.run(healthcheck, env=env, capture_output=True).returncode != 0:
            assert time.time() < deadline and process.poll() is None, "the app did not become healthy"
            time.sleep(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as response:
            assert json.loads(response.read())["model_loaded"] is True
    finally:
        process.terminate()
        process.wait(timeout=20)


@requires_weights
def test_the_serving_image_serves_and_says_why_it_cannot_retrain(tmp_path, small_photo_dir):
    """What requirements-serve.txt leaves out cannot be imported here: the app must serve without it."""
    left_out = pinned("requirements-train.txt")
    blocker = tmp_path / "serving-image"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class LeftOut:\n"
        f"    names = {sorted(name.replace('-cpu', '').replace('-', '_') for name in left_out)!r}\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in self.names:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, LeftOut())\n")
    shutil.copytree(shipped_models(), tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    port = free_port()
    env = {**os.environ, **image_environment(), "GRADIO_SERVER_PORT": str(port), "CATDOG_DATA_DIR": str(tmp_path),
           "CATDOG_MODELS_DIR": str(tmp_path / "models"), "CATDOG_ADMIN_TOKEN": "s3cret",
           "PYTHONPATH": f"{blocker}:{PROJECT_ROOT}", "CATDOG_PREPARE_EMBEDDINGS": "0"}
    process = subprocess.Popen(command(instruction("CMD")[0]), cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: process.poll() is not None or _answers(url + "health"), seconds=120)
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        from gradio_client import handle_file

        client = patient_client(url)
        photo = sorted((small_photo_dir / "dogs").iterdir())[0]
        assert client.predict(handle_file(str(photo)), api_name="/predict")["label"] == "dog"
        for label in ("cat", "dog"):
            photos = [handle_file(str(path)) for path in sorted((small_photo_dir / f"{label}s").iterdir())[:5]]
            client.predict(label, photos, "s3cret", api_name="/upload_training_data")
        client.predict("s3cret", api_name="/retrain")
        status = wait_for(lambda: (state := client.predict(api_name="/retrain_status"))["error"] and state,
                          seconds=300)
        assert "this installation leaves out" in status["error"] and "requirements.txt" in status["error"]
    finally:
        process.terminate()
        process.wait(timeout=20)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
        return True
    except OSError:
        return False


def test_the_healthcheck_fails_while_no_model_is_loaded(tmp_path):
    port = str(free_port())
    env = {**os.environ, **image_environment(), "GRADIO_SERVER_PORT": port, "CATDOG_DATA_DIR": str(tmp_path),
           "CATDOG_MODELS_DIR": str(tmp_path / "no-models"), "CATDOG_OFFLINE": "1"}
    healthcheck = command(instruction("HEALTHCHECK")[0].split("CMD", 1)[1])
    process = subprocess.Popen(command(instruction("CMD")[0]), cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            except urllib.error.HTTPError as error:
                assert error.code == 503 and json.loads(error.read())["model_loaded"] is False
                break
            except OSError:
                assert time.time() < deadline and process.poll() is None
                time.sleep(1)
        assert subprocess.run(healthcheck, env=env, capture_output=True).returncode != 0
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.parametrize(("setting", "value", "sentence"), [
    ("CATDOG_DATA_DIR", "{file}/data", r"CATDOG_DATA_DIR \(.*\) cannot be written: .*Point CATDOG_DATA_DIR at"),
    ("CATDOG_DATABASE_URL", "no database", "CATDOG_DATABASE_URL is not a database URL"),
    ("CATDOG_MAX_FILES", "many", "CATDOG_MAX_FILES='many' is not a whole number"),
])
def test_the_app_refuses_a_setting_that_cannot_work_with_a_sentence(tmp_path, setting, value, sentence):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")  # a folder inside a file cannot be made, even by root
    env = {**os.environ, **image_environment(), "GRADIO_SERVER_PORT": str(free_port()),
           "CATDOG_DATA_DIR": str(tmp_path / "data"), setting: value.format(file=not_a_folder)}
    started = subprocess.run(command(instruction("CMD")[0]), cwd=PROJECT_ROOT, env=env, capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 2
    assert re.search(sentence, started.stderr) and "Traceback" not in started.stderr, started.stderr[-2000:]
