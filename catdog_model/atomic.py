"""Writes that a crash cannot leave half done: a temporary file in the same folder, flushed to disk, then
renamed over the target (rename is atomic), and the folder's entry flushed too. What a write killed before its
rename leaves behind is removed later (remove_abandoned_writes). writable_folder says, before any work starts,
that a folder cannot be written."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from .errors import ServiceError

TEMPORARY_SUFFIX = ".tmp"
ABANDONED_SECONDS = 3600  # no write takes this long: an older temporary file is a killed writer's


def write_atomically(path: Path, data: bytes) -> None:
    """`path` holds `data` whole, or keeps what it held before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=TEMPORARY_SUFFIX)
    try:
        os.chmod(temporary, 0o644)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync(path.parent)


def fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename into it, a new file), to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_abandoned_writes(folder: Path) -> int:
    """Delete the temporary files that writes killed before their rename (kill -9, power loss) left in folder;
    a recent one may be another process's write under way and is kept. Returns how many went."""
    removed = 0
    for debris in folder.glob(f".*{TEMPORARY_SUFFIX}"):
        try:
            if debris.is_file() and time.time() - debris.stat().st_mtime > ABANDONED_SECONDS:
                debris.unlink()
                removed += 1
        except FileNotFoundError:  # another process removed it first
            pass
    return removed


def writable_folder(path: Path, variable: str) -> None:
    """Create the folder now, or say which setting to change, rather than fail at the first prediction."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as error:
        raise ServiceError(f"{variable} ({path}) cannot be written: {error.strerror}. Point {variable} at a "
                           f"folder this user can write.") from None
