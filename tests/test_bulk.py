"""Bulk prediction on Ray Data: the command a user with a folder (or a dataset) of photos runs, on a real
local Ray, against the shipped production version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.hub import LocalHub
from catdog_model.serving import ServingModel
from tests.conftest import requires_photos, shipped_models

pytestmark = pytest.mark.heavy  # starts servers, trains or builds: make test-fast leaves it out

pytest.importorskip("ray", reason="Ray is the bulk extra: pip install -r requirements-bulk.txt")
pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (installed with Ray Data)")


def run_bulk(*arguments: str, models_dir, **environment) -> subprocess.CompletedProcess:
    env = {**os.environ, "CATDOG_MODELS_DIR": str(models_dir), "PYTHONPATH": str(PROJECT_ROOT), **environment}
    return subprocess.run([sys.executable, "-m", "catdog", "bulk", *arguments], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)


def production_model(models_dir) -> ServingModel:
    hub = LocalHub(models_dir, Settings.from_env().model_name)
    return ServingModel.load(hub.download(hub.production()), hub.production())


@requires_photos
def test_bulk_prediction_writes_a_row_per_file_with_serving_labels_and_reasons_for_bad_files(tmp_path,
                                                                                            small_photo_dir):
    import pandas

    inbox = tmp_path / "inbox"
    photos = sorted((small_photo_dir / "cats").iterdir())[:3] + sorted((small_photo_dir / "dogs").iterdir())[:3]
    for index, photo in enumerate(photos):
        target = inbox / ("nested/deeper" if index % 2 else "") / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    (inbox / "notes.jpg").write_text("not a photo at all")
    (inbox / "empty.png").write_bytes(b"")
    (inbox / ".hidden").mkdir()
    shutil.copy(photos[0], inbox / ".hidden" / "skipped.jpg")
    models_dir = shipped_models()

    finished = run_bulk(str(inbox), "--out", str(tmp_path / "out" / "predictions.parquet"), "--actors", "2",
                        models_dir=models_dir)

    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = json.loads(finished.stdout)
    assert summary["rows"] == 8 and summary["errors"] == 2 and summary["images_per_second"] > 0
    table = pandas.read_parquet(tmp_path / "out" / "predictions.parquet").set_index("path")
    model = production_model(models_dir)
    assert set(table["version"]) == {model.version}
    for photo in inbox.rglob("*.jpg"):
        if ".hidden" in photo.parts or photo.name == "notes.jpg":
            continue
        expected = model.predict_one(str(photo))
        row = table.loc[str(photo)]
        assert row["label"] == expected.label and pandas.isna(row["error"])
        assert row["p_dog"] == pytest.approx(expected.p_dog, abs=1e-5)
    assert "not an image" in table.loc[str(inbox / "notes.jpg"), "error"]
    assert "empty" in table.loc[str(inbox / "empty.png"), "error"]
    assert pandas.isna(table.loc[str(inbox / "notes.jpg"), "label"])
    assert not list((tmp_path / "out").glob(".*partial"))  # written under a temporary name, then renamed


@requires_photos
def test_bulk_prediction_reads_a_hugging_face_dataset_folder(tmp_path, small_photo_dir):
    import pandas

    out = tmp_path / "predictions.parquet"
    finished = run_bulk(f"hf:{small_photo_dir}", "--out", str(out), models_dir=shipped_models())

    assert finished.returncode == 0, finished.stderr[-2000:]
    table = pandas.read_parquet(out)
    assert len(table) == 60 and table["error"].isna().all() and table["path"].str.endswith(".jpg").all()
    from_folders = {"cats": "cat", "dogs": "dog"}
    truth = [from_folders[os.path.basename(os.path.dirname(path))] for path in table["path"]]
    assert (table["label"] == truth).mean() >= 0.95  # the real photos, classified as the app classifies them


def test_bulk_prediction_of_a_folder_that_does_not_exist_says_so_without_a_traceback(tmp_path):
    finished = run_bulk(str(tmp_path / "nowhere"), "--out", str(tmp_path / "out.parquet"),
                        models_dir=shipped_models())

    assert finished.returncode == 2
    assert "nowhere is not a folder, a file or a glob that exists" in finished.stderr
    assert "Traceback" not in finished.stderr and not (tmp_path / "out.parquet").exists()


def test_bulk_prediction_into_a_folder_is_refused_before_any_work(tmp_path, small_photo_dir):
    finished = run_bulk(str(small_photo_dir), "--out", str(tmp_path), models_dir=shipped_models())

    assert finished.returncode == 2
    assert "is a folder; give --out a file name" in finished.stderr and "Traceback" not in finished.stderr


@requires_photos
def test_bulk_prediction_refuses_a_file_over_the_size_limit_without_reading_it(tmp_path, small_photo_dir):
    import pandas

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo = sorted((small_photo_dir / "cats").iterdir())[0]
    shutil.copy(photo, inbox / photo.name)
    (inbox / "video.jpg").write_bytes(os.urandom(3 * 2**20))  # a large file that claims to be a photo
    out = tmp_path / "predictions.parquet"

    finished = run_bulk(str(inbox), "--out", str(out), "--actors", "1", models_dir=shipped_models(),
                        CATDOG_MAX_UPLOAD_MB="1")

    assert finished.returncode == 0, finished.stderr[-2000:]
    table = pandas.read_parquet(out).set_index("path")
    assert "the limit is 1 MB" in table.loc[str(inbox / "video.jpg"), "error"]
    assert table.loc[str(inbox / photo.name), "label"] == "cat"
