"""Retraining from the app, measured as the Retrain tab runs it (the server's Service, its child process):
time end to end cold (an empty embedding cache), prepared (after the background embedding the server starts
with, timed too) and warm (the cache of the run before), the longest time the status stood still, and the
candidate's accuracy beside production's on the trusted photos.

    python -m bench.retrain [--base ../shared/data/cats_vs_dogs] [--uploads ../shared/data/cats_vs_dogs_more]
                            [--per-class 20 100] [--trusted base-test|production-test] [--fine-tune] [--json]

For each --per-class count, that many cats and dogs from --uploads (photos the base data does not hold) are
uploaded, then retrained: cold, prepared, then warm. Production is the repository's own version, on a
private copy of models/; the trusted photos are the base data's test split, as in the app, or with --trusted
production-test production's own test split.
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
from catdog_model.data import load_folder, load_folders, split_examples
from catdog_model.hub import LocalHub
from catdog_model.version_metrics import read_metrics
from catdog_model.service import Service

SHARED = PROJECT_ROOT.parent / "shared"


def follow(service: Service, fine_tune: bool) -> dict:
    """Start a retraining and poll its status until it ends; the seconds it took and the longest stand-still."""
    started = last_change = time.perf_counter()
    seen, still, still_at = None, 0.0, None
    service.start_retrain(fine_tune)
    while True:
        status = service.dashboard.retrain_status()
        now = time.perf_counter()
        shown = (status["stage"], status["done"], len(status["log"]))
        if shown != seen:
            if now - last_change > still and seen:
                still, still_at = now - last_change, f"{seen[0]} at {seen[1]:,}"
            seen, last_change = shown, now
        if not status["running"]:
            return {"seconds": round(now - started, 1), "longest_still_seconds": round(still, 1),
                    "longest_still_at": still_at, "verdict": status["verdict"], "result": status["result"],
                    "error": status["error"]}
        time.sleep(0.2)


def production_test_split(models: Path, folder: Path) -> set[str]:
    """Write production's own test photos (its data folders, split as its training split them) into folder;
    their hashes. Neither production nor a candidate has trained on them."""
    hub = LocalHub(models, Settings.from_env().model_name)
    metrics = read_metrics(hub)
    data = metrics["data"]
    sources = [PROJECT_ROOT / source.strip() for source in data["source"].split(" + ")]
    examples = load_folders(sources).examples
    test = split_examples(examples, data["split_seed"], data["validation_fraction"], data["test_fraction"]).test
    for example in test:
        path = folder / f"{example.label}s" / f"{example.sha256}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(example.data)
    return {example.sha256 for example in test}


def run(base: Path, uploads: Path, per_class: list[int], fine_tune: bool, trusted: str) -> list[dict]:
    root = Path(tempfile.mkdtemp(prefix="catdog-bench-retrain-"))
    shutil.copytree(PROJECT_ROOT / "models", root / "models", ignore=shutil.ignore_patterns(".lock"))
    settings = dataclasses.replace(Settings.from_env(), models_dir=root / "models", data_dir=root / "data",
                                   cache_dir=root / "cache", base_data_dir=base.resolve(), auto_promote=False,
                                   prepare_embeddings=False)  # started by hand below, to time it
    held_out: set[str] = set()
    if trusted == "production-test":
        held_out = production_test_split(settings.models_dir, root / "trusted")
        settings = dataclasses.replace(settings, trusted_data_dir=root / "trusted")
    photos = [example for example in load_folder(uploads).examples if example.sha256 not in held_out]
    runs = []
    try:
        service = Service(settings).start()
        production = service.hub.production()
        for count in per_class:
            stored = service.curation.uploads.counts()
            for label in ("cat", "dog"):
                chosen = [example for example in photos if example.label == label][:count]
                folder = root / "upload" / label
                folder.mkdir(parents=True, exist_ok=True)
                paths = []
                for example in chosen[stored[label]:]:  # the ones not uploaded by an earlier round
                    path = folder / Path(example.source).name
                    path.write_bytes(example.data)
                    paths.append(str(path))
                service.curation.upload(label, paths)
            service.curation.review_suspects(confirm=True)  # the photos' own labels are right
            for cache in ("cold", "prepared", "warm"):
                preparing_seconds = None
                if cache in ("cold", "prepared"):
                    shutil.rmtree(settings.cache_dir, ignore_errors=True)
                if cache == "prepared":
                    started = time.perf_counter()
                    service.retrainer.prepare()
                    while service.retrainer.preparation.running:
                        time.sleep(0.2)
                    preparing_seconds = round(time.perf_counter() - started, 1)
                outcome = follow(service, fine_tune)
                result = outcome.pop("result") or {}
                runs.append({"uploads_per_class": count, "cache": cache, "fine_tune": fine_tune, "trusted": trusted,
                             **outcome, "preparing_seconds": preparing_seconds,
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
    parser.add_argument("--trusted", choices=["base-test", "production-test"], default="base-test",
                        help="the gate's photos: the base data's test split (as the app does by default), or "
                             "production's own test split, which production never trained on (the base data's "
                             "test split overlaps the repository's production's training photos)")
    parser.add_argument("--json", action="store_true", help="print the runs as one JSON list at the end")
    arguments = parser.parse_args()
    runs = run(arguments.base, arguments.uploads, arguments.per_class, arguments.fine_tune, arguments.trusted)
    if arguments.json:
        print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
