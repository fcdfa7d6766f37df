"""Publish a version's serving export: the same files (weights, metrics, plots, novelty reference) plus
model.onnx, checked against the Keras model, as the hub's next version — versions are never rewritten. With
--int8, also model.int8.onnx: the export quantized, calibrated on the version's training photos and checked
against the float export on its validation photos (give the folders it was trained on).

    python -m catdog export --version v3 [--promote]
    python -m catdog export --version v5 --int8 --data-dir ../shared/data/cats_vs_dogs --data-dir ../shared/data/cats_vs_dogs_more
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from .cli import open_version, user_errors
from .layout import CARD_FILE, INT8_ONNX_FILE, METRICS_FILE, ONNX_FILE
from .quantize import CALIBRATION_PHOTOS
from .serving import read_config, read_config_files, read_image_size


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="catdog export", description=__doc__.split("\n")[0])
    parser.add_argument("--version", default="production", help="the version to export (default: production)")
    parser.add_argument("--int8", action="store_true",
                        help="also publish model.int8.onnx (CATDOG_SERVING_PRECISION=int8 serves it); needs "
                             "--data-dir. A version that has model.onnx keeps it: no TensorFlow needed")
    parser.add_argument("--data-dir", action="append", default=[],
                        help="for --int8: the folders the version was trained on (its training photos calibrate, "
                             "its validation photos check); repeat for more")
    parser.add_argument("--calibration-photos", type=int, default=CALIBRATION_PHOTOS,
                        help=f"for --int8: training photos that set the activation ranges (default "
                             f"{CALIBRATION_PHOTOS})")
    parser.add_argument("--promote", action="store_true", help="make the new version production")
    arguments = parser.parse_args(argv)
    if arguments.int8 and not arguments.data_dir:
        parser.error("--int8 needs --data-dir: the folders the version was trained on")
    return arguments


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    result: dict = {}
    with user_errors():
        settings, hub, source = open_version(arguments.version)
        source_folder = hub.download(source)
        reuse_export = arguments.int8 and ONNX_FILE in read_config_files(source_folder)
        if reuse_export:
            read_config(source_folder)  # its files as written: a changed one is refused, never re-sealed
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder) / "version"
            dropped = (CARD_FILE, INT8_ONNX_FILE) + (() if reuse_export else (ONNX_FILE,))
            shutil.copytree(source_folder, folder, ignore=shutil.ignore_patterns(*dropped))
            for path in folder.iterdir():
                path.chmod(0o644)
            metrics = json.loads((folder / METRICS_FILE).read_text())
            if not reuse_export:
                from .classifier import load_classifier
                from .export import export_onnx

                export_onnx(load_classifier(hub, source, settings), folder)
            metrics.pop("int8", None)  # the source's int8 check, of a file this copy does not keep
            if arguments.int8:
                metrics["int8"] = result["int8"] = export_int8(folder, metrics, arguments.data_dir, settings,
                                                               arguments.calibration_photos)
            metrics["exported_from"] = source
            metrics["command"] = shlex.join(["python", "-m", "catdog", "export", *argv])
            (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
            from .training import push_version

            version = push_version(folder, hub, settings.model_name, metrics)
        if not reuse_export:
            from .classifier import load_classifier
            from .export import check_export

            result["max_p_dog_difference"] = check_export(load_classifier(hub, version, settings),
                                                          hub.download(version) / ONNX_FILE)
        if arguments.promote:
            hub.promote(version)
    print(json.dumps({"version": version, "exported_from": source, "production": hub.production(), **result},
                     indent=2))


def export_int8(folder: Path, metrics: dict, data_dirs: list[str], settings, calibration_photos: int) -> dict:
    """Write folder/model.int8.onnx from folder/model.onnx: calibrated on training photos of the version's own
    split, checked on its validation photos; what the check measured."""
    import numpy as np

    from .images import ImageLimits
    from .quantize import check_int8, decoded, quantize_export, version_photos

    size = read_image_size(folder)
    limits = ImageLimits.from_settings(settings)
    calibration, validation = version_photos(metrics, data_dirs, settings, calibration_photos)
    quantize_export(folder / ONNX_FILE, folder / INT8_ONNX_FILE, decoded(calibration, size, limits))
    photos = list(decoded(validation, size, limits))
    checked = check_int8(folder / ONNX_FILE, folder / INT8_ONNX_FILE,
                         np.stack(photos) if photos else np.zeros((0, size, size, 3), np.uint8))
    return {**checked, "checked_on": "validation split", "calibration_photos": len(calibration)}


if __name__ == "__main__":
    main(sys.argv[1:])
