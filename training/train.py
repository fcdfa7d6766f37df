"""Train a head on folders of cats/ and dogs/ (or a `datasets` dataset) and publish it as a new model version;
with --fine-tune, then also train the top of the backbone (two-phase transfer learning).

    python -m training.train --data-dir ../shared/data/cats_vs_dogs [--data-dir MORE …] [--fine-tune]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from catdog_model.cli import ProgressBars, user_errors
from catdog_model.config import Settings
from catdog_model.data import deduplicate, load_folder, load_hf_dataset
from catdog_model.finetune import FineTuneConfig
from catdog_model.hub import open_hub
from catdog_model.training import TrainingConfig, publish, train


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    defaults = TrainingConfig()
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", action="append",
                        help="folder with class subfolders cats/ and dogs/ (or cat/ and dog/); repeat for more")
    source.add_argument("--hf-dataset", help="a `datasets` name or local folder, with image and label columns")
    parser.add_argument("--hf-split", default="train", help="split of --hf-dataset (default: train)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="upper bound; early stopping ends sooner")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--dropout-rate", type=float, default=defaults.dropout_rate)
    parser.add_argument("--hidden-units", type=int, default=defaults.hidden_units, help="0: a linear head")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="do not train on mirror images")
    parser.add_argument("--tta", choices=["auto", "on", "off"], default=defaults.tta,
                        help="average with the mirror image at prediction time (auto: if validation says so)")
    parser.add_argument("--alpha", type=float, default=defaults.alpha, choices=[0.35, 0.5], help="MobileNetV2 width")
    parser.add_argument("--image-size", type=int, default=defaults.image_size, help="input side in pixels")
    parser.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    tuning = FineTuneConfig()
    parser.add_argument("--fine-tune", action="store_true", help="phase 2: train the top of the backbone too")
    parser.add_argument("--fine-tune-blocks", type=int, default=tuning.blocks,
                        help="MobileNetV2 blocks unfrozen from the top (Conv_1 always)")
    parser.add_argument("--fine-tune-epochs", type=int, default=tuning.epochs, help="upper bound; early stopping")
    parser.add_argument("--fine-tune-learning-rate", type=float, default=tuning.learning_rate)
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
        config = TrainingConfig(
            seed=arguments.seed, epochs=arguments.epochs, batch_size=arguments.batch_size,
            learning_rate=arguments.learning_rate, dropout_rate=arguments.dropout_rate,
            hidden_units=arguments.hidden_units, augment=arguments.augment, tta=arguments.tta,
            validation_fraction=arguments.validation_fraction, test_fraction=arguments.test_fraction,
            alpha=arguments.alpha, image_size=arguments.image_size)
        source = " + ".join(arguments.data_dir) if arguments.data_dir else arguments.hf_dataset
        dataset = (deduplicate([example for folder in arguments.data_dir for example in load_folder(folder).examples])
                   if arguments.data_dir else load_hf_dataset(arguments.hf_dataset, split=arguments.hf_split))
        fine_tuning = FineTuneConfig(blocks=arguments.fine_tune_blocks, epochs=arguments.fine_tune_epochs,
                                     learning_rate=arguments.fine_tune_learning_rate) if arguments.fine_tune else None
        print(f"{source}: {len(dataset.examples)} images {dataset.counts()}, "
              f"{len(dataset.duplicates)} duplicate(s) skipped", file=sys.stderr)
        progress = ProgressBars()
        trained = train(dataset, settings, config, progress=progress, source=source,
                        command=shlex.join(["python", "-m", "training.train", *argv]), fine_tuning=fine_tuning)
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


if __name__ == "__main__":
    main()
