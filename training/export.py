"""Publish a version's serving export: the same files (weights, metrics, plots, novelty reference) plus
model.onnx, checked against the Keras model, as the hub's next version — versions are never rewritten.

    python -m training.export --version v3 [--promote]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from catdog_model.card import render_model_card
from catdog_model.classifier import load_classifier, seal_version_files
from catdog_model.cli import open_version, user_errors
from catdog_model.export import ONNX_FILE, check_export, export_onnx
from catdog_model.hub import CARD_FILE, METRICS_FILE


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n")[0])
    parser.add_argument("--version", default="production", help="the version to export (default: production)")
    parser.add_argument("--promote", action="store_true", help="make the new version production")
    arguments = parser.parse_args(argv)
    with user_errors():
        settings, hub, source = open_version(arguments.version)
        classifier = load_classifier(hub, source, settings)
        with tempfile.TemporaryDirectory() as folder:
            folder = Path(folder) / "version"
            shutil.copytree(hub.download(source), folder, ignore=shutil.ignore_patterns(CARD_FILE, ONNX_FILE))
            for path in folder.iterdir():
                path.chmod(0o644)
            export_onnx(classifier, folder)
            metrics = json.loads((folder / METRICS_FILE).read_text())
            metrics["exported_from"] = source
            metrics["command"] = shlex.join(["python", "-m", "training.export", *argv])
            (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
            seal_version_files(folder)
            config = json.loads((folder / "config.json").read_text())
            version = hub.push(folder, write_card=lambda version: render_model_card(
                settings.model_name, version, config, metrics))
        difference = check_export(load_classifier(hub, version, settings), hub.download(version) / ONNX_FILE)
        if arguments.promote:
            hub.promote(version)
    print(json.dumps({"version": version, "exported_from": source, "production": hub.production(),
                      "max_p_dog_difference": difference}, indent=2))


if __name__ == "__main__":
    main()
