"""The int8 serving export: ONNX Runtime's static quantization of a version's model.onnx — int8 weights per
channel, uint8 activations with ranges calibrated on training photos (QDQ) — published beside it as
model.int8.onnx once it agrees with the float export on the version's validation photos. The input's
rescaling, the pooling, the head and thirteen convolutions stay in float — the first ten, and three later ones
that cost most quantized alone — chosen as the set that kept v5's validation p(dog) closest to the float
export's (docs/experiments.md). Served when CATDOG_SERVING_PRECISION=int8."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import CatdogError
from .export import ExportError

CALIBRATION_PHOTOS = 200  # 1,000 calibrated no closer to the float export on v5's validation photos (mean |Δp|)
# The convolutions kept in float, by their place among the graph's convolutions counted from the input (0): the
# first ten, and the three later ones that, each quantized alone, moved v5's validation p(dog) most
# (python -m bench.int8_choice --sensitivity); chosen on validation (docs/experiments.md).
FLOAT_CONVOLUTIONS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 30, 36)
FLOAT_NODES = ("rescaling", "global_average_pooling", "head_")  # kept in float too, by the node's name
MIN_AGREEMENT = 0.99  # of the check photos' labels, int8 against float
MAX_P_DOG_DIFFERENCE = 0.75  # on any check photo (v5: 0.24 at most; with only its first convolution in float: 0.84)
MIN_CHECK_PHOTOS = 50  # the validation photos an int8 export is checked on, at least


def convolutions(model) -> list[str]:
    """An ONNX model's convolutions' node names, from the input (an ONNX graph lists its nodes in order; ONNX
    Runtime's preparation for quantization keeps them, as tests/test_quantize.py checks)."""
    return [node.name for node in model.graph.node if node.op_type == "Conv"]


def convolutions_at(model, places: Sequence[int]) -> list[str]:
    """The names of the model's convolutions at these places; CatdogError for a place it does not have."""
    names = convolutions(model)
    missing = [str(place) for place in places if not 0 <= place < len(names)]
    if missing:
        raise CatdogError(f"This model's convolutions are numbered 0 to {len(names) - 1}; it has no "
                          f"{', '.join(missing)}.")
    return [names[place] for place in places]


def float_nodes(model, float_convolutions: Sequence[int] = FLOAT_CONVOLUTIONS) -> list[str]:
    """The nodes of an ONNX model that stay in float: those named in FLOAT_NODES, and the convolutions at the
    places float_convolutions names."""
    return ([node.name for node in model.graph.node if any(part in node.name for part in FLOAT_NODES)]
            + convolutions_at(model, float_convolutions))


def quantize_export(fp32: Path, int8: Path, calibration: Iterable[np.ndarray],
                    float_convolutions: Sequence[int] = FLOAT_CONVOLUTIONS,
                    quantized_convolutions: Sequence[int] | None = None) -> None:
    """Write int8 from the float export fp32, activation ranges from the calibration images (uint8 arrays
    (size, size, 3)). quantized_convolutions, when given, quantizes those convolutions alone, everything else
    in float (to measure what each costs; float_convolutions is then moot)."""
    if quantized_convolutions is not None and not quantized_convolutions:
        raise CatdogError("Name at least one convolution to quantize alone.")
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Photos(CalibrationDataReader):
        def __init__(self):
            self.images = iter(calibration)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {"image": image[np.newaxis]}

    prepared = Path(int8).with_suffix(".prepared.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        alone = quantized_convolutions is not None
        # ONNX Runtime reads an empty nodes_to_quantize as "all", and lets nodes_to_exclude win over it.
        quantize_static(str(prepared), str(int8), Photos(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=float_nodes(model, () if alone else float_convolutions),
                        nodes_to_quantize=convolutions_at(model, quantized_convolutions) if alone else None)
    finally:
        prepared.unlink(missing_ok=True)


def version_photos(metrics: dict, data_dirs: list[str], settings, calibration_photos: int = CALIBRATION_PHOTOS
                   ) -> tuple[list, list]:
    """The photos that calibrate (calibration_photos of the version's training split, drawn by its seed) and
    check (its validation split) an int8 export: Examples, cut as its training cut the folders."""
    import random

    from .data import load_folders, version_splits
    from .data_decisions import DataDecisions
    from .errors import ServiceError

    splits = version_splits(DataDecisions(settings.data_dir).apply(load_folders(data_dirs)).examples, metrics["data"])
    if not splits.train or len(splits.validation) < MIN_CHECK_PHOTOS:
        raise ServiceError(f"{' + '.join(data_dirs)} gives this version {len(splits.validation)} validation photos "
                           f"to check an int8 export on ({MIN_CHECK_PHOTOS} needed): give the folders it was trained "
                           f"on ({metrics['data']['source']}).")
    sample = random.Random(metrics["data"]["split_seed"]).sample(splits.train, min(calibration_photos,
                                                                                   len(splits.train)))
    return sample, splits.validation


def decoded(examples, size: int, limits) -> Iterable[np.ndarray]:
    """The examples' images at the model's input size, one at a time; those that do not decode left out."""
    from .images import InvalidImage, load_image

    for example in examples:
        try:
            yield load_image(example.content, size=size, limits=limits)
        except InvalidImage:
            continue


def p_dog(export: Path, photos: np.ndarray) -> np.ndarray:
    """An export's p(dog) for photos, 32 at a time on one session."""
    from .serving import onnx_session

    session = onnx_session(export, threads=0)
    return np.concatenate([session.run(["p_dog"], {"image": photos[start:start + 32]})[0]
                           for start in range(0, len(photos), 32)])


def agreement(float_answers: np.ndarray, int8_answers: np.ndarray) -> dict:
    """The share of labels the two exports' answers agree on, and how far p(dog) moved."""
    difference = np.abs(float_answers - int8_answers)
    return {"photos": len(float_answers),
            "agreement": round(float(np.mean((float_answers >= 0.5) == (int8_answers >= 0.5))), 4),
            "max_p_dog_difference": round(float(difference.max()), 4),
            "mean_p_dog_difference": round(float(difference.mean()), 5)}


def compare_exports(fp32: Path, int8: Path, photos: np.ndarray) -> dict:
    """How the int8 export answers against the float one on photos: label agreement and |Δ p(dog)|."""
    return agreement(p_dog(fp32, photos), p_dog(int8, photos))


def check_int8(fp32: Path, int8: Path, photos: np.ndarray) -> dict:
    """compare_exports, and ExportError when the int8 export disagrees: fewer than MIN_AGREEMENT of the labels,
    or a photo's p(dog) moved by more than MAX_P_DOG_DIFFERENCE."""
    if len(photos) < MIN_CHECK_PHOTOS:
        raise CatdogError(f"The int8 export is checked on {MIN_CHECK_PHOTOS} photos at least; {len(photos)} were "
                          "given (or decoded).")
    compared = compare_exports(fp32, int8, photos)
    if compared["agreement"] < MIN_AGREEMENT or not compared["max_p_dog_difference"] <= MAX_P_DOG_DIFFERENCE:
        raise ExportError(f"The int8 export agrees with the float export on {compared['agreement']:.1%} of "
                          f"{compared['photos']} photos (at least {MIN_AGREEMENT:.0%} needed), p(dog) moving by "
                          f"up to {compared['max_p_dog_difference']:.2f} (at most {MAX_P_DOG_DIFFERENCE} allowed); "
                          "it was not published.")
    return compared
