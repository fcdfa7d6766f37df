"""The `catdog` command end to end, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from catdog_model.config import PROJECT_ROOT
from tests.conftest import requires_weights



def run(arguments: list[str], env: dict, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", *arguments], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == expect, result.stderr[-3000:]
    return result


@pytest.mark.heavy
@requires_weights
def test_train_evaluate_export_and_benchmark(small_photo_dir, env, tmp_path):
    trained = json.loads(run(["catdog", "train", "--data-dir", str(small_photo_dir), "--seed", "3",
                              "--epochs", "10", "--image-size", "160"], env).stdout)
    assert trained["version"] == "v1" and trained["production"] == "v1"  # the first version becomes production

    plots = tmp_path / "plots"
    evaluated = run(["catdog", "evaluate", "--data-dir", str(small_photo_dir), "--json", "--out", str(plots)], env)
    result = json.loads(evaluated.stdout)  # stdout is exactly one JSON object
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "confusion_matrix", "n_images"):
        assert key in result
    # By default, production on the photos it never trained on: the test split, as its training cut it.
    assert result["version"] == "v1" and result["split"] == "test" and result["n_images"] == 12
    assert sum(map(sum, result["confusion_matrix"])) == 12
    assert (plots / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (plots / "roc_curve.png").read_bytes()[:4] == b"\x89PNG"

    exported = json.loads(run(["catdog", "export", "--version", "v1"], env).stdout)
    # A new version is not promoted by default once there is a production.
    assert exported["version"] == "v2" and exported["exported_from"] == "v1" and exported["production"] == "v1"
    assert exported["max_p_dog_difference"] < 1e-4  # checked against Keras before the version was written

    benchmark = json.loads(run(["catdog", "bench", "benchmark", "--json", "--data-dir", str(small_photo_dir), "--repeats", "5",
                                "--skip-training"], env).stdout)
    assert benchmark["predict_one_p50_ms"] > 0 and benchmark["predict_batch32_images_per_s"] > 0
    assert benchmark["peak_rss_mb"] > 0 and benchmark["version"] == "v1"


@pytest.mark.parametrize("arguments, message", [
    (["catdog", "evaluate", "--data-dir", ".", "--json"], "no production model yet"),
    (["catdog", "train", "--data-dir", "/nonexistent-folder"], "is not a folder"),
    (["catdog", "evaluate", "--data-dir", ".", "--version", "v9"], "No model version 'v9'"),
    (["catdog", "evaluation"], "catdog has no command 'evaluation'"),
])
def test_user_mistakes_end_with_a_sentence_not_a_traceback(arguments, message, env):
    result = run(arguments, env, expect=2)
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_commands_load_no_heavy_library_before_their_options_are_checked():
    # TensorFlow, scikit-learn, cleanlab, … take up to seconds each to import: a mistake is refused without them.
    heavy = {"sklearn", "tensorflow", "keras", "cleanlab", "scipy", "matplotlib", "pandas", "onnxruntime", "onnx",
             "tf2onnx", "gradio", "sqlalchemy", "ray", "datasets"}
    script = ("import sys, catdog_model.cli_train, catdog_model.cli_evaluate, catdog_model.cli_data_issues; "
              f"print(sorted({heavy!r} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "[]"


@pytest.mark.heavy
@requires_weights
def test_train_pushes_to_the_hub_and_evaluate_loads_production_from_it(small_photo_dir, env, hf_env, hub_server,
                                                                        tmp_path):
    from catdog_model.hub import HFHub

    _, state = hub_server
    hub_env = {**env, **hf_env, "CATDOG_HUB_REPO": "tester/catdog-cli", "CATDOG_DATA_DIR": str(tmp_path / "data")}
    trained = json.loads(run(["catdog", "train", "--data-dir", str(small_photo_dir), "--seed", "3", "--epochs", "5",
                              "--image-size", "160"], hub_env).stdout)
    assert trained["version"] == "v1" and trained["production"] == "v1"
    hub = HFHub("tester/catdog-cli", tmp_path / "pending", hf_env["HF_ENDPOINT"])
    assert hub.versions() == ["v1"] and hub.production() == "v1"
    files = {path.name for path in hub.download("v1").iterdir()}
    assert {"config.json", "head.weights.h5", "metrics.json", "README.md", "model.keras"} <= files
    card = (hub.download("v1") / "README.md").read_text()
    assert "model-index:" in card and "library_name: keras" in card

    # The evaluation loads production from the Hub: model.keras carries the backbone, no weights file needed.
    no_weights = {**hub_env, "CATDOG_WEIGHTS_DIR": str(tmp_path / "empty"), "KERAS_HOME": str(tmp_path / "keras")}
    state.requests.clear()
    result = json.loads(run(["catdog", "evaluate", "--data-dir", str(small_photo_dir), "--split", "all", "--json"],
                            no_weights).stdout)
    assert result["version"] == "v1" and result["n_images"] == 60
    assert any("/resolve/" in request for request in state.requests)


def test_predict_prints_a_line_a_file_and_fails_when_a_file_cannot_be_classified(small_photo_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}  # the repository's own models/
    cat = sorted((small_photo_dir / "cats").iterdir())[0]
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    classified = run(["catdog", "predict", str(cat)], env)
    assert json.loads(classified.stdout)["label"] == "cat"
    mixed = run(["catdog", "predict", str(cat), str(notes)], env, expect=1)
    first, second = (json.loads(line) for line in mixed.stdout.splitlines())
    assert first["label"] == "cat" and "not an image" in second["error"]
