"""How far averaging versions goes: each version's mistakes on a split, alone and averaged with its mirror image,
then the mean of the first k versions' mirror-averaged p(dog), k = 2 … N — what an ensemble would serve at 2 × k
times a version's cost, and what a teacher to distil into one model would know.

    python -m bench.ensemble --data-dir ../shared/data/cats_vs_dogs --data-dir ../shared/data/cats_vs_dogs_more \
        --version v5 --version v7 [--version …] [--split validation] [--json]

Every version must have trained on exactly these photos (the folders, after CATDOG_DATA_DIR's decisions: its
metrics.json's content hash) with the same split seed and fractions, so that none of them has seen the split it
is scored on. A version whose export already averages with its mirror image (tta on) answers alike both ways.
Choose a teacher on --split validation; read test once, afterwards.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from catdog_model.cli import user_errors
from catdog_model.config import Settings
from catdog_model.data import Example, load_folders, version_splits
from catdog_model.data_decisions import DataDecisions, decided
from catdog_model.errors import ServiceError
from catdog_model.hub import open_hub
from catdog_model.images import ImageLimits, InvalidImage, load_image
from catdog_model.layout import ONNX_FILE
from catdog_model.quantize import p_dog
from catdog_model.serving import read_image_size
from catdog_model.version_metrics import read_metrics

SPLIT_KEYS = ("split_seed", "validation_fraction", "test_fraction")


def refuse_other_data(data: dict[str, dict], content_hash: str) -> None:
    """ServiceError unless every version (its metrics.json "data") trained on the photos whose content hash is
    given, cut by one seed and the same fractions: the split is then each version's own held-out photos."""
    other = [version for version, used in data.items() if used["content_hash"] != content_hash]
    if other:
        raise ServiceError(f"{', '.join(other)} trained on other photos than these folders give (after the data "
                           "decisions in CATDOG_DATA_DIR), so the split could hold photos they trained on: compare "
                           "versions trained on the same data.")
    if len({tuple(used[key] for key in SPLIT_KEYS) for used in data.values()}) > 1:
        raise ServiceError(f"These versions cut their data differently ({', '.join(SPLIT_KEYS)}): compare versions "
                           "trained with the same seed and fractions.")


def decoded_at(examples: list[Example], sizes: set[int], limits: ImageLimits) -> tuple[dict[int, np.ndarray],
                                                                                        np.ndarray]:
    """The photos at each size (uint8, N × size × size × 3) and whether each is a dog: only the photos that
    decode at every size, so the arrays of all sizes hold the same photos in the same order."""
    by_size, dogs = {size: [] for size in sizes}, []
    for example in examples:
        data = example.data
        try:
            images = {size: load_image(data, size=size, limits=limits) for size in sizes}
        except InvalidImage:
            continue
        for size, image in images.items():
            by_size[size].append(image)
        dogs.append(example.label == "dog")
    if not dogs:
        raise ServiceError("No photo of this split decodes: give the folders the versions trained on.")
    return {size: np.stack(images) for size, images in by_size.items()}, np.array(dogs)


def mirrored(images: np.ndarray) -> np.ndarray:
    """Each photo (N × height × width × 3) mirrored left to right, as the exports' own averaging mirrors it."""
    return np.ascontiguousarray(images[:, :, ::-1])


def mistakes_table(answers: dict[str, tuple[np.ndarray, np.ndarray]], dogs: np.ndarray) -> list[dict]:
    """Rows of mistakes: each version's (p(dog) plain, mirrored) alone and mirror-averaged, then the mean of the
    first k versions' mirror-averaged p(dog) for k = 2 … N, in the order given."""
    def wrong(p_dog_values: np.ndarray) -> int:
        return int(np.sum((p_dog_values >= 0.5) != dogs))

    averaged = {version: (plain + mirror) / 2 for version, (plain, mirror) in answers.items()}
    rows = [{"models": [version], "mistakes": wrong(plain), "mirror_averaged_mistakes": wrong(averaged[version])}
            for version, (plain, _) in answers.items()]
    versions = list(answers)
    rows += [{"models": versions[:k], "mirror_averaged_mistakes":
              wrong(np.mean([averaged[version] for version in versions[:k]], axis=0))}
             for k in range(2, len(versions) + 1)]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", action="append", required=True, help="the folders the versions trained on")
    parser.add_argument("--version", action="append", required=True, help="a version (vN); repeat, in order")
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    arguments = parser.parse_args(argv)
    with user_errors():
        settings = Settings.from_env()
        hub = open_hub(settings)
        versions = [hub.resolve(version) for version in arguments.version]
        if len(set(versions)) < len(versions):
            raise ServiceError(f"A version is named twice ({', '.join(versions)}): name each once.")
        folders = {version: hub.download(version) for version in versions}
        missing = [version for version, folder in folders.items() if not (folder / ONNX_FILE).is_file()]
        if missing:
            raise ServiceError(f"{', '.join(missing)} has no serving export ({ONNX_FILE}): catdog export "
                               "--version vN publishes one.")
        dataset = DataDecisions(settings.data_dir).apply(load_folders(arguments.data_dir))
        data = {version: read_metrics(hub, version)["data"] for version in versions}
        refuse_other_data(data, dataset.content_hash())
        chosen = getattr(version_splits(dataset.examples, data[versions[0]]), arguments.split)
        sizes = {version: read_image_size(folder) for version, folder in folders.items()}
        images, dogs = decoded_at(chosen, set(sizes.values()), ImageLimits.from_settings(settings))
        answers = {version: (p_dog(folders[version] / ONNX_FILE, images[sizes[version]]),
                             p_dog(folders[version] / ONNX_FILE, mirrored(images[sizes[version]])))
                   for version in versions}
        rows = mistakes_table(answers, dogs)
    if arguments.json:
        print(json.dumps({"split": arguments.split, "photos": len(dogs), "decisions_applied": dataset.decisions,
                          "rows": rows}))
        return
    print(f"{len(dogs)} {arguments.split} photos{decided(dataset.decisions)}")
    for row in rows:
        alone = f"{row['mistakes']} mistakes, " if "mistakes" in row else ""
        print(f"  {' + '.join(row['models'])}: {alone}{row['mirror_averaged_mistakes']} mirror-averaged")


if __name__ == "__main__":
    main()
