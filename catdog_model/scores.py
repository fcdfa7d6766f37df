"""Each version's metrics on one trusted set, kept in the cache: measured once (by the gate, or in the
background for the Versions table), then read back. Every figure of one set is comparable with every other:
same photos, same labels. A version is known by its files (its config.json lists their sha256), a set by its
photos and labels, whatever either is called."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Callable

from .atomic import write_atomically
from .data import Example
from .layout import CONFIG_FILE

logger = logging.getLogger(__name__)
SCORES_FOLDER = "gate"
TRUSTED_SET_FILE = "trusted.json"  # which set the Versions table reads: the last one a retraining child used
GATE_METRICS = ("accuracy", "precision", "recall", "f1", "log_loss", "n_images")  # numbers (roc_auc may be None)


def are_scores(metrics) -> bool:
    """Whether `metrics` is what compute_metrics gives: numbers where the gate and the tabs read them."""
    return isinstance(metrics, dict) and all(isinstance(metrics.get(name), (int, float)) for name in GATE_METRICS)


def trusted_signature(trusted: list[Example]) -> str:
    """Names one trusted set: its photos and their labels, in any order."""
    return hashlib.sha256("\n".join(sorted(f"{example.sha256} {example.label}" for example in trusted)).encode()
                          ).hexdigest()[:32]


def version_id(folder: Path) -> str:
    """Names a version by its files: config.json lists each one's sha256."""
    return hashlib.sha256((Path(folder) / CONFIG_FILE).read_bytes()).hexdigest()[:32]


def _score_path(cache_dir: Path, identity: str, signature: str) -> Path:
    return Path(cache_dir) / SCORES_FOLDER / signature / f"{identity}.json"


def kept_score(cache_dir: Path, identity: str, signature: str) -> dict | None:
    """The metrics kept for the version (its version_id) on the set, or None (never measured, or not a
    score)."""
    try:
        kept = json.loads(_score_path(cache_dir, identity, signature).read_text())
    except (OSError, ValueError):
        return None
    return kept if are_scores(kept) else None


def scored(cache_dir: Path, folder: Path, trusted: list[Example], measure: Callable[[], dict]) -> dict:
    """The metrics on the trusted photos of the version in `folder`: read back when kept, else measure()d and
    kept (a cache that cannot be written costs a warning, not the figure)."""
    identity, signature = version_id(folder), trusted_signature(trusted)
    if (kept := kept_score(cache_dir, identity, signature)) is not None:
        return kept
    metrics = measure()
    try:
        path = _score_path(cache_dir, identity, signature)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(metrics).encode())
    except OSError as error:
        logger.warning("the metrics of %s on the trusted photos could not be kept: %s", Path(folder).name,
                       error.strerror)
    return metrics


def note_trusted_set(cache_dir: Path, trusted: list[Example]) -> None:
    """Say which trusted set the figures of the Versions table are on."""
    path = Path(cache_dir) / SCORES_FOLDER / TRUSTED_SET_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps({"signature": trusted_signature(trusted),
                                           "n_images": len(trusted)}).encode())
    except OSError as error:
        logger.warning("the trusted set could not be noted: %s", error.strerror)


def noted_trusted_set(cache_dir: Path) -> dict | None:
    """{"signature", "n_images"} of the set noted last, or None before any retraining child has run."""
    try:
        noted = json.loads((Path(cache_dir) / SCORES_FOLDER / TRUSTED_SET_FILE).read_text())
    except (OSError, ValueError):
        return None
    valid = isinstance(noted, dict) and isinstance(noted.get("signature"), str) \
        and re.fullmatch("[0-9a-f]{32}", noted["signature"]) and isinstance(noted.get("n_images"), int)
    return noted if valid else None
