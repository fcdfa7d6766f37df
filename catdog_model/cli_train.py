"""Train a head on folders of cats/ and dogs/ (or a `datasets` dataset) and publish it as a new model version;
with --fine-tune, then also train the top of the backbone (two-phase transfer learning).

    python -m catdog train --data-dir ../shared/data/cats_vs_dogs [--data-dir MORE …] [--fine-tune]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from .cli import ProgressBars, add_config_options, config_from_options, user_errors
from .config import Settings
from .data import load_folders, load_hf_dataset
from .data_decisions import DataDecisions, decided
from .finetune import FineTuneConfig
from .hub import open_hub
from .training import TrainingConfig, publish, train


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="catdog train", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", action="append",
                        help="folder with class subfolders cats/ and dogs/ (or cat/ and dog/); repeat for more")
    source.add_argument("--hf-dataset", help="a `datasets` name or local folder, with image and label columns")
    parser.add_argument("--hf-split", default="train", help="split of --hf-dataset (default: train)")
    add_config_options(parser, TrainingConfig)
    parser.add_argument("--fine-tune", action="store_true", help="phase 2: train the top of the backbone too")
    add_config_options(parser, FineTuneConfig, prefix="fine-tune-")
    promotion = parser.add_mutually_exclusive_group()
    promotion.add_argument("--promote", dest="promote", action="store_true", default=None,
                           help="make the new version production (default: only if there is none)")
    promotion.add_argument("--no-promote", dest="promote", action="store_false")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    arguments = parse_arguments(argv)
    with user_errors():
        settings = Settings.from_env()
        config = config_from_options(arguments, TrainingConfig)
        source = " + ".join(arguments.data_dir) if arguments.data_dir else arguments.hf_dataset
        dataset = DataDecisions(settings.data_dir).apply(
            load_folders(arguments.data_dir) if arguments.data_dir
            else load_hf_dataset(arguments.hf_dataset, split=arguments.hf_split))
        fine_tuning = config_from_options(arguments, FineTuneConfig, "fine-tune-") if arguments.fine_tune else None
        print(f"{source}: {len(dataset.examples)} images {dataset.counts()}, "
              f"{len(dataset.duplicates)} duplicate(s) skipped{decided(dataset.decisions)}", file=sys.stderr)
        progress = ProgressBars()
        trained = train(dataset, settings, config, progress=progress, source=source,
                        command=shlex.join(["python", "-m", "catdog", "train", *argv]), fine_tuning=fine_tuning)
        progress.close()
        hub = open_hub(settings)
        version = publish(trained, hub, settings.model_name)
        if arguments.promote or (arguments.promote is None and hub.production() is None):
            hub.promote(version)
    test, training = trained.metrics["test"], trained.metrics["training"]
    print(json.dumps({"version": version, "production": hub.production(), "path": str(hub.download(version)),
                      "test_accuracy": test["accuracy"], "test_roc_auc": test["roc_auc"],
                      "test_images": test["n_images"], "tta": training["tta"], "seconds": training["seconds"],
                      "images_embedded": training["images_embedded"]}, indent=2))
