"""Bulk prediction on Ray Data: every file of a folder (recursively), a glob or a Hugging Face dataset through
a version's serving export, one Parquet row per file — an unreadable file is a row with its reason.

    python -m catdog_model.bulk INPUT --out predictions.parquet [--address ADDRESS] [--version production]

INPUT is a folder, a glob ("photos/**/*.jpg") or `hf:NAME` (a `datasets` name or local folder, --hf-split).
Ray runs locally by default; --address joins a cluster, whose nodes need catdog's requirements and must see
INPUT's files at the same paths. Ray is an optional install: `pip install -r requirements-bulk.txt`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .config import Settings
from .errors import ServiceError
from .images import ImageLimits, InvalidImage
from .serving import CONFIG_FILE, ServingModel, read_config

HF_PREFIX = "hf:"
COLUMNS = ("path", "label", "p_dog", "confidence", "flags", "novelty", "version", "error")


def list_files(source: str) -> list[str]:
    """The files of a folder (recursively, hidden ones skipped) or of a glob, sorted."""
    if any(character in source for character in "*?["):
        paths = glob.glob(source, recursive=True)
    elif Path(source).is_dir():
        paths = [str(path) for path in Path(source).rglob("*")
                 if not any(part.startswith(".") for part in path.relative_to(source).parts)]
    elif Path(source).is_file():
        paths = [source]
    else:
        raise ServiceError(f"{source} is not a folder, a file or a glob that exists; for a Hugging Face dataset "
                         f"write {HF_PREFIX}NAME.")
    files = sorted(path for path in paths if os.path.isfile(path))
    if not files:
        raise ServiceError(f"{source} holds no files.")
    return files


def version_files(directory: Path) -> dict[str, bytes]:
    """A version's files (those its config lists, verified), to ship to Ray workers on any node."""
    config = read_config(directory)
    return {name: (directory / name).read_bytes() for name in [CONFIG_FILE, *config["files"]]}


class Predictor:
    """A Ray Data actor: one serving model, loaded once, run on each batch of {path[, bytes]}."""

    def __init__(self, files: dict[str, bytes], version: str, low_confidence: float, max_pixels: int):
        folder = Path(tempfile.mkdtemp(prefix="catdog-bulk-"))
        for name, data in files.items():
            (folder / name).write_bytes(data)
        self.model = ServingModel.load(folder, version, threads=1, low_confidence=low_confidence,
                                       limits=ImageLimits(max_pixels=max_pixels))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        paths = [str(path) for path in batch["path"]]
        contents = batch["bytes"] if "bytes" in batch else [None] * len(paths)
        images, decoded, errors = [], [], {}
        for index, (path, data) in enumerate(zip(paths, contents)):
            try:
                images.append(self.model.decode(path if data is None else bytes(data)))
                decoded.append(index)
            except InvalidImage as error:
                errors[index] = str(error)
            except OSError as error:
                errors[index] = f"cannot read the file ({error.strerror or error})"
        predictions = dict(zip(decoded, self.model.predict_decoded(np.stack(images)))) if images else {}
        rows = {column: [] for column in COLUMNS}
        for index, path in enumerate(paths):
            prediction = predictions.get(index)
            rows["path"].append(path)
            rows["label"].append(prediction.label if prediction else None)
            rows["p_dog"].append(round(prediction.p_dog, 6) if prediction else None)
            rows["confidence"].append(round(prediction.confidence, 6) if prediction else None)
            rows["flags"].append(",".join(prediction.flags) if prediction else None)
            rows["novelty"].append(prediction.novelty if prediction else None)
            rows["version"].append(self.model.version)
            rows["error"].append(errors.get(index))
        return rows


def huggingface_rows(batch: dict[str, np.ndarray]) -> dict[str, list]:
    """{path, bytes} from a `datasets` image column read with decode=False."""
    images = batch["image"]
    return {"path": [image.get("path") or "" for image in images],
            "bytes": [image.get("bytes") or Path(image["path"]).read_bytes() for image in images]}


def read_input(source: str | list[str], split: str):
    """(a Ray Dataset of {path[, bytes]}, its row count) from a list of files or an `hf:` dataset."""
    import ray.data

    if isinstance(source, list):
        return ray.data.from_items([{"path": path} for path in source]), len(source)
    import datasets

    loaded = datasets.load_dataset(source.removeprefix(HF_PREFIX), split=split)
    if "image" not in loaded.column_names:
        raise ServiceError(f"{source} has columns {loaded.column_names}; expected an 'image' column.")
    loaded = loaded.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    return ray.data.from_huggingface(loaded).map_batches(huggingface_rows, batch_format="numpy"), len(loaded)


def predict_to_parquet(source: str | list[str], out: Path, model_dir: Path, version: str, settings: Settings,
                       split: str = "train", actors: int | None = None, batch_size: int = 32,
                       progress: bool = True) -> dict:
    """Run the model over `source` on the Ray that ray.init() joined; write `out` atomically; what happened."""
    import pyarrow
    import pyarrow.parquet
    import ray
    from tqdm import tqdm

    started = time.perf_counter()
    dataset, total = read_input(source, split)
    actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
    predictions = dataset.map_batches(
        Predictor, batch_size=batch_size, batch_format="numpy", concurrency=actors, num_cpus=1,
        fn_constructor_kwargs={"files": version_files(model_dir), "version": version,
                               "low_confidence": settings.low_confidence, "max_pixels": settings.max_pixels})
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    schema = pyarrow.schema([("path", pyarrow.string()), ("label", pyarrow.string()), ("p_dog", pyarrow.float64()),
                             ("confidence", pyarrow.float64()), ("flags", pyarrow.string()),
                             ("novelty", pyarrow.float64()), ("version", pyarrow.string()),
                             ("error", pyarrow.string())])
    counts = {"rows": 0, "errors": 0}
    with pyarrow.parquet.ParquetWriter(partial, schema) as writer, \
            tqdm(total=total, unit="image", desc="predicting", file=sys.stderr, disable=not progress) as bar:
        for batch in predictions.iter_batches(batch_size=1024, batch_format="pyarrow"):
            writer.write_table(batch.select(list(COLUMNS)).cast(schema))
            counts["rows"] += batch.num_rows
            counts["errors"] += batch.num_rows - batch.column("error").null_count
            bar.update(batch.num_rows)
    partial.replace(out)
    seconds = time.perf_counter() - started
    return {"out": str(out), "version": version, **counts, "actors": actors, "seconds": round(seconds, 2),
            "images_per_second": round(counts["rows"] / seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    from .cli import user_errors
    from .hub import open_hub

    parser = argparse.ArgumentParser(prog="python -m catdog_model.bulk", description=__doc__.split("\n")[0])
    parser.add_argument("input", help=f"a folder, a glob, or {HF_PREFIX}NAME for a Hugging Face dataset")
    parser.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    parser.add_argument("--version", default="production", help="the model version (default: production)")
    parser.add_argument("--address", help="a Ray cluster to join (default: a local Ray on this machine)")
    parser.add_argument("--actors", type=int, help="model copies running at once (default: one per CPU)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hf-split", default="train", help=f"split of a {HF_PREFIX} dataset (default: train)")
    arguments = parser.parse_args(argv)
    try:
        import ray
    except ImportError:
        sys.exit("error: bulk prediction needs Ray: pip install -r requirements-bulk.txt")
    with user_errors():
        settings = Settings.from_env()
        hub = open_hub(settings)
        version = hub.resolve(arguments.version)
        model_dir = hub.download(version)
        ServingModel.load(model_dir, version)  # a version that cannot serve fails here, before Ray starts
        source = arguments.input if arguments.input.startswith(HF_PREFIX) else list_files(arguments.input)
        ray.init(address=arguments.address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"py_modules": [str(Path(__file__).parent)]} if arguments.address else None)
        try:
            summary = predict_to_parquet(source, arguments.out, model_dir, version, settings,
                                         split=arguments.hf_split, actors=arguments.actors,
                                         batch_size=arguments.batch_size)
        finally:
            ray.shutdown()
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
