"""The model hub: immutable versions v1, v2, … in a folder laid out like a Hugging Face model repo,
and a `production` alias that promote and rollback move.

    models/catdog-mobilenetv2/
      refs.json        {"production": "v2", "previous": ["v1"]}
      v1/  README.md  config.json  head.weights.h5  metrics.json  history.json
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable

from filelock import FileLock

from .classifier import CONFIG_FILE, Classifier
from .config import Settings

PRODUCTION = "production"
REFS_FILE = "refs.json"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
VERSION_PATTERN = re.compile(r"^v(\d+)$")


class HubError(RuntimeError):
    """A version or alias that does not exist, or hub files that cannot be read."""


class LocalHub:
    def __init__(self, root: Path, name: str):
        self.repo = Path(root) / name

    def _locked(self) -> FileLock:
        """A lock across processes, so two writers never pick the same version number or lose a ref."""
        self.repo.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.repo / ".lock"), timeout=60)

    # Reading

    def versions(self) -> list[str]:
        """Complete versions, oldest first; a folder still being written is never listed."""
        if not self.repo.is_dir():
            return []
        found = [(int(match.group(1)), path.name) for path in self.repo.iterdir()
                 if (match := VERSION_PATTERN.match(path.name)) and (path / CONFIG_FILE).is_file()]
        return [name for _, name in sorted(found)]

    def refs(self) -> dict:
        path = self.repo / REFS_FILE
        if not path.is_file():
            return {PRODUCTION: None, "previous": []}
        try:
            refs = json.loads(path.read_text())
            return {PRODUCTION: refs.get(PRODUCTION), "previous": list(refs.get("previous", []))}
        except (ValueError, AttributeError) as error:
            raise HubError(f"{path} is corrupt ({error}); fix or delete it and promote a version again.") from None

    def production(self) -> str | None:
        return self.refs()[PRODUCTION]

    def resolve(self, revision: str = PRODUCTION) -> str:
        """"production" or "vN" → the version folder name, checked to exist."""
        version = self.production() if revision == PRODUCTION else revision
        if version is None:
            raise HubError(f"{self.repo} has no production model yet: train one with "
                           "`python -m training.train --data-dir DIR`.")
        if version not in self.versions():
            known = ", ".join(self.versions()) or "none"
            raise HubError(f"No model version {version!r} in {self.repo} (versions: {known}).")
        return version

    def download(self, revision: str = PRODUCTION) -> Path:
        """A local folder holding the version's files (for this hub, the version folder itself)."""
        return self.repo / self.resolve(revision)

    def load(self, revision: str, settings: Settings) -> Classifier:
        version = self.resolve(revision)
        return Classifier.load(self.download(version), settings.weights_dir, version=version,
                               batch_size=settings.batch_size, low_confidence=settings.low_confidence,
                               max_pixels=settings.max_pixels)

    def metrics(self, revision: str = PRODUCTION) -> dict:
        path = self.download(revision) / METRICS_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise HubError(f"Cannot read {path} ({error}).") from None

    def list_versions(self) -> list[dict]:
        """Each version with its creation date, test metrics and whether it is production."""
        production = self.production()
        rows = []
        for version in self.versions():
            try:
                metrics = self.metrics(version)
            except HubError:
                metrics = {}
            rows.append({"version": version, "created_at": metrics.get("created_at"),
                         "production": version == production, "test": metrics.get("test", {}),
                         "validation": metrics.get("validation", {})})
        return rows

    # Writing: each under the lock, each atomic

    def push(self, folder: Path, write_card: Callable[[str], str] | None = None) -> str:
        """Publish the files in folder as the next version and return its name (v1, v2, …).

        write_card(version) renders README.md once the version's name is known.
        """
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise HubError(f"{folder} has no {CONFIG_FILE}; it is not a model version.")
        with self._locked():
            # Under the lock no other write is under way: a staging folder here is a crashed writer's.
            for debris in self.repo.glob(".staging-*"):
                shutil.rmtree(debris, ignore_errors=True)
            versions = self.versions()
            version = f"v{int(versions[-1][1:]) + 1}" if versions else "v1"
            staging = self.repo / f".staging-{uuid.uuid4().hex}"
            try:
                shutil.copytree(folder, staging)
                staging.chmod(0o755)
                if write_card:
                    (staging / CARD_FILE).write_text(write_card(version))
                for path in staging.rglob("*"):
                    if path.is_file():
                        _fsync(path)
                        path.chmod(0o444)
                # rename() is atomic: the version appears whole or not at all.
                os.rename(staging, self.repo / version)
                _fsync(self.repo)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return version

    def promote(self, version: str) -> None:
        with self._locked():
            version = self.resolve(version)
            refs = self.refs()
            if refs[PRODUCTION] == version:
                return
            if refs[PRODUCTION]:
                refs["previous"].append(refs[PRODUCTION])
            refs[PRODUCTION] = version
            self._write_refs(refs)

    def rollback(self) -> str:
        """Serve the version that production replaced; returns it."""
        with self._locked():
            refs = self.refs()
            if not refs["previous"]:
                raise HubError("There is no earlier production version to roll back to.")
            refs[PRODUCTION] = refs["previous"].pop()
            self._write_refs(refs)
            return refs[PRODUCTION]

    def _write_refs(self, refs: dict) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.repo, prefix=".refs-", suffix=".tmp")
        os.chmod(temporary, 0o644)
        with os.fdopen(handle, "w") as file:
            json.dump(refs, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.repo / REFS_FILE)
        _fsync(self.repo)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def open_hub(settings: Settings) -> LocalHub:
    return LocalHub(settings.models_dir, settings.model_name)
