"""How often the heat map points at the animal: on photos of cats/ and dogs/, the share whose hardest push
towards the predicted label lies in the photo's centre box (a random peak would land there ~31 % of the time).

    python -m catdog explain --data-dir ../shared/data/cats_vs_dogs --photos 60 [--out assets/heatmap.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
from PIL import Image

from . import LABELS
from .cli import open_version, user_errors
from .data import load_folder
from .errors import ServiceError
from .explain import Explanation, peak_in_centre
from .hub import PRODUCTION
from .images import InvalidImage
from .serving import ServingModel


def explain_photos(model: ServingModel, photos: list[bytes]) -> list[Explanation | None]:
    """An Explanation per photo; None for one that cannot be decoded."""
    explanations = []
    for photo in photos:
        try:
            explanations.append(model.explain(photo))
        except InvalidImage:
            explanations.append(None)
    return explanations


def centre_rate(explanations: list[Explanation | None]) -> float:
    return float(np.mean([peak_in_centre(item.activation, item.prediction.label)
                          for item in explanations if item is not None]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="catdog explain", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder with class subfolders cats/ and dogs/")
    parser.add_argument("--photos", type=int, default=60, help="how many, half of each class, chosen by --seed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default=PRODUCTION)
    parser.add_argument("--out", help="write a strip of the first six overlays to this PNG")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    with user_errors():
        _, hub, version = open_version(arguments.version)
        model = ServingModel.load(hub.download(version), version)
        examples = load_folder(arguments.data_dir).examples
        chooser = random.Random(arguments.seed)
        by_label = {label: [example for example in examples if example.label == label] for label in LABELS}
        if arguments.photos < 2 or arguments.photos // 2 > min(len(found) for found in by_label.values()):
            raise ServiceError(f"--photos must be between 2 and twice the smaller class "
                               f"({2 * min(len(found) for found in by_label.values())} here).")
        chosen = [example for label in LABELS for example in chooser.sample(by_label[label], arguments.photos // 2)]
        explanations = explain_photos(model, [example.data for example in chosen])
    kept = [(item, example) for item, example in zip(explanations, chosen) if item is not None]
    explanations = [item for item, _ in kept]
    correct = sum(item.prediction.label == example.label for item, example in kept)
    result = {"version": version, "photos": len(explanations), "undecodable": len(chosen) - len(explanations),
              "peak_in_centre": round(centre_rate(explanations), 3), "correct": correct}
    if arguments.out:
        strip = np.concatenate([item.overlay() for item in explanations[::max(1, len(explanations) // 6)][:6]], axis=1)
        Image.fromarray(strip).save(arguments.out)
        result["out"] = arguments.out
    print(json.dumps(result, indent=2) if arguments.json else
          f"{version}: the hardest push lies in the centre box for {result['peak_in_centre']:.0%} of "
          f"{len(explanations)} photos (random: ~31 %)")
