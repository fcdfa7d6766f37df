"""What a retraining trains on and is judged by, for the server and the retraining child alike: the base data
(a folder or a Hub dataset), the trusted held-out photos, and the training set (base data and confirmed
uploads, the trusted photos left out) — both with people's data decisions applied (data_decisions)."""

from __future__ import annotations

from pathlib import Path

from . import LABELS
from .config import Settings
from .data import Dataset, Example, deduplicate, load_folder, load_hf_dataset, split_examples
from .data_decisions import DataDecisions
from .errors import ServiceError
from .uploads import UploadStore


def base_examples(settings: Settings) -> list[Example]:
    """CATDOG_BASE_DATA_DIR's photos: a folder's, or a Hub dataset's (hf:<repo>)."""
    if settings.base_data_hub:
        return hub_dataset(settings.base_data_hub, settings.hub_endpoint).examples
    base = settings.base_data_dir
    return load_folder(base).examples if base and base.is_dir() else []


def trusted_examples(settings: Settings, seed: int, validation_fraction: float,
                     test_fraction: float) -> list[Example]:
    """The fixed held-out photos the gate judges on: CATDOG_TRUSTED_DATA_DIR, else the base data's test split;
    never uploads."""
    trusted = settings.trusted_data_dir
    if trusted and trusted.is_dir():
        examples = load_folder(trusted).examples
    else:
        examples = split_examples(base_examples(settings), seed, validation_fraction, test_fraction).test
    return DataDecisions(settings.data_dir).apply(Dataset(examples)).examples


def hub_dataset(repo: str, endpoint: str | None) -> Dataset:
    """A Hub dataset repo of class folders (cat/ and dog/, or cats/ and dogs/), read through `datasets`
    (imagefolder) from its local snapshot; empty while it has none."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", endpoint=endpoint))
        if not any((folder / name).is_dir() for label in LABELS for name in (label, f"{label}s")):
            return Dataset([])
        return load_hf_dataset(str(folder))
    except Exception as error:  # the network, the Hub's answer, the dataset's files: one sentence
        raise ServiceError(f"The Hub dataset {repo} cannot be read now ({type(error).__name__}): check its name, "
                           "HF_TOKEN and the network, or set a folder.") from error


def labelled_examples(settings: Settings, uploads: UploadStore) -> list[Example]:
    """Every labelled photo a retraining can see, as given (no decision applied): the base data, the confirmed
    uploads (also those kept in a Hub dataset) and CATDOG_TRUSTED_DATA_DIR's photos."""
    examples = base_examples(settings) + list(uploads.dataset().examples)
    if settings.hub_dataset:  # the uploads, kept in a Hub dataset
        examples += hub_dataset(settings.hub_dataset, settings.hub_endpoint).examples
    trusted = settings.trusted_data_dir
    if trusted and trusted.is_dir():
        examples += load_folder(trusted).examples
    return examples


def training_dataset(settings: Settings, uploads: UploadStore, trusted: list[Example]) -> Dataset:
    """Base data and confirmed uploads, less the trusted photos (a candidate never trains on its judge)."""
    examples = labelled_examples(settings, uploads)
    held_out = {example.sha256 for example in trusted}
    return DataDecisions(settings.data_dir).apply(
        deduplicate([example for example in examples if example.sha256 not in held_out]))
