"""Training images that users upload: validated, deduplicated by content, stored atomically by hash, and held
apart as *suspect* when the production model confidently disagrees with the label given; and, with the review
queue on, photos production was unsure of, waiting for a person to label them."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Callable

from . import LABELS
from .atomic import remove_abandoned_writes, write_atomically
from .config import DEFAULT_FILE_MB, DEFAULT_REQUEST_MB, DEFAULT_REQUEST_MEGAPIXELS, Settings
from .data import Dataset, Example, IMAGE_SUFFIXES, normalize_label
from .errors import CatdogError, cut, public_message
from .images import (DEFAULT_LIMITS, ImageLimits, InvalidImage, content_hash, image_size, read_bytes,
                     storable_copy)

FORMAT_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
                   "MPO": ".jpg"}
STORED_SUFFIXES = set(FORMAT_SUFFIXES.values()) | {".img"}
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_BYTES = 500 * 1024 * 1024
MAX_ZIP_DIRECTORY_BYTES = 4 * 2**20  # 40,000 entries of long names: room for MAX_ZIP_MEMBERS images and more
# Training reads photos at 288 px (fine-tuning included): 1,024 px on the longer side keeps 3.5 times that for
# any recipe to come, and a photo within it is kept as it came unless it is over 1 MB (a BMP, a noisy PNG);
# anything larger is kept as a JPEG of that size, at most about 1 MB, so a few small archives of huge images
# cannot fill the disk.
STORED_MAX_SIDE = 1024
STORED_MAX_BYTES = 2**20
SUSPECT_FOLDER = "suspect"
UNLABELLED_FOLDER = "unlabelled"  # the review queue: photos without a label yet, out of training
UNLABELLED_SUFFIX = ".jpg"  # each kept as a bare JPEG
SHOWN_NAME_CHARACTERS = 120  # of a file's name (in an archive: its path) in the results
# check(label, image) → why the image's label looks wrong (a sentence), or None.
LabelCheck = Callable[[str, bytes], str | None]


@dataclasses.dataclass(frozen=True)
class UploadResult:
    file: str
    status: str  # "added", "suspect", "duplicate" or "rejected"
    reason: str = ""
    sha256: str = ""  # of the file as uploaded, once read


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one upload call may bring in across all its files and archives: bytes kept on disk, pixels
    decoded to check the images (CATDOG_MAX_REQUEST_MB, CATDOG_MAX_REQUEST_MEGAPIXELS), files and members
    read; and the size of one image (CATDOG_MAX_UPLOAD_MB, unpacked from an archive too)."""

    stored_bytes: int = DEFAULT_REQUEST_MB * 2**20
    pixels: int = DEFAULT_REQUEST_MEGAPIXELS * 10**6
    file_bytes: int = DEFAULT_FILE_MB * 2**20  # one image, as a file or unpacked from an archive
    entries: int = MAX_ZIP_MEMBERS  # files and archive members read, whatever becomes of them

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestLimits:
        return cls(settings.max_request_mb * 2**20, settings.max_request_megapixels * 10**6,
                   settings.max_upload_mb * 2**20)

    def over(self, stored_bytes: int, pixels: int) -> str | None:
        """Why an upload that has brought this much must stop, in a sentence; None while it may go on."""
        if stored_bytes > self.stored_bytes:
            return (f"This upload has reached its limit of {self.stored_bytes // 2**20} MB of images "
                    "(CATDOG_MAX_REQUEST_MB); send the rest in another upload.")
        if pixels > self.pixels:
            return (f"This upload has reached its limit of {self.pixels // 10**6:,} megapixels of images "
                    "(CATDOG_MAX_REQUEST_MEGAPIXELS); send the rest in another upload.")
        return None


class UploadStore:
    """root/<label>/<sha256>.<format> — the hash (of the file as uploaded) is the name, so a file name from a
    user never becomes a path, and the suffix is the stored format, so `datasets`' imagefolder reads the folder
    back. Suspect images wait in root/suspect/<label>/, out of training, until an admin confirms or discards
    them; photos kept for labelling wait in root/unlabelled/. Images are checked and stored one at a time as
    they are read, at most STORED_MAX_SIDE and about STORED_MAX_BYTES each, within the call's RequestLimits."""

    def __init__(self, root: Path, limits: ImageLimits = DEFAULT_LIMITS,
                 request_limits: RequestLimits = RequestLimits()):
        self.root = Path(root)
        self.limits = limits
        self.request_limits = request_limits

    def _stored_path(self, sha256: str) -> tuple[str, Path] | None:
        """Where an image with this hash is stored, found by name (a few stat calls, whatever the store's size)."""
        for folder in (self.root, self.root / SUSPECT_FOLDER):
            for label in LABELS:
                for suffix in STORED_SUFFIXES:
                    path = folder / label / f"{sha256}{suffix}"
                    if path.is_file():
                        return label, path
        return None

    def known(self, sha256: str) -> str | None:
        stored = self._stored_path(sha256)
        return stored[0] if stored else None

    def keep_for_labelling(self, data: bytes, limit: int) -> bool:
        """Keep a photo for a person to label, out of training: its pixels only, as a JPEG of at most
        STORED_MAX_SIDE (a user's photo keeps no metadata here); False (nothing stored) when the same photo
        is already stored or `limit` photos already wait."""
        sha256 = content_hash(data)
        if self.known(sha256) or self._unlabelled_path(sha256) or len(self.unlabelled()) >= limit:
            return False
        declared = image_size(data, self.limits)
        stored, _ = storable_copy(data, min(STORED_MAX_SIDE, max(declared[1:])), 0, self.limits, declared)
        write_atomically(self.root / UNLABELLED_FOLDER / f"{sha256}{UNLABELLED_SUFFIX}", stored)
        return True

    def unlabelled(self) -> list[Path]:
        """The photos waiting for a label."""
        folder = self.root / UNLABELLED_FOLDER
        return sorted(path for path in folder.glob("*.*")
                      if path.suffix in STORED_SUFFIXES and path.is_file() and not path.is_symlink())

    def _unlabelled_path(self, sha256: str) -> Path | None:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):  # a name from a client never becomes a path
            return None
        path = self.root / UNLABELLED_FOLDER / f"{sha256}{UNLABELLED_SUFFIX}"
        return path if path.is_file() else None

    def label_unlabelled(self, sha256: str, label: str | None) -> bool:
        """The waiting photo joins training as `label` (a person labelled it), or with label None is deleted;
        False when no photo with that hash waits."""
        path = self._unlabelled_path(sha256)
        if path is None:
            return False
        try:
            if label is None:
                path.unlink()
            else:
                folder = self.root / normalize_label(label)
                folder.mkdir(parents=True, exist_ok=True)
                os.replace(path, folder / path.name)
        except FileNotFoundError:  # another admin labelled it a moment ago
            return False
        return True

    def _files(self, label: str, suspect: bool = False) -> list[Path]:
        folder = self.root / SUSPECT_FOLDER / label if suspect else self.root / label
        # Regular files only: reading a FIFO that someone left here would block training forever.
        return sorted(path for path in folder.glob("*.*")
                      if path.suffix in STORED_SUFFIXES and path.is_file() and not path.is_symlink())

    def add(self, label: str, files: list[tuple[str, Path | bytes]], check: LabelCheck | None = None
            ) -> list[UploadResult]:
        """Store each image (a file's path or bytes) under the class; zip archives are opened and their images
        stored. With check, an image whose label it doubts is stored as suspect, kept out of training until
        confirmed. Each image is read, checked and stored before the next is read. (One image per check: the
        model's buffers for a batch would cost more memory than the whole call may.)"""
        label = normalize_label(label)
        for folder in (self.root / label, self.root / SUSPECT_FOLDER / label):
            remove_abandoned_writes(folder)  # a crash in an earlier upload must not fill the disk by degrees
        seen: set[str] = set()
        used = {"bytes": 0, "pixels": 0}
        results = []
        for name, read in _expand_archives(files, self.request_limits.file_bytes):
            if len(results) == self.request_limits.entries:  # however cheap each is: duplicates, empty files
                results.append(UploadResult(cut(name, SHOWN_NAME_CHARACTERS), "rejected", (
                    f"This upload has reached its limit of {self.request_limits.entries:,} files; it and the "
                    "files after it were not read. Send them in another upload.")))
                break
            results.append(self._add_one(label, cut(name, SHOWN_NAME_CHARACTERS), read, check, seen, used))
        return results

    def _add_one(self, label: str, name: str, read, check: LabelCheck | None, seen: set[str], used: dict
                 ) -> UploadResult:
        """Stored as added or suspect, or why not: not an image, over the call's limits, or already stored."""
        over = self.request_limits.over(used["bytes"], used["pixels"])
        if over:
            return UploadResult(name, "rejected", over)
        try:
            data = read()
        except CatdogError as error:
            return UploadResult(name, "rejected", public_message(error))
        sha256 = content_hash(data)  # before decoding: a file sent a hundred times is decoded once
        existing = self.known(sha256)
        if existing:
            return UploadResult(name, "duplicate", f"the same image is already stored as a {existing}", sha256)
        if sha256 in seen:
            return UploadResult(name, "duplicate", "the same file comes earlier in this upload", sha256)
        seen.add(sha256)
        try:
            declared = image_size(data, self.limits)
            used["pixels"] += declared[1] * declared[2]
            over = self.request_limits.over(0, used["pixels"])
            if over:
                return UploadResult(name, "rejected", over)
            stored, image_format = storable_copy(data, STORED_MAX_SIDE, STORED_MAX_BYTES, self.limits, declared)
        except CatdogError as error:  # not an image, too costly to decode, or the server is busy
            return UploadResult(name, "rejected", public_message(error))
        used["bytes"] += len(stored)
        over = self.request_limits.over(used["bytes"], 0)
        if over:
            return UploadResult(name, "rejected", over)
        doubt = check(label, stored) if check else None
        folder = self.root / SUSPECT_FOLDER / label if doubt else self.root / label
        try:
            write_atomically(folder / f"{sha256}{FORMAT_SUFFIXES.get(image_format, '.img')}", stored)
        except OSError as error:  # a full or read-only disk: nothing half-written is left (atomic write)
            seen.discard(sha256)
            return UploadResult(name, "rejected", f"Not stored: the data folder cannot be written "
                                                  f"({error.strerror or type(error).__name__}). Free space on its "
                                                  "disk, or make CATDOG_DATA_DIR writable, and upload it again.")
        waiting = self._unlabelled_path(sha256)
        if waiting:  # labelled by this upload: it no longer waits for a label
            waiting.unlink(missing_ok=True)
        return UploadResult(name, "suspect" if doubt else "added", doubt or "", sha256)

    def suspects(self) -> list[tuple[str, Path]]:
        """(label it was uploaded with, file) of each image held for review."""
        return [(label, path) for label in LABELS for path in self._files(label, suspect=True)]

    def review_suspects(self, confirm: bool) -> list[tuple[str, str]]:
        """Confirm every suspect image (it joins training under the label it was uploaded with) or discard them
        all; returns the (label, sha256) of each."""
        suspects = self.suspects()
        for label, path in suspects:
            if confirm:
                (self.root / label).mkdir(parents=True, exist_ok=True)
                os.replace(path, self.root / label / path.name)
            else:
                path.unlink()
        return [(label, path.stem) for label, path in suspects]

    def dataset(self) -> Dataset:
        """The confirmed uploads as examples that read their file only when used."""
        return Dataset([Example(path.stem, label, f"uploads/{label}/{path.name}", path)
                        for label in LABELS for path in self._files(label)])

    def counts(self) -> dict[str, int]:
        return {label: len(self._files(label)) for label in LABELS}

    def suspect_counts(self) -> dict[str, int]:
        return {label: len(self._files(label, suspect=True)) for label in LABELS}


def _expand_archives(files: list[tuple[str, Path | bytes]], file_bytes: int):
    """(name, read) for each image: read() returns its bytes, so that one file at a time is in memory. An
    archive that comes again (by content) is read once."""
    archives: set[str] = set()
    for name, source in files:
        if not name.lower().endswith(".zip"):
            yield name, functools.partial(read_bytes, source)
            continue
        try:
            file = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
        except OSError:
            yield name, _refused(InvalidImage("This zip archive cannot be read; upload it again."))
            continue
        with file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
            if digest in archives:
                yield name, _refused(InvalidImage("The same archive comes earlier in this upload."))
                continue
            archives.add(digest)
            yield from _archive_members(name, file, file_bytes)


def _archive_members(name: str, file, file_bytes: int):
    """(name, read) for each image in the zip archive open in file, or one refusal for the whole archive."""
    try:
        if _directory_bytes(file) > MAX_ZIP_DIRECTORY_BYTES:
            yield name, _refused(InvalidImage(
                f"The archive's list of contents is over {MAX_ZIP_DIRECTORY_BYTES // 2**20} MB, more than "
                f"{MAX_ZIP_MEMBERS} images need; send it as smaller archives."))
            return
        archive = zipfile.ZipFile(file)
        members = [info for info in archive.infolist()
                   if not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES]
    except (zipfile.BadZipFile, OSError):
        yield name, _refused(InvalidImage("This zip archive is corrupt."))
        return
    with archive:
        if len(members) > MAX_ZIP_MEMBERS:
            yield name, _refused(InvalidImage(f"The archive holds {len(members)} images; the limit is "
                                              f"{MAX_ZIP_MEMBERS}."))
        elif sum(info.file_size for info in members) > MAX_ZIP_BYTES:
            # Checked on the declared sizes before anything is decompressed: a zip bomb never unpacks.
            yield name, _refused(InvalidImage(f"The archive unpacks to more than {MAX_ZIP_BYTES // 2**20} MB."))
        else:
            for info in members:
                yield f"{name}/{info.filename}", (
                    functools.partial(_read_member, archive, info) if info.file_size <= file_bytes else _refused(
                        InvalidImage(f"It unpacks to {info.file_size / 2**20:.0f} MB; the limit for one image is "
                                     f"{file_bytes // 2**20} MB (CATDOG_MAX_UPLOAD_MB).")))


def _directory_bytes(file) -> int:
    """The size of a zip's central directory, from its end record (zipfile's own reader of it, zip64 included):
    ZipFile parses the whole directory into objects before anyone can count them, and a 50 MB upload holds a
    million entries (8 s of CPU and 400 MB to parse)."""
    end = zipfile._EndRecData(file)
    if end is None:
        raise zipfile.BadZipFile("no end record")
    return end[zipfile._ECD_SIZE]


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as error:
        raise InvalidImage(f"This archive member cannot be read ({error}).") from None


def _refused(error: InvalidImage):
    def read():
        raise error
    return read
