"""Training images that users upload: validated, deduplicated by content, stored atomically by hash."""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

from . import LABELS
from .data import Dataset, Example, IMAGE_SUFFIXES, normalize_label
from .images import InvalidImage, content_hash, load_image

FORMAT_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
                   "MPO": ".jpg"}
STORED_SUFFIXES = set(FORMAT_SUFFIXES.values()) | {".img"}
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_BYTES = 500 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class UploadResult:
    file: str
    status: str  # "added", "duplicate" or "rejected"
    reason: str = ""


class UploadStore:
    """root/<label>/<sha256>.<format> — the hash is the name, so a file name from a user never becomes a path,
    and the suffix is the decoded format, so `datasets`' imagefolder reads the folder back."""

    def __init__(self, root: Path, max_pixels: int):
        self.root = Path(root)
        self.max_pixels = max_pixels

    def known(self, sha256: str) -> str | None:
        return next((label for label in LABELS if any((self.root / label).glob(f"{sha256}.*"))), None)

    def _files(self, label: str) -> list[Path]:
        return sorted(path for path in (self.root / label).glob("*.*") if path.suffix in STORED_SUFFIXES)

    def add(self, label: str, files: list[tuple[str, bytes]]) -> list[UploadResult]:
        """Store each image under the class; zip archives are opened and their images stored."""
        label = normalize_label(label)
        results = []
        for name, data in _expand_archives(files):
            if isinstance(data, InvalidImage):
                results.append(UploadResult(name, "rejected", str(data)))
                continue
            try:
                load_image(data, size=32, max_pixels=self.max_pixels)
                suffix = FORMAT_SUFFIXES.get(Image.open(io.BytesIO(data)).format, ".img")
            except InvalidImage as error:
                results.append(UploadResult(name, "rejected", str(error)))
                continue
            sha256 = content_hash(data)
            existing = self.known(sha256)
            if existing:
                results.append(UploadResult(name, "duplicate", f"the same image is already stored as a {existing}"))
                continue
            _write_atomically(self.root / label / f"{sha256}{suffix}", data)
            results.append(UploadResult(name, "added"))
        return results

    def dataset(self) -> Dataset:
        examples = []
        for label in LABELS:
            for path in self._files(label):
                examples.append(Example(path.stem, label, f"uploads/{label}/{path.name}", path.read_bytes()))
        return Dataset(examples)

    def counts(self) -> dict[str, int]:
        return {label: len(self._files(label)) for label in LABELS}


def _expand_archives(files: list[tuple[str, bytes]]):
    for name, data in files:
        if not name.lower().endswith(".zip"):
            yield name, data
            continue
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            members = [info for info in archive.infolist()
                       if not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES]
        except (zipfile.BadZipFile, OSError):
            yield name, InvalidImage("This zip archive is corrupt.")
            continue
        if len(members) > MAX_ZIP_MEMBERS:
            yield name, InvalidImage(f"The archive holds {len(members)} images; the limit is {MAX_ZIP_MEMBERS}.")
            continue
        if sum(info.file_size for info in members) > MAX_ZIP_BYTES:
            # Checked on the declared sizes before anything is decompressed: a zip bomb never unpacks.
            yield name, InvalidImage(f"The archive unpacks to more than {MAX_ZIP_BYTES // 2**20} MB.")
            continue
        for info in members:
            try:
                yield f"{name}/{info.filename}", archive.read(info)
            except (zipfile.BadZipFile, OSError, RuntimeError) as error:
                yield f"{name}/{info.filename}", InvalidImage(f"This archive member cannot be read ({error}).")


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
