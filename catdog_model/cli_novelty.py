"""How well the production model's "unfamiliar" flag separates cats and dogs from other pictures.

In-distribution: the held-out test photos. Other pictures: the photos that ship inside installed packages
(matplotlib, gradio, scikit-learn — a person, cheetahs, a lion, a toy, a tower, a flower, a temple) and three
synthetic images (noise, flat gray, a gradient).

    python -m catdog novelty --data-dir ../shared/data/cats_vs_dogs [--json]
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path

import numpy as np

from .cli import open_version, user_errors
from .errors import ServiceError
from .data import load_folder, version_splits
from .classifier import load_classifier
from .hub import PRODUCTION
from .version_metrics import read_metrics


def package_photos() -> list[Path]:
    found = [resources.files("matplotlib") / "mpl-data" / "sample_data" / "grace_hopper.jpg",
             resources.files("sklearn") / "datasets" / "images" / "china.jpg",
             resources.files("sklearn") / "datasets" / "images" / "flower.jpg",
             resources.files("gradio") / "test_data" / "cheetah2.jpg"]
    found += sorted((resources.files("gradio") / "media_assets" / "images").glob("*.jp*g"))
    return [Path(str(path)) for path in found if Path(str(path)).is_file()]


def synthetic_images(size: int = 288) -> dict[str, np.ndarray]:
    gradient = np.tile(np.linspace(0, 255, size, dtype=np.uint8)[None, :, None], (size, 1, 3))
    return {"noise": np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8),
            "flat gray": np.full((size, size, 3), 128, np.uint8), "gradient": gradient}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="catdog novelty", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, help="the folder the version was trained on")
    parser.add_argument("--version", default=PRODUCTION)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    with user_errors():
        settings, hub, version = open_version(arguments.version)
        classifier = load_classifier(hub, version, settings)
        if classifier.novelty is None:
            raise ServiceError(f"{version} has no novelty detector (trained before it existed).")
        test = version_splits(load_folder(arguments.data_dir).examples, read_metrics(hub, version)["data"]).test
        test_flagged = sum("unfamiliar" in p.flags for p in classifier.predict([example.data for example in test]))
        others = {path.name: path for path in package_photos()} | synthetic_images(classifier.spec.image_size)
        predictions = dict(zip(others, classifier.predict(list(others.values()))))
    result = {"version": version, "threshold": classifier.novelty.threshold,
              "test_photos": len(test), "test_flagged": test_flagged,
              "other_images": len(others), "other_flagged": sum("unfamiliar" in p.flags for p in predictions.values()),
              "others": {name: {"label": p.label, "novelty": p.novelty, "unfamiliar": "unfamiliar" in p.flags}
                         for name, p in predictions.items()}}
    if arguments.json:
        print(json.dumps(result))
        return
    print(f"{version}: threshold {result['threshold']:.4f}")
    print(f"  cats and dogs (test split): {test_flagged} of {len(test)} flagged unfamiliar")
    print(f"  other images: {result['other_flagged']} of {len(others)} flagged unfamiliar")
    for name, values in result["others"].items():
        print(f"    {name:<22} novelty {values['novelty']:.4f}  {'unfamiliar' if values['unfamiliar'] else 'passes'}"
              f"  (labelled {values['label']})")
