"""Which of a version's convolutions to keep in float in its int8 export: for each count of first convolutions
kept in float, the int8 export's accuracy on the version's validation photos against the float export's, the
labels they agree on, the largest |Δ p(dog)|, and the model alone's speed on one ONNX Runtime thread.

    python -m bench.int8_choice --data-dir ../shared/data/cats_vs_dogs --data-dir ../shared/data/cats_vs_dogs_more \
        [--version production] [--float-convolutions 1,5,9,13] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from catdog_model.cli import open_version, user_errors
from catdog_model.images import ImageLimits
from catdog_model.layout import ONNX_FILE
from catdog_model.quantize import FLOAT_CONVOLUTIONS, agreement, decoded, p_dog, quantize_export, version_photos
from catdog_model.serving import onnx_session


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.int8_choice", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", action="append", required=True, help="the folders the version was trained on")
    parser.add_argument("--version", default="production")
    parser.add_argument("--float-convolutions", default=f"1,5,{FLOAT_CONVOLUTIONS},13",
                        help="counts to try, comma-separated")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    arguments = parser.parse_args(argv)
    with user_errors():
        settings, hub, version = open_version(arguments.version)
        folder = hub.download(version)
        size = json.loads((folder / "config.json").read_text())["backbone"]["image_size"]
        limits = ImageLimits.from_settings(settings)
        calibration, validation = version_photos(hub.metrics(version), arguments.data_dir, settings)
        kept = [(image, example.label == "dog") for example in validation for image in decoded([example], size, limits)]
        images, truth = np.stack([image for image, _ in kept]), np.array([dog for _, dog in kept])
        float_answers = p_dog(folder / ONNX_FILE, images)
        rows = [{"float_convolutions": "all (the float export)",
                 "validation_accuracy": round(float(np.mean((float_answers >= 0.5) == truth)), 4),
                 **speed(folder / ONNX_FILE, images)}]
        for count in (int(value) for value in arguments.float_convolutions.split(",")):
            with tempfile.TemporaryDirectory() as temporary:
                int8 = Path(temporary) / "model.int8.onnx"
                quantize_export(folder / ONNX_FILE, int8, decoded(calibration, size, limits), count)
                int8_answers = p_dog(int8, images)
                compared = agreement(float_answers, int8_answers)
                rows.append({"float_convolutions": count,
                             "validation_accuracy": round(float(np.mean((int8_answers >= 0.5) == truth)), 4),
                             "agreement": compared["agreement"],
                             "max_p_dog_difference": compared["max_p_dog_difference"], **speed(int8, images)})
    if arguments.json:
        print(json.dumps({"version": version, "validation_photos": len(images), "rows": rows}))
        return
    print(f"{version}, {len(images)} validation photos")
    for row in rows:
        print("  " + ", ".join(f"{key} {value}" for key, value in row.items()))


if __name__ == "__main__":
    main()
