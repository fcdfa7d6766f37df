"""Bulk prediction on Ray Data: every file of a folder (recursively), a glob or a Hugging Face dataset through
a version's serving export, one Parquet row per file — an unreadable file is a row with its reason.

    python -m catdog bulk INPUT --out predictions.parquet [--address ADDRESS] [--version production]

INPUT is a folder, a glob ("photos/**/*.jpg") or `hf:NAME` (a `datasets` name or local folder, --hf-split).
Ray runs locally by default; --address joins a cluster, whose nodes need catdog's requirements and must see
INPUT's files at the same paths. Ray is an optional install: `pip install 'catdog[bulk]'` (in a clone, `-r requirements-bulk.txt`).
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

from .atomic import fsync
from .config import Settings
from .data import open_hf_dataset
from .errors import ServiceError
from .images import ImageLimits, InvalidImage
from .prediction import Prediction
from .serving import ServingModel, read_config
from .layout import CONFIG_FILE

HF_PREFIX = "hf:"
# Each output column and its Parquet type.
COLUMN_TYPES = {"path": "string", "label": "string", "p_dog": "float64", "confidence": "float64", "flags": "string",
                "novelty": "float64", "version": "string", "error": "string"}
COLUMNS = tuple(COLUMN_TYPES)


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


def check_output_path(out: Path) -> None:
    """Refuse, before any work, an output that cannot be written."""
    if out.is_dir():
        raise ServiceError(f"{out} is a folder; give --out a file name, such as {out / 'predictions.parquet'}.")
    folder = next((parent for parent in out.absolute().parents if parent.exists()), None)
    if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ServiceError(f"{out} cannot be written: {folder} is not a folder you may write in.")


def version_files(directory: Path) -> dict[str, bytes]:
    """A version's files (those its config lists, verified), to ship to Ray workers on any node."""
    config = read_config(directory)
    return {name: (directory / name).read_bytes() for name in [CONFIG_FILE, *config["files"]]}


class Predictor:
    """A Ray Data actor: one serving model, loaded once, run on each batch of {path, bytes (or None: read the
    path)}. Every row comes out, with its prediction or the reason it has none."""

    def __init__(self, files: dict[str, bytes], version: str, settings: Settings):
        with tempfile.TemporaryDirectory(prefix="catdog-bulk-") as folder:
            for name, data in files.items():
                (Path(folder) / name).write_bytes(data)
            self.model = ServingModel.load(Path(folder), version, threads=1, low_confidence=settings.low_confidence,
                                           limits=ImageLimits.from_settings(settings))
        self.max_file_bytes = settings.max_upload_mb * 2**20

    def read(self, path: str | None, data) -> bytes:
        if data is not None and len(data):
            return bytes(data)
        if not path:
            raise InvalidImage("The dataset row holds no image.")
        size = os.stat(path).st_size
        if size > self.max_file_bytes:
            raise InvalidImage(f"The file is {size / 2**20:.0f} MB; the limit is "
                               f"{self.max_file_bytes / 2**20:.0f} MB (CATDOG_MAX_UPLOAD_MB).")
        with open(path, "rb") as file:
            return file.read()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        paths = [None if path is None else str(path) for path in batch["path"]]
        contents = batch["bytes"] if "bytes" in batch else [None] * len(paths)
        readable, errors = {}, {}
        for index, (path, data) in enumerate(zip(paths, contents)):
            try:
                readable[index] = self.read(path, data)
            except InvalidImage as error:
                errors[index] = str(error)
            except OSError as error:
                errors[index] = f"The file cannot be read ({error.strerror or error})."
        predictions = {}
        for index, result in zip(readable, self.model.predict_each(list(readable.values()))):
            if isinstance(result, Prediction):
                predictions[index] = result
            else:
                errors[index] = str(result)
        rows = {column: [] for column in COLUMNS}
        for index, path in enumerate(paths):
            prediction = predictions.get(index)
            rows["path"].append(path or "")
            rows["label"].append(prediction.label if prediction else None)
            rows["p_dog"].append(round(prediction.p_dog, 6) if prediction else None)
            rows["confidence"].append(round(prediction.confidence, 6) if prediction else None)
            rows["flags"].append(",".join(prediction.flags) if prediction else None)
            rows["novelty"].append(prediction.novelty if prediction else None)
            rows["version"].append(self.model.version)
            rows["error"].append(errors.get(index))
        return rows


def huggingface_rows(batch: dict[str, np.ndarray], name: str) -> dict[str, list]:
    """{path, bytes} from a `datasets` image column read with decode=False; a row without a file path is
    named NAME[row] so that the output joins back to the dataset."""
    images = [image if isinstance(image, dict) else {} for image in batch["image"]]
    return {"path": [image.get("path") or f"{name}[{row}]" for image, row in zip(images, batch["row"])],
            "bytes": [image.get("bytes") or b"" for image in images]}  # b"": read the path (an all-None column
                                                                     # would reach the actors as NaN floats)


def read_input(source: str | list[str], split: str):
    """(a Ray Dataset of {path[, bytes]}, its row count) from a list of files or an `hf:` dataset."""
    import ray.data

    if isinstance(source, list):
        return ray.data.from_items([{"path": path} for path in source]), len(source)
    name = source.removeprefix(HF_PREFIX)
    loaded = load_hf_images(name, split)
    rows = ray.data.from_huggingface(loaded).map_batches(huggingface_rows, batch_format="numpy",
                                                         fn_kwargs={"name": name})
    return rows, len(loaded)


def load_hf_images(name: str, split: str):
    """The dataset's image column (undecoded) and a row number."""
    import datasets

    loaded = open_hf_dataset(name, split)
    if "image" not in loaded.column_names:
        raise ServiceError(f"{name} has columns {loaded.column_names}; expected an 'image' column.")
    loaded = loaded.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    return loaded.add_column("row", list(range(len(loaded))))


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
        fn_constructor_kwargs={"files": version_files(model_dir), "version": version, "settings": settings})
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    schema = pyarrow.schema([(name, getattr(pyarrow, kind)()) for name, kind in COLUMN_TYPES.items()])
    counts = {"rows": 0, "errors": 0}
    try:
        with pyarrow.parquet.ParquetWriter(partial, schema) as writer, \
                tqdm(total=total, unit="image", desc="predicting", file=sys.stderr, disable=not progress) as bar:
            for batch in predictions.iter_batches(batch_size=1024, batch_format="pyarrow"):
                writer.write_table(batch.select(list(COLUMNS)).cast(schema))
                counts["rows"] += batch.num_rows
                counts["errors"] += batch.num_rows - batch.column("error").null_count
                bar.update(batch.num_rows)
        fsync(partial)
        partial.replace(out)  # the Parquet file appears whole, or not at all
        fsync(out.parent)
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return {"out": str(out), "version": version, **counts, "actors": actors, "seconds": round(seconds, 2),
            "images_per_second": round(counts["rows"] / seconds, 1)}


def main(argv: list[str] | None = None) -> None:
    from .cli import open_version, user_errors

    parser = argparse.ArgumentParser(prog="catdog bulk", description=__doc__.split("\n")[0])
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
        sys.exit("error: bulk prediction needs Ray: pip install 'catdog[bulk]' "
                 "(in a clone: pip install -r requirements-bulk.txt)")
    with user_errors():
        settings, hub, version = open_version(arguments.version)
        model_dir = hub.download(version)
        ServingModel.load(model_dir, version)  # a version that cannot serve fails here, before Ray starts
        source = arguments.input if arguments.input.startswith(HF_PREFIX) else list_files(arguments.input)
        check_output_path(arguments.out)
        try:
            # "local": a new Ray on this machine, never one that RAY_ADDRESS or `ray start` left running.
            ray.init(address=arguments.address or "local", include_dashboard=False, log_to_driver=False,
                     runtime_env={"py_modules": [str(Path(__file__).parent)]} if arguments.address else None)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ServiceError(f"Cannot start or join Ray at {arguments.address or 'this machine'}: {error}") from None
        try:
            summary = predict_to_parquet(source, arguments.out, model_dir, version, settings,
                                         split=arguments.hf_split, actors=arguments.actors,
                                         batch_size=arguments.batch_size)
        finally:
            ray.shutdown()
    print(json.dumps(summary, indent=2))
