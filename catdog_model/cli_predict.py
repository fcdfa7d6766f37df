"""Classify photos with a version's serving export, one JSON line each: catdog predict photo.jpg [more.jpg …]"""

import argparse
import json
import sys

from .cli import open_version, user_errors
from .images import ImageLimits, InvalidImage
from .serving import ServingModel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="catdog predict", description=__doc__.split(":")[0] + "; exit status 1 "
                                     "if any file could not be classified (its line says why).")
    parser.add_argument("photos", nargs="+", help="image files")
    parser.add_argument("--version", default="production", help="the model version (default: production)")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)
    with user_errors():
        settings, hub, version = open_version(arguments.version)
        model = ServingModel.load(hub.download(version), version, low_confidence=settings.low_confidence,
                                  limits=ImageLimits.from_settings(settings))
    failed = False
    for path in arguments.photos:
        try:
            prediction = model.predict_one(path)
            print(json.dumps({"file": path, "label": prediction.label, "p_dog": round(prediction.p_dog, 4),
                              "version": prediction.version, "flags": list(prediction.flags)}))
        except InvalidImage as error:
            print(json.dumps({"file": path, "error": str(error)}))
            failed = True
    if failed:
        sys.exit(1)
