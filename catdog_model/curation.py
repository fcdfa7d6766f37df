"""The photos people bring for the next retraining: uploads checked against production (a confident
disagreement is held as a suspect), corrections from the Predict tab, the review queue of photos production
was unsure of, the admins' decisions (counted in the prediction log), the dataset's counts, and on a Space the
uploads' sync to a Hub dataset."""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from . import LABELS
from .config import Settings
from .data import Dataset, folder_signature, load_folder, normalize_label
from .errors import CatdogError, LogUnavailable, ServiceError, public_message, shown
from .images import ImageLimits, load_image, waiting_at_most
from .monitoring import PredictionLog
from .retrain_data import base_examples
from .uploads import SUSPECT_FOLDER, UNLABELLED_FOLDER, RequestLimits, UploadStore

logger = logging.getLogger(__name__)
UPLOAD_SYNC_CLOSE_SECONDS = 60
UPLOAD_SYNC_MINUTES = 1
THUMBNAIL_SIDE = 160
REVIEW_QUEUE_LIMIT = 200  # photos waiting for a label (about 1 MB each at most): then no more are kept

LabelDoubt = Callable[[str, bytes], "str | None"]  # why production doubts an image's label, or None


def refuse_too_many_files(paths: list, max_files: int) -> None:
    if len(paths) > max_files:
        raise ServiceError(f"{len(paths)} files in one request; the limit is {max_files} (CATDOG_MAX_FILES). "
                           "Send them in smaller groups.")


class Curation:
    """Built with the server's image limits (one decode budget for predictions and uploads), the prediction log
    (where decisions are counted) and production's doubt about a label; start() begins the Hub sync where
    CATDOG_HUB_DATASET is set, stop() commits what is pending and ends it."""

    def __init__(self, settings: Settings, limits: ImageLimits, log: PredictionLog, doubt: LabelDoubt):
        self.settings = settings
        self.limits = limits
        self.uploads = UploadStore(settings.data_dir / "uploads", self.limits, RequestLimits.from_settings(settings))
        self.log = log
        self.doubt = doubt
        self.upload_sync = None
        self._base_counts_cache: tuple[tuple, dict[str, int]] | None = None

    def start(self) -> None:
        if self.settings.hub_dataset and self.upload_sync is None:
            self.upload_sync = self._upload_sync()

    def stop(self) -> None:
        if not self.upload_sync:
            return
        try:
            self.upload_sync.trigger().result(timeout=UPLOAD_SYNC_CLOSE_SECONDS)
        except Exception as error:  # the Hub is unreachable: the uploads stay on this disk
            logger.warning("uploads not yet committed to %s stay on this disk: %s", self.settings.hub_dataset,
                           public_message(error))
        self.upload_sync.stop()

    def upload(self, label: str, paths: list[str]) -> list[dict]:
        if not paths:
            raise ServiceError("No files were uploaded: choose one or more images or a zip archive.")
        refuse_too_many_files(paths, self.settings.max_files)
        files = [(Path(path).name, Path(path)) for path in paths]
        with waiting_at_most(self.limits.budget.wait_seconds):
            return [dataclasses.asdict(result) for result in self.uploads.add(label, files, self.doubt)]

    def review_suspects(self, confirm: bool) -> str:
        reviewed = self.uploads.review_suspects(confirm)
        if not reviewed:
            return "There are no suspect images."
        self._keep_decisions(reviewed, "confirmed" if confirm else "discarded")
        count = len(reviewed)
        images = "1 suspect image" if count == 1 else f"{count} suspect images"
        if confirm:
            return f"{images} confirmed: {'it joins' if count == 1 else 'they join'} training."
        return f"{images} discarded."

    def correct(self, path: str, label: str) -> str:
        """A person says production got this photo wrong: it joins the uploads as a `label` — held as a
        suspect, for an admin to review, when production was sure of the other class — and is counted."""
        if zipfile.is_zipfile(path):
            raise ServiceError("A correction is one photo, not an archive: add archives on the Retrain tab.")
        (result,) = self.upload(label, [path])
        if result["status"] in ("added", "suspect"):
            self._keep_decisions([(normalize_label(label), result["sha256"])], result["status"])
        return {"added": f"Thank you: this photo is kept as a {normalize_label(label)} for the next retraining.",
                "suspect": f"Kept for review as a {normalize_label(label)}: {result['reason']}.",
                "duplicate": f"This photo is already among the uploads: {result['reason']}.",
                }.get(result["status"], f"Not kept: {result['reason']}")

    def keep_for_labelling(self, data: bytes) -> None:
        """CATDOG_REVIEW_QUEUE: a photo production was unsure of, or found unfamiliar, waits for a label. The
        prediction stands whatever happens here."""
        try:
            self.uploads.keep_for_labelling(data, REVIEW_QUEUE_LIMIT)
        except (CatdogError, OSError) as error:
            logger.warning("a photo was not kept for labelling: %s", public_message(error))

    def label_photo(self, sha256: str, label: str) -> str:
        """A person labels a photo of the review queue: `cat` or `dog` (it joins training), or `discard`."""
        discard = isinstance(label, str) and label.strip().lower() == "discard"
        try:
            named = None if discard else normalize_label(label)
        except ServiceError:
            raise ServiceError(f"Label a photo cat, dog or discard, not {shown(label)}.") from None
        existing = self.uploads.known(sha256) if isinstance(sha256, str) else None
        if existing and self.uploads.label_unlabelled(sha256, None):
            return f"This photo is already among the uploads as a {existing}; it no longer waits for a label."
        if not self.uploads.label_unlabelled(sha256, named):
            raise ServiceError("That photo is no longer waiting for a label: choose one among those shown "
                               "(another admin may have labelled it).")
        self._keep_decisions([(named or "", sha256)], "discarded" if discard else "labelled")
        return "Discarded." if discard else f"Kept as a {named}: it joins the next retraining."

    def photos_to_label(self, limit: int = 48) -> tuple[list[tuple[np.ndarray, str]], list[str]]:
        """Thumbnails of the photos waiting for a label, and their hashes, in the same order."""
        thumbnails, hashes = [], []
        for path in self.uploads.unlabelled()[:limit]:
            try:
                thumbnails.append((load_image(path, size=THUMBNAIL_SIDE, limits=self.limits, fit=True), "to label"))
                hashes.append(path.stem)
            except CatdogError:
                continue
        return thumbnails, hashes

    def _keep_decisions(self, decided: list[tuple[str, str]], status: str) -> None:
        """Count corrections and review decisions in the prediction log; the decision stands if it is down."""
        try:
            for label, sha256 in decided:
                self.log.record_decision(sha256, label, status)
        except LogUnavailable as error:
            logger.warning("a %s decision was not counted: %s", status, error)

    def suspect_gallery(self, limit: int = 48) -> list[tuple[np.ndarray, str]]:
        """Thumbnails of the images held for review, each captioned with the class it was uploaded as."""
        shown = []
        for label, path in self.uploads.suspects()[:limit]:
            try:
                shown.append((load_image(path, size=THUMBNAIL_SIDE, limits=self.limits, fit=True),
                              f"uploaded as {label}"))
            except CatdogError:
                continue  # a file that no longer decodes is not shown; review still confirms or discards it
        return shown

    def _upload_sync(self):
        """A Space's disk is wiped on restart: accepted uploads are also committed, in batches, to a Hub
        dataset repo (CATDOG_HUB_DATASET)."""
        from huggingface_hub import CommitScheduler, HfApi

        self.uploads.root.mkdir(parents=True, exist_ok=True)
        # Suspect images stay on this disk: only confirmed uploads are kept in the dataset.
        return CommitScheduler(repo_id=self.settings.hub_dataset, repo_type="dataset", folder_path=self.uploads.root,
                               every=UPLOAD_SYNC_MINUTES, hf_api=HfApi(endpoint=self.settings.hub_endpoint),
                               ignore_patterns=[f"{folder}/{pattern}" for folder in (SUSPECT_FOLDER, UNLABELLED_FOLDER)
                                                for pattern in ("*", "**")])

    def dataset_stats(self) -> dict:
        base = self._base_counts()
        uploads = self.uploads.counts()
        return {"base": base, "uploads": uploads, "suspect": self.uploads.suspect_counts(),
                "total": {label: base[label] + uploads[label] for label in base}}

    def _base_counts(self) -> dict[str, int]:
        """Photos per class in CATDOG_BASE_DATA_DIR, duplicates removed. Counting them reads every photo and the
        Metrics tab asks on each page load, so the counts are kept until a file there changes."""
        folder = self.settings.base_data_dir
        if self.settings.base_data_hub:  # its local snapshot changes only when it is downloaded again
            if self._base_counts_cache is None:
                try:
                    self._base_counts_cache = ((), Dataset(base_examples(self.settings)).counts())
                except ServiceError as error:  # counted as none until it can be read
                    logger.warning("%s", error)
                    return dict.fromkeys(LABELS, 0)
            return self._base_counts_cache[1]
        if not folder or not folder.is_dir():
            return dict.fromkeys(LABELS, 0)
        signature = folder_signature(folder)
        cached = self._base_counts_cache
        if cached is None or cached[0] != signature:
            self._base_counts_cache = cached = (signature, load_folder(folder).counts())
        return cached[1]
