"""How far averaging versions goes: each version's mistakes on a split, alone and averaged with its mirror image,
then the mean of the first k versions' mirror-averaged p(dog), k = 2 … N — what an ensemble would serve at 2 × k
times a version's cost, and the most that distilling such a teacher into one model could pass on.

    python -m bench.ensemble --data-dir ../shared/data/cats_vs_dogs --data-dir ../shared/data/cats_vs_dogs_more \
        --version v5 --version v9 [--version …] [--split validation] [--json]

The versions must have cut their data alike (the same split seed and fractions: same-seed training runs do).
Choose a teacher on --split validation; read test once, afterwards.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from catdog_model.cli import open_version, user_errors
from catdog_model.data import load_folders, version_splits
from catdog_model.data_decisions import DataDecisions
from catdog_model.errors import ServiceError
from catdog_model.images import ImageLimits
from catdog_model.layout import ONNX_FILE
from catdog_model.quantize import decoded, p_dog
from catdog_model.serving import read_image_size
from catdog_model.version_metrics import read_metrics

SPLIT_KEYS = ("split_seed", "validation_fraction", "test_fraction")


def mistakes_table(answers: dict[str, tuple[np.ndarray, np.ndarray]], dogs: np.ndarray) -> list[dict]:
    """Rows of mistakes: each version's (p(dog) plain, mirrored) alone and mirror-averaged, then the mean of the
    first k versions' mirror-averaged p(dog) for k = 2 … N, in the order given."""
    def wrong(p_dog_values: np.ndarray) -> int:
        return int(np.sum((p_dog_values >= 0.5) != dogs))

    averaged = {version: (plain + mirrored) / 2 for version, (plain, mirrored) in answers.items()}
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
        settings, hub, _ = open_version("production")
        versions = [hub.resolve(version) for version in arguments.version]
        data = {version: read_metrics(hub, version)["data"] for version in versions}
        cuts = {tuple(data[version][key] for key in SPLIT_KEYS) for version in versions}
        if len(cuts) > 1:
            raise ServiceError(f"{', '.join(versions)} cut their data differently ({', '.join(SPLIT_KEYS)}): "
                               "compare versions trained with the same seed and fractions.")
        examples = DataDecisions(settings.data_dir).apply(load_folders(arguments.data_dir)).examples
        chosen = getattr(version_splits(examples, data[versions[0]]), arguments.split)
        limits = ImageLimits.from_settings(settings)
        answers, dogs = {}, None
        for version in versions:
            folder = hub.download(version)
            kept = [(image, example.label == "dog") for example in chosen
                    for image in decoded([example], read_image_size(folder), limits)]
            images = np.stack([image for image, _ in kept])
            dogs = np.array([dog for _, dog in kept])
            answers[version] = (p_dog(folder / ONNX_FILE, images),
                                p_dog(folder / ONNX_FILE, np.ascontiguousarray(images[:, :, ::-1])))
        rows = mistakes_table(answers, dogs)
    if arguments.json:
        print(json.dumps({"split": arguments.split, "photos": len(dogs), "rows": rows}))
        return
    print(f"{len(dogs)} {arguments.split} photos")
    for row in rows:
        alone = f"{row['mistakes']} mistakes, " if "mistakes" in row else ""
        print(f"  {' + '.join(row['models'])}: {alone}{row['mirror_averaged_mistakes']} mirror-averaged")


if __name__ == "__main__":
    main()
