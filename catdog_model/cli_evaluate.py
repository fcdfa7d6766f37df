"""Evaluate a model version on a folder of cats/ and dogs/: metrics, and confusion-matrix and ROC plots.

    python -m catdog evaluate --data-dir ../shared/data/cats_vs_dogs --json   # its test split; --split all: every photo
    python -m catdog evaluate --data-dir … --split validation --image-size 352   # its weights on larger photos
"""

from __future__ import annotations

import argparse
import json

from .cli import ProgressBars, open_version, user_errors
from .data import load_folders, version_splits
from .data_decisions import DataDecisions, decided
from .evaluation import compute_metrics, save_plots
from .classifier import load_classifier
from .hub import PRODUCTION
from .version_metrics import read_metrics
from .training import embed_examples, embedding_cache


def image_size(text: str) -> int:
    size = int(text) if text.isdigit() else 0
    if not 32 <= size <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size from 32 to 1024 pixels")
    return size


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="catdog evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True, action="append",
                        help="folder with class subfolders cats/ and dogs/; repeat for more")
    parser.add_argument("--version", default=PRODUCTION, help="vN or production (default)")
    parser.add_argument("--split", choices=["test", "validation", "train", "all"], default="test",
                        help="the images of this split, cut as the version's training cut them (default: test, "
                             "the photos it never trained on; all: every photo in the folders)")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--image-size", type=image_size, help="run the version's backbone on photos of this size "
                        "rather than the size it trained at (a larger one: FixRes; serving stays at its own)")
    parser.add_argument("--out", help="folder for confusion_matrix.png and roc_curve.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    with user_errors():
        settings, hub, version = open_version(arguments.version)
        classifier = load_classifier(hub, version, settings)
        if arguments.image_size:
            classifier = classifier.at_image_size(arguments.image_size)
        dataset = DataDecisions(settings.data_dir).apply(load_folders(arguments.data_dir))  # as training saw it
        examples = dataset.examples
        if arguments.split != "all":
            examples = getattr(version_splits(examples, read_metrics(hub, version)["data"]), arguments.split)
        progress = ProgressBars()
        embeddings, kept, rejected = embed_examples(classifier.backbone, examples, embedding_cache(settings),
                                                    classifier.views(), progress)
        progress.close()
        labels = [example.label for example in kept]
        p_dog = classifier.p_dog_from_embeddings(embeddings)
        result = {**compute_metrics(labels, p_dog), "version": version, "split": arguments.split,
                  "image_size": classifier.image_size,
                  "data_dir": " + ".join(arguments.data_dir), "n_rejected": len(rejected), "rejected": rejected,
                  "decisions_applied": dataset.decisions}
        if arguments.out:
            result["plots"] = [str(path) for path in save_plots(labels, p_dog, arguments.out, title=version)]
    if arguments.json:
        print(json.dumps(result))
        return
    print(f"{version} at {result['image_size']} px on {' + '.join(arguments.data_dir)} ({arguments.split}): "
          f"{result['n_images']} images, "
          f"{result['n_rejected']} rejected{decided(dataset.decisions)}")
    for name in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"):
        value = result[name]
        print(f"  {name:<10} {value:.4f}" if value is not None else f"  {name:<10} n/a")
    (true_cat, false_dog), (false_cat, true_dog) = result["confusion_matrix"]
    print(f"  confusion  true cat → cat {true_cat}, dog {false_dog}; true dog → cat {false_cat}, dog {true_dog}")
    for path in result.get("plots", []):
        print(f"  plot       {path}")
