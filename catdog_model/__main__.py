"""Classify images with the production model's serving export: python -m catdog_model photo.jpg [more.jpg ...]"""

import json
import sys

from .cli import open_version, user_errors
from .images import InvalidImage
from .serving import ServingModel


def main(paths: list[str] | None = None) -> None:
    paths = sys.argv[1:] if paths is None else paths
    if not paths:
        sys.exit(__doc__)
    with user_errors():
        settings, hub, version = open_version("production")
        model = ServingModel.load(hub.download(version), version, low_confidence=settings.low_confidence,
                                  limits=settings.image_limits())
    for path in paths:
        try:
            prediction = model.predict_one(path)
            print(json.dumps({"file": path, "label": prediction.label, "p_dog": round(prediction.p_dog, 4),
                              "version": prediction.version, "flags": list(prediction.flags)}))
        except InvalidImage as error:
            print(json.dumps({"file": path, "error": str(error)}))


if __name__ == "__main__":
    main()
