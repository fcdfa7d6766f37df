"""Publish a version's serving export: the same files (weights, metrics, plots, novelty reference) plus
model.onnx, checked against the Keras model, as the hub's next version — versions are never rewritten.

    python -m catdog export --version v3 [--promote]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from .classifier import load_classifier
from .cli import open_version, user_errors
from .export import check_export, export_onnx
from .layout import CARD_FILE, METRICS_FILE, ONNX_FILE
from .training import push_version


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="catdog export", description=__doc__.split("\n")[0])
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
            metrics["command"] = shlex.join(["python", "-m", "catdog", "export", *argv])
            (folder / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
            version = push_version(folder, hub, settings.model_name, metrics)
        difference = check_export(load_classifier(hub, version, settings), hub.download(version) / ONNX_FILE)
        if arguments.promote:
            hub.promote(version)
    print(json.dumps({"version": version, "exported_from": source, "production": hub.production(),
                      "max_p_dog_difference": difference}, indent=2))
