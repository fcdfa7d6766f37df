"""The int8 serving export: quantized from a version's model.onnx, checked against it on real photos before it
is published, refused when it disagrees, and served only when asked for (CATDOG_SERVING_PRECISION=int8)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from catdog_model.config import PROJECT_ROOT
from catdog_model.errors import CatdogError
from catdog_model.export import ExportError
from catdog_model.images import load_image
from catdog_model.layout import INT8_ONNX_FILE, ONNX_FILE
from catdog_model.quantize import FLOAT_CONVOLUTIONS, check_int8, quantize_export
from catdog_model.serving import ServingModel
from catdog_model.version_metrics import read_metrics
from tests.conftest import PRODUCTION, REPOSITORY_HUB
from tests.test_cli import run

SIZE = 288  # the shipped production's input


def photos(folder, count: int) -> np.ndarray:
    paths = sorted((folder / "cats").iterdir())[:count // 2] + sorted((folder / "dogs").iterdir())[:count // 2]
    return np.stack([load_image(path.read_bytes(), size=SIZE) for path in paths])


@pytest.fixture(scope="module")
def production_export():
    export = REPOSITORY_HUB.download(PRODUCTION) / ONNX_FILE
    assert json.loads((export.parent / "config.json").read_text())["backbone"]["image_size"] == SIZE
    return export


def test_an_int8_export_calibrated_on_photos_agrees_with_the_float_export(production_export, small_photo_dir,
                                                                          tmp_path):
    quantize_export(production_export, tmp_path / INT8_ONNX_FILE, iter(photos(small_photo_dir, 20)))
    checked = check_int8(production_export, tmp_path / INT8_ONNX_FILE, photos(small_photo_dir, 60)[10:])
    assert checked["photos"] == 50 and checked["mean_p_dog_difference"] < 0.05
    assert (tmp_path / INT8_ONNX_FILE).stat().st_size < production_export.stat().st_size / 2


def convolutions_in_float(export) -> tuple[list[int], int]:
    """The places of an export's convolutions that read their weights as they are (a quantized one reads them
    through a DequantizeLinear), and how many convolutions it has."""
    graph = onnx.load(str(export)).graph
    dequantized = {output for node in graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    in_float = [node.input[1] not in dequantized for node in graph.node if node.op_type == "Conv"]
    return [place for place, kept in enumerate(in_float) if kept], len(in_float)


def test_the_chosen_convolutions_stay_in_float_and_every_other_one_is_quantized(production_export, small_photo_dir,
                                                                                tmp_path):
    quantize_export(production_export, tmp_path / INT8_ONNX_FILE, iter(photos(small_photo_dir, 4)))
    in_float, count = convolutions_in_float(tmp_path / INT8_ONNX_FILE)
    assert in_float == list(FLOAT_CONVOLUTIONS) and count == convolutions_in_float(production_export)[1] > 40


def test_one_convolution_can_be_quantized_alone_to_measure_what_it_costs(production_export, small_photo_dir,
                                                                         tmp_path):
    quantize_export(production_export, tmp_path / INT8_ONNX_FILE, iter(photos(small_photo_dir, 4)),
                    quantized_convolutions=(20,))  # one the export keeps in float
    in_float, count = convolutions_in_float(tmp_path / INT8_ONNX_FILE)
    assert count > 40 and in_float == [place for place in range(count) if place != 20]
    # Nothing else is quantized: the convolution's input and its output are the only activations that are.
    graph = onnx.load(str(tmp_path / INT8_ONNX_FILE)).graph
    assert [node.op_type for node in graph.node].count("QuantizeLinear") == 2


@pytest.mark.parametrize("chosen, message", [
    (dict(quantized_convolutions=()), "Name at least one convolution to quantize alone"),
    (dict(quantized_convolutions=(52,)), "numbered 0 to 51; it has no 52"),
    (dict(float_convolutions=(0, 60, -1)), "it has no 60, -1"),
])
def test_convolutions_the_model_does_not_have_are_refused_in_a_sentence(production_export, tmp_path, chosen,
                                                                        message):
    with pytest.raises(CatdogError, match=message):
        quantize_export(production_export, tmp_path / INT8_ONNX_FILE, iter([]), **chosen)
    assert not (tmp_path / INT8_ONNX_FILE).exists()


def test_int8_choice_reads_sets_of_places_and_ranges_and_refuses_anything_else_before_any_work(capsys):
    from bench.int8_choice import main, place_sets, written

    assert place_sets("0-8;0-9,20,30,36;5,3,4") == [tuple(range(9)), (*range(10), 20, 30, 36), (3, 4, 5)]
    assert written((*range(10), 20, 30, 36)) == "0-9,20,30,36" and written((5, 3, 4)) == "3-5"
    for wrong in ("9-0", "0..8", "0-8;", "-1", "a"):
        with pytest.raises(SystemExit):
            main(["--data-dir", "nowhere", "--float-convolutions", wrong])
        assert "is not a place (5) or a range (0-9)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the repository's production has 52 convolutions
        main(["--data-dir", "nowhere", "--float-convolutions", "0-60"])
    assert "it has no 52, 53" in capsys.readouterr().err


def test_the_check_refuses_an_int8_export_that_disagrees(production_export, small_photo_dir, tmp_path):
    # Calibrated on black pictures, every activation range is nearly empty: with every convolution quantized,
    # the export answers nonsense.
    black = (np.zeros((SIZE, SIZE, 3), np.uint8) for _ in range(4))
    quantize_export(production_export, tmp_path / INT8_ONNX_FILE, black, float_convolutions=())
    with pytest.raises(ExportError, match=r"The int8 export agrees with the float export on .* of 60 photos .* "
                                          "it was not published"):
        check_int8(production_export, tmp_path / INT8_ONNX_FILE, photos(small_photo_dir, 60))


def test_int8_is_served_only_when_asked_for_and_where_the_version_has_it(production_export, small_photo_dir,
                                                                        tmp_path, settings):
    version = tmp_path / "version"
    shutil.copytree(production_export.parent, version)
    assert ServingModel.load(version, precision="int8").precision == "fp32"  # the version has no int8 export
    quantize_export(production_export, version / INT8_ONNX_FILE, iter(photos(small_photo_dir, 20)))
    config = json.loads((version / "config.json").read_text())
    from catdog_model.backbone import file_sha256

    config["files"][INT8_ONNX_FILE] = file_sha256(version / INT8_ONNX_FILE)
    (version / "config.json").write_text(json.dumps(config))
    assert ServingModel.load(version).precision == "fp32"
    int8 = ServingModel.load(version, precision="int8")
    dog = sorted((small_photo_dir / "dogs").iterdir())[-1].read_bytes()
    assert int8.precision == "int8" and int8.predict_one(dog).label == "dog"

    # The benchmark reads both on the version's test photos, and how far apart their answers are there.
    import bench.benchmark as benchmark

    fp32, data = ServingModel.load(version), read_metrics(REPOSITORY_HUB)["data"]
    read = benchmark.test_accuracy({"serve": fp32, "serve_int8": int8}, [str(small_photo_dir)], data, settings)
    assert read["test_images"] > 5 and read["serve_int8_test_agreement"] >= 0.8
    assert 0 < read["serve_int8_test_mean_p_dog_difference"] <= read["serve_int8_test_max_p_dog_difference"] < 0.75
    same = benchmark.test_accuracy({"serve": fp32, "serve_int8": fp32}, [str(small_photo_dir)], data, settings)
    assert same["serve_int8_test_agreement"] == 1 and same["serve_int8_test_max_p_dog_difference"] == 0


def test_a_version_whose_int8_file_is_missing_or_damaged_still_serves_its_float_export(production_export,
                                                                                   small_photo_dir, tmp_path):
    from catdog_model.backbone import file_sha256

    version = tmp_path / "version"
    shutil.copytree(production_export.parent, version)
    config = json.loads((version / "config.json").read_text())
    config["files"][INT8_ONNX_FILE] = file_sha256(production_export)  # listed, and not there
    (version / "config.json").write_text(json.dumps(config))
    dog = sorted((small_photo_dir / "dogs").iterdir())[-1].read_bytes()
    for damage in ("missing", "corrupt"):
        if damage == "corrupt":
            (version / INT8_ONNX_FILE).write_bytes(b"not a model")
        for precision in ("fp32", "int8"):
            model = ServingModel.load(version, precision=precision)
            assert model.precision == "fp32" and model.predict_one(dog).label == "dog"


@pytest.mark.heavy
def test_catdog_export_int8_publishes_a_checked_int8_export_without_tensorflow(env, tmp_path):
    from tests.conftest import PHOTOS_DIR

    if not PHOTOS_DIR.is_dir():
        pytest.skip(f"real photos not found at {PHOTOS_DIR}")
    shutil.copytree(PROJECT_ROOT / "models", tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    environment = {**env, "CATDOG_DATA_DIR": str(tmp_path / "data")}
    published = json.loads(run(["catdog", "export", "--version", PRODUCTION, "--int8", "--data-dir", str(PHOTOS_DIR),
                                "--calibration-photos", "20"], environment).stdout)
    version = tmp_path / "models" / REPOSITORY_HUB.repo.name / published["version"]
    files = json.loads((version / "config.json").read_text())["files"]
    assert INT8_ONNX_FILE in files and ONNX_FILE in files
    assert (version / ONNX_FILE).read_bytes() == (REPOSITORY_HUB.download(PRODUCTION) / ONNX_FILE).read_bytes()
    int8 = json.loads((version / "metrics.json").read_text())["int8"]
    assert int8 == published["int8"] and int8["checked_on"] == "validation split" and int8["photos"] >= 200
    assert int8["calibration_photos"] == 20

    # A version copied without --int8 keeps neither the file nor its check.
    copied = json.loads(run(["catdog", "export", "--version", published["version"]], environment).stdout)
    copy = tmp_path / "models" / REPOSITORY_HUB.repo.name / copied["version"]
    assert INT8_ONNX_FILE not in json.loads((copy / "config.json").read_text())["files"]
    assert "int8" not in json.loads((copy / "metrics.json").read_text())


def test_export_int8_refuses_folders_that_give_too_few_photos_to_check_on(small_photo_dir, env, tmp_path):
    shutil.copytree(PROJECT_ROOT / "models", tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    refused = run(["catdog", "export", "--version", PRODUCTION, "--int8", "--data-dir", str(small_photo_dir)],
                  {**env, "CATDOG_DATA_DIR": str(tmp_path / "data")}, expect=2)
    assert "validation photos to check an int8 export on (50 needed)" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_app_serves_int8_when_the_setting_asks_and_says_so_in_health(production_export, small_photo_dir,
                                                                         settings, tmp_path):
    import dataclasses

    from catdog_model.classifier import seal_version_files
    from catdog_model.hub import LocalHub
    from catdog_model.service import Service

    shutil.copytree(PROJECT_ROOT / "models", settings.models_dir, ignore=shutil.ignore_patterns(".lock"))
    hub = LocalHub(settings.models_dir, settings.model_name)
    version = tmp_path / "with-int8"
    shutil.copytree(production_export.parent, version, ignore=shutil.ignore_patterns("README.md"))
    for path in version.iterdir():
        path.chmod(0o644)
    quantize_export(production_export, version / INT8_ONNX_FILE, iter(photos(small_photo_dir, 20)))
    seal_version_files(version)
    hub.promote(hub.push(version, write_card=lambda name: f"# {name}\n"))
    for precision in ("fp32", "int8"):
        service = Service(dataclasses.replace(settings, serving_precision=precision)).start()
        try:
            assert service.health()["precision"] == precision
        finally:
            service.close()


def test_a_precision_that_does_not_exist_is_refused_with_the_choices(monkeypatch):
    from catdog_model.config import Settings
    from catdog_model.errors import ServiceError

    monkeypatch.setenv("CATDOG_SERVING_PRECISION", "int4")
    with pytest.raises(ServiceError, match="CATDOG_SERVING_PRECISION='int4' is not one of fp32, int8"):
        Settings.from_env()
