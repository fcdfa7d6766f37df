"""Classify images with the production model: python -m catdog_model photo.jpg [more.jpg ...]"""

import json
import sys

from .cli import user_errors
from .config import Settings
from .classifier import load_classifier
from .hub import open_hub
from .images import InvalidImage


def main(paths: list[str]) -> None:
    if not paths:
        sys.exit(__doc__)
    with user_errors():
        settings = Settings.from_env()
        classifier = load_classifier(open_hub(settings), "production", settings)
    for path in paths:
        try:
            prediction = classifier.predict(path)[0]
            print(json.dumps({"file": path, "label": prediction.label, "p_dog": round(prediction.p_dog, 4),
                              "version": prediction.version, "flags": list(prediction.flags)}))
        except InvalidImage as error:
            print(json.dumps({"file": path, "error": str(error)}))


main(sys.argv[1:])
