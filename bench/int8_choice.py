"""Which of a version's convolutions to keep in float in its int8 export. For each set of convolutions kept in
float, the int8 export's accuracy on the version's validation photos against the float export's, the labels
they agree on, |Δ p(dog)| (largest and mean), and the model alone's speed on one ONNX Runtime thread. With
--sensitivity, first each convolution quantized alone (all else float), ranked by the mean |Δ p(dog)| it causes.

    python -m bench.int8_choice --data-dir ../shared/data/cats_vs_dogs --data-dir ../shared/data/cats_vs_dogs_more \
        [--version production] [--float-convolutions "0-8;0-12;0-9,20,30,36"] [--sensitivity] [--json]

Convolutions are numbered by their place from the input (0); a set is a comma-separated list of places and
ranges.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from catdog_model.cli import open_version, user_errors
from catdog_model.images import ImageLimits
from catdog_model.layout import INT8_ONNX_FILE, ONNX_FILE
from catdog_model.quantize import (FLOAT_CONVOLUTIONS, agreement, convolutions, convolutions_at, decoded, p_dog,
                                   quantize_export, version_photos)
from catdog_model.serving import onnx_session, read_image_size
from catdog_model.version_metrics import read_metrics


def speed(path: Path, images: np.ndarray) -> dict:
    session = onnx_session(path, threads=1)
    session.run(["p_dog"], {"image": images[:32]})
    latencies = []
    for index in range(200):
        started = time.perf_counter()
        session.run(["p_dog", "embedding"], {"image": images[index % len(images)][np.newaxis]})
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, 320, 32):
        session.run(["p_dog", "embedding"], {"image": images[start:start + 32]})
    return {"one_p50_ms": round(1000 * float(np.median(latencies)), 2),
            "batch32_images_per_s": round(320 / (time.perf_counter() - started), 1)}


def place_sets(text: str) -> list[tuple[int, ...]]:
    """'0-8;0-9,20,30' → [(0, …, 8), (0, …, 9, 20, 30)]: sets separated by ';', each places and ranges
    separated by ','; argparse's sentence for anything else."""
    sets = []
    for written_set in text.split(";"):
        chosen = set()
        for part in written_set.split(","):
            first, dash, last = part.strip().partition("-")
            if not first.isdigit() or (dash and not last.isdigit()) or int(last or first) < int(first):
                raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a place (5) or a range (0-9) of "
                                                 "convolutions, counted from the input")
            chosen.update(range(int(first), int(last or first) + 1))
        sets.append(tuple(sorted(chosen)))
    return sets


def written(chosen: tuple[int, ...]) -> str:
    """(0, 1, …, 9, 20, 30) → '0-9,20,30'."""
    runs = []
    for place in sorted(chosen):
        if runs and place == runs[-1][1] + 1:
            runs[-1][1] = place
        else:
            runs.append([place, place])
    return ",".join(f"{first}-{last}" if last > first else str(first) for first, last in runs)


@contextlib.contextmanager
def quantized(fp32: Path, calibration: list, images: np.ndarray, **chosen):
    """p(dog) of an int8 export made with quantize_export's chosen convolutions, and the export, which is
    removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="catdog-int8-") as folder:
        int8 = Path(folder) / INT8_ONNX_FILE
        quantize_export(fp32, int8, iter(calibration), **chosen)
        yield p_dog(int8, images), int8


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.int8_choice", description=__doc__.split(".")[0] + ".")
    parser.add_argument("--data-dir", action="append", required=True, help="the folders the version was trained on")
    parser.add_argument("--version", default="production")
    parser.add_argument("--float-convolutions", type=place_sets, default=f"0-8;0-12;{written(FLOAT_CONVOLUTIONS)}",
                        help="sets of convolutions kept in float, separated by ';' (default: the first 9, the first "
                             "13, and the export's own)")
    parser.add_argument("--sensitivity", action="store_true",
                        help="first rank the convolutions by what each, quantized alone, moves p(dog)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    arguments = parser.parse_args(argv)
    with user_errors():
        settings, hub, version = open_version(arguments.version)
        folder = hub.download(version)
        fp32 = folder / ONNX_FILE
        model = onnx.load(str(fp32))
        # A place the model does not have is refused before the photos are decoded.
        convolutions_at(model, sorted(set().union(*arguments.float_convolutions)))
        size = read_image_size(folder)
        limits = ImageLimits.from_settings(settings)
        calibration, validation = version_photos(read_metrics(hub, version), arguments.data_dir, settings)
        calibration = list(decoded(calibration, size, limits))
        kept = [(image, example.label == "dog") for example in validation for image in decoded([example], size, limits)]
        images, truth = np.stack([image for image, _ in kept]), np.array([dog for _, dog in kept])
        float_answers = p_dog(fp32, images)
        sensitivity = []
        if arguments.sensitivity:
            for place in range(len(convolutions(model))):
                with quantized(fp32, calibration, images, quantized_convolutions=(place,)) as (int8_answers, _):
                    sensitivity.append({"convolution": place, **agreement(float_answers, int8_answers)})
            sensitivity.sort(key=lambda row: -row["mean_p_dog_difference"])
        rows = [{"float_convolutions": "all (the float export)",
                 "validation_accuracy": round(float(np.mean((float_answers >= 0.5) == truth)), 4),
                 **speed(fp32, images)}]
        for chosen in arguments.float_convolutions:
            with quantized(fp32, calibration, images, float_convolutions=chosen) as (int8_answers, int8):
                compared = agreement(float_answers, int8_answers)
                rows.append({"float_convolutions": written(chosen),
                             "validation_accuracy": round(float(np.mean((int8_answers >= 0.5) == truth)), 4),
                             "agreement": compared["agreement"],
                             "max_p_dog_difference": compared["max_p_dog_difference"],
                             "mean_p_dog_difference": compared["mean_p_dog_difference"], **speed(int8, images)})
    if arguments.json:
        print(json.dumps({"version": version, "validation_photos": len(images), "sensitivity": sensitivity,
                          "rows": rows}))
        return
    print(f"{version}, {len(images)} validation photos")
    for row in sensitivity:
        print(f"  convolution {row['convolution']} alone in int8: mean |Δ p(dog)| {row['mean_p_dog_difference']}, "
              f"largest {row['max_p_dog_difference']}, labels agreeing {row['agreement']}")
    for row in rows:
        print("  " + ", ".join(f"{key} {value}" for key, value in row.items()))


if __name__ == "__main__":
    main()
