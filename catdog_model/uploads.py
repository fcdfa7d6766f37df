"""Training images that users upload: validated, deduplicated by content, stored atomically by hash, and held
apart as *suspect* when the production model confidently disagrees with the label given."""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from pathlib import Path
from typing import Callable

from PIL import Image

from . import LABELS
from .atomic import write_atomically
from .data import Dataset, Example, IMAGE_SUFFIXES, normalize_label
from .images import DEFAULT_LIMITS, ImageLimits, InvalidImage, content_hash, load_image

FORMAT_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
                   "MPO": ".jpg"}
STORED_SUFFIXES = set(FORMAT_SUFFIXES.values()) | {".img"}
MAX_ZIP_MEMBERS = 5000
MAX_ZIP_BYTES = 500 * 1024 * 1024
SUSPECT_FOLDER = "suspect"
JUDGED_PER_CALL = 32  # images the label check classifies in one model call
# judge(label, images) → for each image, why its label looks wrong (a sentence), or None.
LabelCheck = Callable[[str, list[bytes]], list[str | None]]


@dataclasses.dataclass(frozen=True)
class UploadResult:
    file: str
    status: str  # "added", "suspect", "duplicate" or "rejected"
    reason: str = ""


class UploadStore:
    """root/<label>/<sha256>.<format> — the hash is the name, so a file name from a user never becomes a path,
    and the suffix is the decoded format, so `datasets`' imagefolder reads the folder back. Suspect images wait
    in root/suspect/<label>/, out of training, until an admin confirms or discards them."""

    def __init__(self, root: Path, limits: ImageLimits = DEFAULT_LIMITS):
        self.root = Path(root)
        self.limits = limits

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

    def _files(self, label: str, suspect: bool = False) -> list[Path]:
        folder = self.root / SUSPECT_FOLDER / label if suspect else self.root / label
        return sorted(path for path in folder.glob("*.*") if path.suffix in STORED_SUFFIXES)

    def add(self, label: str, files: list[tuple[str, bytes]], check: LabelCheck | None = None) -> list[UploadResult]:
        """Store each image under the class; zip archives are opened and their images stored. With check, an
        image whose label it doubts is stored as suspect, kept out of training until confirmed."""
        label = normalize_label(label)
        results: list[UploadResult | None] = []
        accepted: list[tuple[int, str, bytes, str]] = []  # (result index, sha256, data, suffix)
        seen: set[str] = set()
        for name, data in _expand_archives(files):
            results.append(self._screen(name, data, seen, accepted, len(results)))
        for start in range(0, len(accepted), JUDGED_PER_CALL):
            chunk = accepted[start:start + JUDGED_PER_CALL]
            doubts = check(label, [data for _, _, data, _ in chunk]) if check else [None] * len(chunk)
            for (index, sha256, data, suffix), doubt in zip(chunk, doubts):
                folder = self.root / SUSPECT_FOLDER / label if doubt else self.root / label
                write_atomically(folder / f"{sha256}{suffix}", data)
                results[index] = UploadResult(results[index].file, "suspect" if doubt else "added", doubt or "")
        return results

    def _screen(self, name: str, data, seen: set[str], accepted: list, index: int) -> UploadResult:
        """The verdict for a file that is not an image or is already stored; else it joins accepted."""
        if isinstance(data, InvalidImage):
            return UploadResult(name, "rejected", str(data))
        try:
            load_image(data, size=32, limits=self.limits)
            suffix = FORMAT_SUFFIXES.get(Image.open(io.BytesIO(data)).format, ".img")
        except InvalidImage as error:
            return UploadResult(name, "rejected", str(error))
        sha256 = content_hash(data)
        existing = self.known(sha256)
        if existing:
            return UploadResult(name, "duplicate", f"the same image is already stored as a {existing}")
        if sha256 in seen:
            return UploadResult(name, "duplicate", "the same image comes earlier in this upload")
        seen.add(sha256)
        accepted.append((index, sha256, data, suffix))
        return UploadResult(name, "added")

    def review_suspects(self, confirm: bool) -> int:
        """Confirm every suspect image (it joins training under the label it was uploaded with) or discard them
        all; returns how many."""
        suspects = [(label, path) for label in LABELS for path in self._files(label, suspect=True)]
        for label, path in suspects:
            if confirm:
                (self.root / label).mkdir(parents=True, exist_ok=True)
                os.replace(path, self.root / label / path.name)
            else:
                path.unlink()
        return len(suspects)

    def dataset(self) -> Dataset:
        examples = []
        for label in LABELS:
            for path in self._files(label):
                examples.append(Example(path.stem, label, f"uploads/{label}/{path.name}", path.read_bytes()))
        return Dataset(examples)

    def counts(self) -> dict[str, int]:
        return {label: len(self._files(label)) for label in LABELS}

    def suspect_counts(self) -> dict[str, int]:
        return {label: len(self._files(label, suspect=True)) for label in LABELS}


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


