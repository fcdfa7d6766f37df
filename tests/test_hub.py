"""The local model hub: immutable versions, promote and rollback, clear errors, and crash and writer safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from catdog_model.backbone import BackboneSpec, WeightsSource, file_sha256
from catdog_model.classifier import Classifier, HeadConfig, ModelLoadError, build_head, save_version_files
from catdog_model.config import PROJECT_ROOT
from catdog_model.hub import HubError, LocalHub


def version_folder(path: Path, padding_bytes: int = 0) -> Path:
    """A real version's files: a Keras head's weights and its config.json (plus optional bulk)."""
    path.mkdir(parents=True, exist_ok=True)
    head_config = HeadConfig(embedding_dim=8, hidden_units=0)
    save_version_files(path, BackboneSpec(), build_head(head_config), head_config, tta=False)
    (path / "metrics.json").write_text(json.dumps({"created_at": "2026-11-27T00:00:00+00:00",
                                                   "test": {"accuracy": 0.5}}))
    if padding_bytes:
        (path / "padding.bin").write_bytes(os.urandom(padding_bytes))
    return path


@pytest.fixture
def hub(tmp_path) -> LocalHub:
    return LocalHub(tmp_path / "models", "catdog-test")


@pytest.fixture
def staged(tmp_path) -> Path:
    return version_folder(tmp_path / "staged")


def test_push_numbers_versions_and_renders_the_card(hub, staged):
    assert hub.versions() == []
    assert hub.push(staged, write_card=lambda version: f"# card of {version}\n") == "v1"
    assert hub.push(staged) == "v2"
    assert hub.versions() == ["v1", "v2"]
    assert (hub.repo / "v1" / "README.md").read_text() == "# card of v1\n"
    assert {path.name for path in (hub.repo / "v2").iterdir()} == {"config.json", "head.weights.h5", "metrics.json"}


def test_versions_are_immutable(hub, staged):
    hub.push(staged)
    weights = hub.repo / "v1" / "head.weights.h5"
    before = weights.read_bytes()
    (staged / "metrics.json").write_text("{}")
    hub.push(staged)
    assert weights.read_bytes() == before
    assert json.loads((hub.repo / "v1" / "metrics.json").read_text())["test"] == {"accuracy": 0.5}
    assert not os.access(weights, os.W_OK) or os.geteuid() == 0  # root ignores permission bits
    assert oct(weights.stat().st_mode & 0o777) == "0o444"


def test_unknown_version_and_corrupt_refs_are_clear_errors(hub, staged):
    hub.push(staged)
    with pytest.raises(HubError, match=r"No model version 'v7' .*versions: v1"):
        hub.promote("v7")
    (hub.repo / "refs.json").write_text("{not json")
    with pytest.raises(HubError, match="refs.json in .* is corrupt"):
        hub.production()
    with pytest.raises(HubError, match="is not a model version"):
        hub.push(staged.parent)


def test_tampered_or_missing_files_refuse_to_load(hub, staged):
    hub.push(staged)
    folder = hub.repo / "v1"
    weights = folder / "head.weights.h5"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ModelLoadError, match="does not match the sha256"):
        Classifier.load(folder, WeightsSource(offline=True))
    weights.unlink()
    with pytest.raises(ModelLoadError, match="head.weights.h5 is missing"):
        Classifier.load(folder, WeightsSource(offline=True))
    (folder / "config.json").chmod(0o644)
    (folder / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="config.json is corrupt"):
        Classifier.load(folder, WeightsSource(offline=True))


WRITER = """
import sys
from pathlib import Path
from catdog_model.hub import LocalHub
hub = LocalHub(Path(sys.argv[1]), "catdog-test")
for _ in range(int(sys.argv[3])):
    version = hub.push(Path(sys.argv[2]))
    hub.promote(version)
    print(version, flush=True)
"""


def run_writer(hub: LocalHub, staged: Path, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(hub.repo.parent), str(staged), str(count)],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


def test_two_concurrent_writers_never_share_a_version(hub, staged):
    writers = [run_writer(hub, staged, 5) for _ in range(2)]
    outputs = [writer.communicate(timeout=120)[0].split() for writer in writers]
    assert all(writer.returncode == 0 for writer in writers)
    assert sorted(outputs[0] + outputs[1], key=lambda name: int(name[1:])) == [f"v{n}" for n in range(1, 11)]
    assert hub.versions() == [f"v{n}" for n in range(1, 11)]
    assert hub.production() in hub.versions()


def kill_during_a_write(hub: LocalHub, staged: Path, attempts: int = 5) -> None:
    """SIGKILL a writer the moment a staging folder appears; try again if the rename won the race."""
    for _ in range(attempts):
        writer = run_writer(hub, staged, 50)
        assert writer.stdout.readline().strip().startswith("v")  # at least one version is complete
        deadline = time.time() + 60
        while not list(hub.repo.glob(".staging-*")) and time.time() < deadline:
            time.sleep(0.001)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        if list(hub.repo.glob(".staging-*")):
            return
    pytest.fail("no kill landed inside a write; raise the padding")


def test_a_writer_killed_mid_write_leaves_production_and_versions_intact(hub, tmp_path):
    big = version_folder(tmp_path / "big", padding_bytes=40_000_000)  # slow enough to be killed while copying
    kill_during_a_write(hub, big)
    production = hub.production()
    assert production in hub.versions()
    for version in hub.versions():  # every listed version is complete, each file matching its sha256
        folder = hub.repo / version
        for name, sha in json.loads((folder / "config.json").read_text())["files"].items():
            assert file_sha256(folder / name) == sha
        assert (folder / "padding.bin").stat().st_size == 40_000_000
    # The hub goes on: the next version follows the last complete one, and the debris is swept away.
    expected = f"v{len(hub.versions()) + 1}"
    assert hub.push(version_folder(tmp_path / "small")) == expected
    assert not list(hub.repo.glob(".staging-*"))
