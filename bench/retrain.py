"""Retraining from the app, measured as the Retrain tab runs it (the server's Service, its child process):
time end to end cold (an empty embedding cache) and warm (the cache of the run before), the longest time
the status stood still, and the candidate's accuracy beside production's on the trusted photos.

    python -m bench.retrain [--base ../shared/data/cats_vs_dogs] [--uploads ../shared/data/cats_vs_dogs_more]
                            [--per-class 20 100] [--fine-tune] [--json]

For each --per-class count, that many cats and dogs from --uploads (photos the base data does not hold) are
uploaded, then retrained: the first run cold, then warm. Production is the repository's own version, on a
private copy of models/; the trusted photos are the base data's test split, as in the app.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.data import load_folder
from catdog_model.service import Service

SHARED = PROJECT_ROOT.parent / "shared"


def follow(service: Service, fine_tune: bool) -> dict:
    """Start a retraining and poll its status until it ends; the seconds it took and the longest stand-still."""
    started = last_change = time.perf_counter()
    seen, still = None, 0.0
    service.start_retrain(fine_tune)
    while True:
        status = service.retrain_status()
        now = time.perf_counter()
        if (status["stage"], status["done"], len(status["log"])) != seen:
            still, seen, last_change = max(still, now - last_change), (status["stage"], status["done"],
                                                                        len(status["log"])), now
        if not status["running"]:
            return {"seconds": round(now - started, 1), "longest_still_seconds": round(still, 1),
                    "verdict": status["verdict"], "result": status["result"], "error": status["error"]}
        time.sleep(0.2)


def run(base: Path, uploads: Path, per_class: list[int], fine_tune: bool) -> list[dict]:
    photos = load_folder(uploads).examples
    root = Path(tempfile.mkdtemp(prefix="catdog-bench-retrain-"))
    shutil.copytree(PROJECT_ROOT / "models", root / "models", ignore=shutil.ignore_patterns(".lock"))
    settings = dataclasses.replace(Settings.from_env(), models_dir=root / "models", data_dir=root / "data",
                                   cache_dir=root / "cache", base_data_dir=base.resolve(), auto_promote=False)
    runs = []
    try:
        service = Service(settings)
        production = service.hub.production()
        for count in per_class:
            stored = service.uploads.counts()
            for label in ("cat", "dog"):
                chosen = [example for example in photos if example.label == label][:count]
                folder = root / "upload" / label
                folder.mkdir(parents=True, exist_ok=True)
                paths = []
                for example in chosen[stored[label]:]:  # the ones not uploaded by an earlier round
                    path = folder / Path(example.source).name
                    path.write_bytes(example.data)
                    paths.append(str(path))
                service.upload(label, paths)
                service.review_suspects(confirm=True)  # the photos' own labels are right
            for cache in ("cold", "warm"):
                if cache == "cold":
                    shutil.rmtree(settings.cache_dir, ignore_errors=True)
                outcome = follow(service, fine_tune)
                result = outcome.pop("result") or {}
                runs.append({"uploads_per_class": count, "cache": cache, "fine_tune": fine_tune, **outcome,
                             "production": production,
                             "candidate_accuracy": (result.get("candidate") or {}).get("accuracy"),
                             "production_accuracy": (result.get("production") or {}).get("accuracy"),
                             "trusted_photos": (result.get("candidate") or {}).get("n_images")})
                print(json.dumps(runs[-1]), flush=True)
                if fine_tune:
                    break  # fine-tuning computes every embedding afresh: warm is no faster
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=SHARED / "data" / "cats_vs_dogs")
    parser.add_argument("--uploads", type=Path, default=SHARED / "data" / "cats_vs_dogs_more")
    parser.add_argument("--per-class", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--fine-tune", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the runs as one JSON list at the end")
    arguments = parser.parse_args()
    runs = run(arguments.base, arguments.uploads, arguments.per_class, arguments.fine_tune)
    if arguments.json:
        print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
