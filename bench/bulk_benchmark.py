"""Bulk prediction on Ray Data against the in-process batch path, on the same photos: images per second of
each, and whether they give the same labels.

    python -m bench.bulk_benchmark [--photos 2000] [--data-dir ../shared/data/cats_vs_dogs] [--json]

In-process is what one Python process can do: the production export on ONNX Runtime with every core
(threads=0), batches of 32, decoding in the same loop. Ray runs one single-threaded model copy per core.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from catdog_model.bulk import list_files, predict_to_parquet
from catdog_model.cli import open_version
from catdog_model.config import PROJECT_ROOT
from catdog_model.prediction import Prediction
from catdog_model.serving import ServingModel


def in_process(files: list[str], model_dir: Path, version: str, batch_size: int = 32) -> tuple[dict, float]:
    model = ServingModel.load(model_dir, version, threads=0)
    labels = {}
    started = time.perf_counter()
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        labels.update((path, result.label if isinstance(result, Prediction) else None)
                      for path, result in zip(chunk, model.predict_each(chunk)))
    return labels, time.perf_counter() - started


def main() -> None:
    import pandas
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--data-dir", default=str(PROJECT_ROOT.parent / "shared" / "data" / "cats_vs_dogs"))
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args()
    settings, hub, version = open_version("production")
    model_dir = hub.download(version)
    files = list_files(arguments.data_dir)[:arguments.photos]

    labels, seconds = in_process(files, model_dir, version)
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "predictions.parquet"
            summary = predict_to_parquet(files, out, model_dir, version, settings, progress=False)
            table = pandas.read_parquet(out)
        ray_seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    ray_labels = dict(zip(table["path"], table["label"].where(table["label"].notna(), None)))
    result = {
        "photos": len(files), "version": version,
        "in_process_images_per_second": round(len(files) / seconds, 1),
        "ray_images_per_second": summary["images_per_second"], "ray_actors": summary["actors"],
        "ray_seconds_with_start": round(ray_seconds, 1),
        "same_labels": sum(labels[path] == ray_labels.get(path) for path in files),
    }
    if arguments.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{len(files)} photos, production {version}: in-process {result['in_process_images_per_second']} "
              f"images/s; Ray Data ({summary['actors']} actors) {result['ray_images_per_second']} images/s; "
              f"same label for {result['same_labels']} of {len(files)}")


if __name__ == "__main__":
    main()
