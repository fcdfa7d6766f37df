"""Datasets: class folders or Hugging Face `datasets`, deduplicated by content, split by a fixed seed."""

from __future__ import annotations

import dataclasses
import hashlib
import stat
from pathlib import Path

from . import LABELS
from .errors import ServiceError, shown
from .images import content_hash

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
LABEL_ALIASES = {"cat": "cat", "cats": "cat", "dog": "dog", "dogs": "dog"}


@dataclasses.dataclass(frozen=True)
class Example:
    sha256: str
    label: str
    source: str
    content: bytes | Path = dataclasses.field(repr=False)  # the bytes, or the file that holds them

    @property
    def data(self) -> bytes:
        """The encoded image; a file is read now, so a large dataset need not be held in memory."""
        return self.content if isinstance(self.content, bytes) else Path(self.content).read_bytes()


@dataclasses.dataclass
class Dataset:
    examples: list[Example]
    duplicates: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (duplicate, kept)
    decisions: dict = dataclasses.field(default_factory=dict)  # what data_decisions changed: counts by reason

    def counts(self) -> dict[str, int]:
        return {label: sum(example.label == label for example in self.examples) for label in LABELS}

    def content_hash(self) -> str:
        """Identifies the dataset's contents, whatever the file names or order."""
        lines = sorted(f"{example.sha256} {example.label}" for example in self.examples)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@dataclasses.dataclass
class Splits:
    train: list[Example]
    validation: list[Example]
    test: list[Example]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def normalize_label(name: str) -> str:
    label = LABEL_ALIASES.get(str(name).strip().lower())
    if label is None:
        raise ServiceError(f"Unknown class {shown(name)}: use one of {', '.join(sorted(LABEL_ALIASES))}.")
    return label


def deduplicate(examples: list[Example]) -> Dataset:
    """Keep the first example of each content hash; the rest are reported, not used."""
    kept: dict[str, Example] = {}
    duplicates = []
    for example in examples:
        if example.sha256 in kept:
            duplicates.append((example.source, kept[example.sha256].source))
        else:
            kept[example.sha256] = example
    return Dataset(list(kept.values()), duplicates)


def load_folder(root: Path) -> Dataset:
    """Images under root/<class>/ (cats/, dogs/, cat/ or dog/, nested folders allowed)."""
    root = Path(root)
    if not root.is_dir():
        raise ServiceError(f"{root} is not a folder.")
    examples = []
    class_folders = [folder for folder in sorted(root.iterdir())
                     if folder.is_dir() and folder.name.lower() in LABEL_ALIASES]
    if not class_folders:
        raise ServiceError(f"{root} has no class folders; expected cats/ and dogs/ (or cat/ and dog/).")
    for folder in class_folders:
        label = normalize_label(folder.name)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                data = path.read_bytes()
                examples.append(Example(content_hash(data), label, str(path.relative_to(root)), data))
    return deduplicate(examples)


def load_folders(roots: list[Path]) -> Dataset:
    """Images of several folders as one dataset: a photo in two of them, or twice in one, is kept once and the
    others reported."""
    loaded = [load_folder(root) for root in roots]
    merged = deduplicate([example for dataset in loaded for example in dataset.examples])
    return Dataset(merged.examples, [pair for dataset in loaded for pair in dataset.duplicates] + merged.duplicates)


def folder_signature(root: Path) -> tuple:
    """Each file's path, size and modification time under root: it changes when a file is added, removed or
    changed, and costs a stat per file where loading the folder reads and hashes every byte."""
    entries = []
    for path in sorted(Path(root).rglob("*")):
        try:
            status = path.stat()
        except OSError:  # removed while listed
            continue
        if stat.S_ISREG(status.st_mode):
            entries.append((str(path), status.st_size, status.st_mtime_ns))
    return tuple(entries)


def open_hf_dataset(name: str, split: str):
    """`datasets.load_dataset(name, split=split)`: a Hub name, or a local folder (read as `imagefolder`)."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except (FileNotFoundError, ValueError) as error:  # no such dataset, or no such split
        raise ServiceError(f"Cannot read the dataset {name!r}, split {split!r}: {error}") from None


def load_hf_dataset(name: str, split: str = "train", image_column: str = "image",
                    label_column: str = "label") -> Dataset:
    """A labelled dataset through `datasets`, as examples."""
    import datasets

    loaded = open_hf_dataset(name, split)
    if image_column not in loaded.column_names or label_column not in loaded.column_names:
        raise ServiceError(f"{name} has columns {loaded.column_names}; expected {image_column!r} and "
                           f"{label_column!r}.")
    label_feature = loaded.features[label_column]
    # The raw encoded bytes, not decoded pixels: content hashes must match the same file loaded from a folder.
    loaded = loaded.cast_column(image_column, datasets.Image(decode=False))
    examples = []
    for index, row in enumerate(loaded):
        image, raw_label = row[image_column], row[label_column]
        data = image["bytes"] if image.get("bytes") else Path(image["path"]).read_bytes()
        label_name = label_feature.int2str(raw_label) if hasattr(label_feature, "int2str") else raw_label
        source = image.get("path") or f"{name}[{index}]"
        examples.append(Example(content_hash(data), normalize_label(label_name), str(source), data))
    return deduplicate(examples)


def version_splits(examples: list[Example], data: dict) -> Splits:
    """The examples cut as a version's training cut its data: `data` is the "data" of its metrics.json."""
    return split_examples(examples, data["split_seed"], data["validation_fraction"], data["test_fraction"])


def split_examples(examples: list[Example], seed: int, validation_fraction: float = 0.1,
                   test_fraction: float = 0.2) -> Splits:
    """Stratified, seeded split. Each image's place depends only on its content and the seed, so adding
    images later moves few existing ones between splits."""
    if not 0 < validation_fraction < 1 or not 0 < test_fraction < 1 or validation_fraction + test_fraction >= 1:
        raise ServiceError("validation_fraction and test_fraction must be between 0 and 1 and sum to under 1.")
    splits = Splits([], [], [])
    for label in LABELS:
        members = sorted((example for example in examples if example.label == label),
                         key=lambda example: hashlib.sha256(f"{seed}:{example.sha256}".encode()).hexdigest())
        n_test = round(len(members) * test_fraction)
        n_validation = round(len(members) * validation_fraction)
        splits.test += members[:n_test]
        splits.validation += members[n_test:n_test + n_validation]
        splits.train += members[n_test + n_validation:]
    return splits
