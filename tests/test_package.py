"""The wheel, installed as a user would (`pip install catdog-*.whl`), works outside the checkout: `catdog predict`
and `catdog serve` find the shipped model, copied into the user's data folder on first use."""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys

import httpx
import pytest

from bench.servers import free_port, wait_for
from catdog_model.config import PROJECT_ROOT
from tests.conftest import random_jpeg

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed (its dependencies reached through this interpreter's site-packages,
    as pip would have installed them), and a home folder of its own."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    shutil.copytree(PROJECT_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "data", "tests", "__pycache__", "build", "dist", "*.egg-info", ".lock"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"),
                            str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
    (next((root / "venv" / "lib").glob("python*")) / "site-packages" / "dependencies.pth").write_text(
        site.getsitepackages()[0] + "\n")
    (wheel,) = (root / "dist").glob("catdog-*.whl")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "venv" / "bin" / "python"),
                                "install", "--no-deps", "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(root / "home"), "CATDOG_PREPARE_EMBEDDINGS": "0"}
    return {"catdog": str(root / "venv" / "bin" / "catdog"), "cwd": elsewhere, "env": environment,
            "home": root / "home", "wheel": wheel}


def test_catdog_predict_works_from_another_folder_with_the_shipped_model(installed):
    photo = installed["cwd"] / "photo.jpg"
    photo.write_bytes(random_jpeg(1, side=64))
    result = subprocess.run([installed["catdog"], "predict", str(photo)], cwd=installed["cwd"], env=installed["env"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout)
    assert answer["label"] in ("cat", "dog") and answer["version"]
    assert (installed["home"] / ".local" / "share" / "catdog" / "models").is_dir()  # the user's, writable
    assert not (installed["cwd"] / "models").exists() and not (installed["cwd"] / "data").exists()


def test_catdog_serve_answers_from_another_folder(installed):
    port = free_port()
    server = subprocess.Popen([installed["catdog"], "serve"], cwd=installed["cwd"],
                              env={**installed["env"], "GRADIO_SERVER_PORT": str(port)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy():
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                return httpx.get(url + "/health", timeout=5).json()["model_loaded"]
            except httpx.HTTPError:
                return False

        wait_for(healthy, seconds=300, every=0.5)
        answer = httpx.post(url + "/api/predict", files={"file": ("photo.jpg", random_jpeg(2, side=64))}, timeout=30)
        assert answer.status_code == 200 and answer.json()["label"] in ("cat", "dog")
    finally:
        server.terminate()
        server.wait(timeout=60)
