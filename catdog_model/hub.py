"""The model hub: immutable versions v1, v2, … laid out like a Hugging Face model repo, and a `production`
alias that promote and rollback move. Two backends behind one interface (push / download / load / promote):

- LocalHub, a folder (the default):
      models/catdog-mobilenetv2/
        refs.json        {"production": "v2", "previous": ["v1"]}
        v1/  README.md  config.json  head.weights.h5  metrics.json  …
- HFHub, a Hugging Face Hub model repo (CATDOG_HUB_REPO): each version is one commit of its files at the repo's
  root, tagged vN; the alias is refs.json on `main`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from filelock import FileLock

from .atomic import fsync, write_atomically
from .errors import CatdogError, shown
from .config import DEFAULT_ROOT, IN_CHECKOUT, Settings
from .layout import CARD_FILE, CONFIG_FILE, REFS_FILE

PRODUCTION = "production"
VERSION_PATTERN = re.compile(r"^v(\d+)$")
EMPTY_REFS = {PRODUCTION: None, "previous": []}


class HubError(CatdogError, RuntimeError):
    """A version or alias that does not exist, or hub files that cannot be read or written."""


def next_version(versions: list[str]) -> str:
    return f"v{max((int(name[1:]) for name in versions), default=0) + 1}"


def parse_refs(text: str, where: str) -> dict:
    try:
        refs = json.loads(text)
        return {PRODUCTION: refs.get(PRODUCTION), "previous": list(refs.get("previous", []))}
    except (ValueError, AttributeError) as error:
        raise HubError(f"{where} is corrupt ({error}); fix or delete it and promote a version again.") from None


class ModelHub:
    """What both backends share; each provides versions, refs, download, push and an atomic refs update."""

    name: str
    remote = False  # True: the versions live elsewhere and reach this machine by download

    def versions(self) -> list[str]:
        raise NotImplementedError

    def refs(self) -> dict:
        raise NotImplementedError

    def download(self, revision: str = PRODUCTION) -> Path:
        """A local folder holding the version's files."""
        raise NotImplementedError

    def push(self, folder: Path, write_card: Callable[[str], str] | None = None) -> str:
        """Publish the files in folder as the next version; write_card(version) renders README.md."""
        raise NotImplementedError

    def _update_refs(self, change: Callable[[dict], dict]) -> dict:
        """Apply change to the refs atomically, against concurrent writers; returns the new refs."""
        raise NotImplementedError

    def production(self) -> str | None:
        return self.refs()[PRODUCTION]

    def resolve(self, revision: str = PRODUCTION) -> str:
        """"production" or "vN" → the version's name, checked to exist."""
        version = self.production() if revision == PRODUCTION else revision
        if version is None:
            raise HubError(f"{self.name} has no production model yet: train one with "
                           "`python -m catdog train --data-dir DIR`.")
        if version not in self.versions():
            known = ", ".join(self.versions()) or "none"
            raise HubError(f"No model version {shown(version)} in {self.name} (versions: {known}).")
        return version

    def promote(self, version: str) -> None:
        version = self.resolve(version)

        def change(refs: dict) -> dict:
            if refs[PRODUCTION] != version:
                if refs[PRODUCTION]:
                    refs["previous"].append(refs[PRODUCTION])
                refs[PRODUCTION] = version
            return refs

        self._update_refs(change)

    def rollback(self, to: str | None = None) -> str:
        """Serve the version that production replaced — or `to`, an earlier one, when the versions after it in
        the history are to be skipped (they leave it); returns the version now in production."""
        def change(refs: dict) -> dict:
            if not refs["previous"]:
                raise HubError("There is no earlier production version to roll back to.")
            if to is not None and to not in refs["previous"]:
                raise HubError(f"{to} was never production before {refs[PRODUCTION]}; it cannot be rolled back to.")
            previous = refs["previous"]
            index = len(previous) - 1 - (previous[::-1].index(to) if to is not None else 0)  # its latest time
            refs[PRODUCTION], refs["previous"] = previous[index], previous[:index]
            return refs

        return self._update_refs(change)[PRODUCTION]


def failure_reason(error: OSError) -> str:
    """The operating system's reason for a failed write ("No space left on device"), without paths; for
    shutil.copytree's error, which lists (source, destination, message) for each file, the first file's."""
    if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list) and error.args[0]:
        message = str(error.args[0][0][-1])
        number = re.match(r"\[Errno (\d+)\]", message)
        return os.strerror(int(number.group(1))) if number else "a file could not be copied"
    return error.strerror or type(error).__name__


class LocalHub(ModelHub):
    def __init__(self, root: Path, name: str):
        self.repo = Path(root) / name
        self.name = f"the local hub {name}"

    def _locked(self) -> FileLock:
        """A lock across processes, so two writers never pick the same version number or lose a ref."""
        self.repo.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.repo / ".lock"), timeout=60)

    def versions(self) -> list[str]:
        """Complete versions, oldest first; a folder still being written is never listed."""
        if not self.repo.is_dir():
            return []
        found = [(int(match.group(1)), path.name) for path in self.repo.iterdir()
                 if (match := VERSION_PATTERN.match(path.name)) and (path / CONFIG_FILE).is_file()]
        return [name for _, name in sorted(found)]

    def refs(self) -> dict:
        path = self.repo / REFS_FILE
        return (parse_refs(path.read_text(), f"{REFS_FILE} in {self.name}") if path.is_file()
                else dict(EMPTY_REFS, previous=[]))

    def download(self, revision: str = PRODUCTION) -> Path:
        return self.repo / self.resolve(revision)

    def push(self, folder: Path, write_card: Callable[[str], str] | None = None) -> str:
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise HubError(f"{folder} has no {CONFIG_FILE}; it is not a model version.")
        with self._locked():
            # Under the lock no other write is under way: a staging folder here is a crashed writer's.
            for debris in self.repo.glob(".staging-*"):
                shutil.rmtree(debris, ignore_errors=True)
            version = next_version(self.versions())
            staging = self.repo / f".staging-{uuid.uuid4().hex}"
            try:
                shutil.copytree(folder, staging)
                staging.chmod(0o755)
                if write_card:
                    (staging / CARD_FILE).write_text(write_card(version))
                for path in staging.rglob("*"):
                    if path.is_file():
                        fsync(path)
                        path.chmod(0o444)
                # rename() is atomic: the version appears whole or not at all.
                os.rename(staging, self.repo / version)
            except OSError as error:  # a full or read-only disk: a sentence, not shutil's list of file pairs
                raise HubError(f"Cannot write {version} into {self.name}: {failure_reason(error)}. Nothing was "
                               "published; free space on its disk (or make it writable) and try again.") from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            fsync(self.repo)
        return version

    def _update_refs(self, change: Callable[[dict], dict]) -> dict:
        with self._locked():
            # Under the lock no other refs write is under way: a temporary file here is a killed writer's.
            for debris in self.repo.glob(f".{REFS_FILE}-*.tmp"):
                debris.unlink(missing_ok=True)
            refs = change(self.refs())
            write_atomically(self.repo / REFS_FILE, (json.dumps(refs, indent=2) + "\n").encode())
            return refs


class HFHub(ModelHub):
    """A Hugging Face Hub model repo, through huggingface_hub (HF_TOKEN as it reads it; endpoint None: its default).

    The production alias is refs.json on `main`, changed by a commit whose parent must be the `main` the
    change was computed from: the Hub moves the branch atomically and refuses a stale parent, so two
    promoters never overwrite each other. (A tag or branch cannot be moved in one call: delete + create
    leaves a moment with no production.)
    """

    remote = True

    def __init__(self, repo_id: str, pending_dir: Path, endpoint: str | None = None, attempts: int = 4):
        from huggingface_hub import HfApi

        self.endpoint = endpoint  # None: huggingface_hub's default (HF_ENDPOINT as it was at its import)
        self.repo_id = repo_id
        self.name = f"the Hub repo {repo_id}"
        self.pending_dir = Path(pending_dir)
        self.attempts = attempts
        self.api = HfApi(endpoint=self.endpoint)

    def _retry(self, call: Callable):
        """Transient failures (connection, timeout, HTTP 5xx and 429) are retried with backoff."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        for attempt in range(self.attempts):
            try:
                return call()
            except (httpx2.ConnectError, httpx2.TimeoutException, HfHubHTTPError) as error:
                status = getattr(getattr(error, "response", None), "status_code", None)
                transient = status is None or status >= 500 or status == 429
                if not transient or attempt == self.attempts - 1:
                    raise
                time.sleep(0.5 * 2 ** attempt)

    def versions(self) -> list[str]:
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            tags = self._retry(lambda: self.api.list_repo_refs(self.repo_id)).tags
        except RepositoryNotFoundError:
            return []
        return sorted((tag.name for tag in tags if VERSION_PATTERN.match(tag.name)), key=lambda name: int(name[1:]))

    def _refs_at(self, revision: str) -> dict:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        try:
            path = self._retry(lambda: hf_hub_download(self.repo_id, REFS_FILE, revision=revision,
                                                          endpoint=self.endpoint))
        except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
            return dict(EMPTY_REFS, previous=[])
        return parse_refs(Path(path).read_text(), f"{REFS_FILE} in {self.name}")

    def refs(self) -> dict:
        return self._refs_at("main")

    def resolve(self, revision: str = PRODUCTION) -> str:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            # Offline, the tags cannot be listed: trust the cache, which download() reads or refuses clearly.
            version = self.production() if revision == PRODUCTION else revision
            if version is None:
                raise HubError(f"{self.name} has no production model in the local cache (offline).")
            return version
        return super().resolve(revision)

    def download(self, revision: str = PRODUCTION) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        version = self.resolve(revision)
        try:
            return Path(self._retry(lambda: snapshot_download(self.repo_id, revision=version,
                                                              endpoint=self.endpoint)))
        except (HfHubHTTPError, LocalEntryNotFoundError) as error:
            raise HubError(f"Cannot download {version} of {self.name} ({error}).") from None

    def push(self, folder: Path, write_card: Callable[[str], str] | None = None) -> str:
        """One commit with every file of the version, then the tag vN on that commit."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise HubError(f"{folder} has no {CONFIG_FILE}; it is not a model version.")
        pending = self.pending_dir / f"push-{uuid.uuid4().hex}"
        shutil.copytree(folder, pending)
        try:
            self._retry(lambda: self.api.create_repo(self.repo_id, exist_ok=True))
            version = next_version(self.versions())
            if write_card:
                (pending / CARD_FILE).write_text(write_card(version))
            commit = self._retry(lambda: self.api.upload_folder(
                repo_id=self.repo_id, folder_path=pending, commit_message=f"Add {version}"))
            self._retry(lambda: self.api.create_tag(self.repo_id, tag=version, revision=commit.oid,
                                                    tag_message=f"Model version {version}"))
        except (HfHubHTTPError, httpx2.HTTPError, OSError) as error:
            raise HubError(f"Pushing to {self.name} failed ({error}); the version's files are kept in "
                           f"{pending}.") from None
        shutil.rmtree(pending, ignore_errors=True)
        return version

    def _update_refs(self, change: Callable[[dict], dict]) -> dict:
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.errors import HfHubHTTPError

        for _ in range(10):
            head = self._retry(lambda: self.api.repo_info(self.repo_id, revision="main")).sha
            refs = change(self._refs_at(head))
            content = (json.dumps(refs, indent=2) + "\n").encode()
            try:
                self._retry(lambda: self.api.create_commit(
                    self.repo_id, operations=[CommitOperationAdd(REFS_FILE, content)], parent_commit=head,
                    commit_message=f"production: {refs[PRODUCTION]}"))
                return refs
            except HfHubHTTPError as error:
                if getattr(error.response, "status_code", None) not in (409, 412):
                    raise HubError(f"Cannot update {REFS_FILE} in {self.name} ({error}).") from None
        raise HubError(f"{self.name} kept changing while the production alias was being moved; try again.")


def open_hub(settings: Settings) -> ModelHub:
    if settings.hub_repo:
        return HFHub(settings.hub_repo, settings.data_dir / "pending-pushes", settings.hub_endpoint)
    if not IN_CHECKOUT and settings.models_dir == DEFAULT_ROOT / "models" and not settings.models_dir.exists():
        copy_shipped_models(settings.models_dir)
    return LocalHub(settings.models_dir, settings.model_name)


def copy_shipped_models(models_dir: Path) -> None:
    """An installed catdog's first use: the wheel's models/ (catdog_model/shipped_models) becomes the user's hub,
    writable. Copied whole, then renamed, so a second process starting at once finds it complete. A later wheel's
    versions are not added to a hub that exists: `catdog export`, a retraining or a copy by hand adds versions."""
    temporary = models_dir.with_name(f".models-{uuid.uuid4().hex}.tmp")
    try:
        shutil.copytree(Path(__file__).parent / "shipped_models", temporary,
                        ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
        for folder, _, files in os.walk(temporary):  # an installation may be read-only; the hub is written to
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o644)
        os.replace(temporary, models_dir)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if not models_dir.is_dir():  # not another process that copied first
            raise HubError(f"The shipped model could not be copied to {models_dir} ({error.strerror or error}); "
                           "free some space there, or set CATDOG_MODELS_DIR to a folder this user can write.") from None
