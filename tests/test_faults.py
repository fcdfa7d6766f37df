"""Faults tried for real, beyond tests/test_crash_safety.py: kill -9 of the server and of its retraining child
while a new version is being published, kill -9 in the middle of promotions, a full and a read-only disk under
uploads and under a retraining's publishing, and the prediction log's PostgreSQL stopped and started again under
load. What is checked is what a user sees: nothing stored is lost or half-written, the app comes back serving,
and every failure is told in a sentence, never a traceback."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import httpx
import psutil
import pytest
from gradio_client import Client, handle_file

from bench.loadtest import App
from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.hub import VERSION_PATTERN, LocalHub
from tests.conftest import (OTHER_VERSION, RETRAINING_SECONDS, WEIGHTS_DIR, patient_client, requires_photos,
                            requires_weights, shipped_models, start_postgres)
from bench.servers import Postgres, wait_for
from catdog_model.layout import CONFIG_FILE, REFS_FILE

pytestmark = [pytest.mark.heavy, requires_weights]

MODEL_NAME = Settings.from_env().model_name


# Helpers: the app in its own process, the hub on disk, what a user is told.

def copy_models(root: Path) -> LocalHub:
    shutil.copytree(shipped_models(), root, ignore=shutil.ignore_patterns(".lock"), dirs_exist_ok=True)
    return LocalHub(root, MODEL_NAME)


def app_env(tmp_path: Path, cache_dir: Path, **settings: str) -> dict[str, str]:
    env = {**os.environ, "CATDOG_MODELS_DIR": str(tmp_path / "models"), "CATDOG_DATA_DIR": str(tmp_path / "data"),
           "CATDOG_CACHE_DIR": str(cache_dir), "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR), "CATDOG_OFFLINE": "1",
           "CATDOG_RELOAD_SECONDS": "0", "PYTHONPATH": str(PROJECT_ROOT), **settings}
    env.pop("CATDOG_ADMIN_TOKEN", None)
    return env


def kill_9(process: subprocess.Popen | psutil.Process) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


class Served(App):
    """`python app.py` in its own process (bench.loadtest.App), which never outlives a test: one that does not
    start, or does not stop when asked (a client's open event stream keeps uvicorn waiting), is killed."""

    def __init__(self, env: dict[str, str]):
        try:
            super().__init__(env)
        except BaseException:
            if getattr(self, "process", None) is not None and self.process.poll() is None:
                kill_9(self.process)
            raise

    def stop(self) -> None:
        self._watching = False
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_9(self.process)


def stop_app(app: Served) -> None:
    app.stop()


def ended(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def predict_rest(url: str, photo: Path) -> dict:
    """POST /api/predict; the JSON of a 200, or AssertionError with what came back instead."""
    answer = httpx.post(url + "/api/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                        timeout=60)
    assert answer.status_code == 200, (answer.status_code, answer.text)
    return answer.json()


def wait_logged(url: str, made: int, seconds: float = 60) -> None:
    """All `made` predictions reach the prediction log (as /api/status counts it), none waits and none was lost."""
    try:
        wait_for(lambda: get_json(url + "/api/status")["predictions_last_hour"] == made, seconds, every=0.5)
    except AssertionError:
        status = get_json(url + "/api/status")
        pytest.fail(f"{status['predictions_last_hour']} of the {made} predictions reached the log "
                    f"({status['prediction_log']})")
    assert get_json(url + "/api/status")["prediction_log"] == {"pending_rows": 0, "dropped_rows": 0,
                                                                "write_error": None}


def assert_sentence(text) -> None:
    """What a user may be shown: a non-empty sentence, not a traceback, an errno or a path of the server's disk."""
    assert isinstance(text, str) and re.fullmatch(r"\w.*[.!?]", text.strip(), re.S), text
    for marker in ("Traceback", 'File "', "Errno", "Error(", "[(", "\n  "):
        assert marker not in text, text
    assert not re.search(r"(?<![\w.:/])/(?:[^\s/'\"()]+/)+", text), text  # no absolute path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_hub_whole(hub: LocalHub, production: str) -> None:
    """refs.json is valid JSON naming complete versions, production is unchanged, and every folder named like a
    version is a complete one: each file listed in its config.json is there, matching its sha256."""
    refs = json.loads((hub.repo / REFS_FILE).read_text())
    versions = hub.versions()
    assert refs["production"] == production and production in versions
    assert set(refs["previous"]) <= set(versions), refs
    shipped = shipped_models() / MODEL_NAME
    for entry in hub.repo.iterdir():
        if not VERSION_PATTERN.match(entry.name):
            continue
        assert entry.name in versions, f"{entry.name} is a folder without {CONFIG_FILE}: half published"
        for name, sha in json.loads((entry / CONFIG_FILE).read_text())["files"].items():
            if (shipped / entry.name).is_dir() and not (shipped / entry.name / name).exists():
                continue  # the repository keeps the full-model files of its production version only
            assert file_sha256(entry / name) == sha, f"{entry.name}/{name} is not the file its version lists"


def photos(folder: Path, count: int | None = None) -> list[Path]:
    return sorted(folder.iterdir())[:count]


# 1. kill -9 of the server, and of its retraining child, while a retraining publishes its version

def retrain_status(client: Client) -> dict:
    return client.predict(api_name="/retrain_status")


def start_retraining(app: Served, client: Client) -> psutil.Process:
    """Start a retraining through the API and wait until its child publishes; the child."""
    assert client.predict("", api_name="/retrain")["running"]
    child = wait_for(lambda: psutil.Process(app.process.pid).children(), 30)[0]
    wait_for(lambda: retrain_status(client)["stage"] == "publishing", RETRAINING_SECONDS, every=0.2)
    return child


def finished(client: Client) -> dict:
    return wait_for(lambda: (status := retrain_status(client)) and not status["running"] and status, RETRAINING_SECONDS,
                    every=0.5)


@requires_photos
def test_kill_9_of_the_server_while_its_retraining_publishes(tmp_path, cache_dir, small_photo_dir):
    hub = copy_models(tmp_path / "models")
    production, versions = hub.production(), hub.versions()
    env = app_env(tmp_path, cache_dir, CATDOG_BASE_DATA_DIR=str(small_photo_dir))
    app, child = Served(env), None
    try:
        child = start_retraining(app, patient_client(app.url))
        kill_9(app.process)  # early in publishing: the version's files are being made, the hub is not written yet
        # The child ends with its server (a kill -9 gives the server no chance to stop it), before it writes
        # anything more: it neither goes on working nor publishes for a server that is gone.
        try:
            wait_for(lambda: ended(child), 30)
        except AssertionError:
            pytest.fail("the retraining child outlived its server killed by SIGKILL")
    finally:
        stop_app(app)
        if child is not None and not ended(child):
            child.kill()
    assert hub.versions() == versions, "the retraining child published a version after its server was killed"
    assert_hub_whole(hub, production)

    restarted = Served(env)
    try:
        assert get_json(restarted.url + "/health") == {"status": "ok", "model_loaded": True,
                                                       "model_version": production, "precision": "fp32"}
        assert predict_rest(restarted.url, photos(small_photo_dir / "dogs", 1)[0])["version"] == production
        client = patient_client(restarted.url)
        status = client.predict("", api_name="/retrain")  # a new retraining can start
        assert status["running"] and status["error"] is None
        assert psutil.Process(restarted.process.pid).children()
    finally:
        stop_app(restarted)


@requires_photos
def test_kill_9_of_the_retraining_child_while_it_writes_its_version(tmp_path, cache_dir, small_photo_dir):
    hub = copy_models(tmp_path / "models")
    production, entries = hub.production(), set(os.listdir(hub.repo))
    app = Served(app_env(tmp_path, cache_dir, CATDOG_BASE_DATA_DIR=str(small_photo_dir)))
    try:
        client = patient_client(app.url)
        child = start_retraining(app, client)
        # Its write into the hub has begun the moment anything new appears there.
        wait_for(lambda: set(os.listdir(hub.repo)) - entries - {".lock"}, 120, every=0.001)
        kill_9(child)
        print("killed inside the write:", [name for name in os.listdir(hub.repo) if name.startswith(".staging-")])

        status = finished(client)
        assert status["stage"] == "failed" and "SIGKILL" in status["error"], status
        assert_sentence(status["error"])
        assert status["log"][-1] == f"Failed: {status['error']}"
        answer = predict_rest(app.url, photos(small_photo_dir / "cats", 1)[0])  # and it goes on serving
        assert answer["label"] == "cat" and answer["version"] == production
        assert_hub_whole(hub, production)
        assert get_json(app.url + "/api/status")["versions"] == hub.versions()

        # The hub's next write gets the next number and sweeps away what the killed one left.
        expected = f"v{int(hub.versions()[-1][1:]) + 1}"
        folder = tmp_path / "again"
        shutil.copytree(hub.repo / production, folder)
        for path in [folder, *folder.iterdir()]:
            path.chmod(0o755)
        assert hub.push(folder) == expected
        assert not [name for name in os.listdir(hub.repo) if name.startswith(".")
                    and name not in (".lock", ".gitattributes")]
        assert_hub_whole(hub, production)
        assert client.predict("", api_name="/retrain")["running"]  # and a new retraining can start
    finally:
        stop_app(app)


# 2. kill -9 in the middle of promotions and rollbacks

# A process that has imported the hub forks a worker per line it reads; the worker promotes and rolls back
# through the hub as fast as it can until the test kills it, and the next line forks the next one.
PROMOTER = r"""
import os, sys
from catdog_model.hub import LocalHub

hub = LocalHub(sys.argv[1], sys.argv[2])
first, second = sys.argv[3], sys.argv[4]
for _ in sys.stdin:
    worker = os.fork()
    if worker == 0:
        while True:
            hub.promote(first)
            hub.promote(second)
            hub.rollback()
            hub.rollback()
    print(worker, flush=True)
    os.waitpid(worker, 0)
    print("ended", flush=True)
"""


def written(hub: LocalHub) -> tuple[int, int]:
    """Changes whenever refs.json is written, in place or replaced."""
    status = (hub.repo / REFS_FILE).stat()
    return status.st_ino, status.st_mtime_ns


def test_kill_9_in_the_middle_of_promotions_leaves_valid_refs_and_the_app_serves_the_alias(tmp_path, cache_dir):
    hub = copy_models(tmp_path / "models")
    shipped, versions = hub.production(), hub.versions()
    second = versions[-1]  # servable, besides production and OTHER_VERSION (see shipped_models)
    assert second not in (shipped, OTHER_VERSION)
    promoter = subprocess.Popen([sys.executable, "-c", PROMOTER, str(hub.repo.parent), MODEL_NAME, OTHER_VERSION,
                                 second], cwd=PROJECT_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    chooser, seen = random.Random(), set()
    try:
        for _ in range(60):
            before = written(hub)
            promoter.stdin.write("\n")
            promoter.stdin.flush()
            worker = int(promoter.stdout.readline())
            # The worker is under way once it has written the alias; then a random moment.
            wait_for(lambda: written(hub) != before, 30, every=0.0005)
            threading.Event().wait(chooser.uniform(0, 0.02))
            os.kill(worker, signal.SIGKILL)
            assert promoter.stdout.readline().strip() == "ended"
            text = (hub.repo / REFS_FILE).read_text()
            try:
                refs = json.loads(text)
            except ValueError:
                pytest.fail(f"a promotion killed midway left {REFS_FILE} unreadable: {text!r}")
            assert refs["production"] in versions and set(refs["previous"]) <= set(versions), refs
            assert hub.refs() == refs
            seen.add(refs["production"])
    finally:
        promoter.kill()
        promoter.wait(timeout=30)
    assert len(seen) >= 2  # the kills landed at different points of the cycle
    # What a writer killed midway leaves is its temporary file; the next write under the lock sweeps it away.
    hub.promote(hub.production())
    assert not [path.name for path in hub.repo.iterdir() if path.name.endswith(".tmp")]

    app = Served(app_env(tmp_path, cache_dir))
    try:
        production = hub.production()
        assert get_json(app.url + "/health")["model_version"] == production
        client = patient_client(app.url)
        target = OTHER_VERSION if production != OTHER_VERSION else shipped
        assert client.predict(target, "", api_name="/promote") == f"Production is now {target}."
        assert hub.production() == target == get_json(app.url + "/health")["model_version"]
    finally:
        stop_app(app)


# 4. The prediction log's PostgreSQL stopped, and started again, under load

def outage_under_load(app: Served, database: Postgres, photo_list: list[Path]) -> int:
    """Three clients predict through /api/predict without pause while the database is stopped, then started
    again; checks what is seen meanwhile, and returns how many predictions were made."""
    answered, refused, counting = [0], [], threading.Lock()
    stop = threading.Event()

    def predict_forever(offset: int) -> None:
        with httpx.Client(timeout=60) as http:
            index = offset
            while not stop.is_set():
                photo = photo_list[index % len(photo_list)]
                index += 1
                try:
                    answer = http.post(app.url + "/api/predict",
                                       files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
                except httpx.HTTPError as error:
                    refused.append(repr(error))
                    continue
                if answer.status_code == 200:
                    with counting:
                        answered[0] += 1
                else:
                    refused.append((answer.status_code, answer.text))

    def status() -> dict:
        return get_json(app.url + "/api/status")

    clients = [threading.Thread(target=predict_forever, args=(offset,)) for offset in range(3)]
    try:
        for client in clients:
            client.start()
        wait_for(lambda: answered[0] >= 20, 60)
        database.stop()
        stopped = answered[0]
        # While it is down, /api/status says so in a sentence, and predictions go on being answered.
        outage = wait_for(lambda: status()["prediction_log"]["write_error"], 30)
        assert "cannot be reached" in outage
        assert_sentence(outage)
        wait_for(lambda: answered[0] >= stopped + 200, 120)  # longer than the writer waits between tries
        waiting = answered[0] - stopped - len(clients)  # a request in flight at the stop may have been written
        down = status()
        assert down["model_loaded"] and down["prediction_log"]["dropped_rows"] == 0
        # …and how many rows wait for it: at least every prediction answered since it stopped.
        assert down["prediction_log"]["pending_rows"] >= waiting, (down["prediction_log"], waiting)
        gradio = patient_client(app.url).predict(handle_file(str(photo_list[0])), api_name="/predict")
        assert gradio["label"] == "cat"
        database.start()
        wait_for(lambda: status()["prediction_log"]["write_error"] is None, 60)
        after = answered[0]
        wait_for(lambda: answered[0] >= after + 10, 60)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)
    assert refused == []
    return answered[0] + 1  # and the one through Gradio's API


@requires_photos
def test_postgres_stopped_under_load_costs_no_prediction_and_no_logged_row(tmp_path, cache_dir, small_photo_dir):
    import sqlalchemy as sa

    database, app = start_postgres(), None
    try:
        url = database.new_database()
        copy_models(tmp_path / "models")
        app = Served(app_env(tmp_path, cache_dir, CATDOG_DATABASE_URL=url))
        made = outage_under_load(app, database, photos(small_photo_dir / "cats", 5) +
                                 photos(small_photo_dir / "dogs", 5))
        # Every prediction made before, during and after the outage reaches the log: nothing lost, nothing twice.
        wait_logged(app.url, made)
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT COUNT(*) FROM predictions")).scalar() == made
        engine.dispose()
    finally:
        if app is not None:
            stop_app(app)
        database.close()


# 3. A full disk, and a read-only one, under uploads and under a retraining

@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A tmpfs of this size mounted on folder for the test (mount needs root); skipped, saying why, if it can't."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a disk that fills up, or turns read-only) needs root")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command here, so no small tmpfs to fill up")
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({(mounted.stderr or mounted.stdout).strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True, capture_output=True, timeout=30)


def fill(folder: Path, leave_bytes: int) -> Path:
    """Fill folder's filesystem, then give back about leave_bytes; the ballast file, to delete for room again."""
    ballast = folder / "ballast"
    descriptor = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                os.write(descriptor, bytes(2**16))
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
    finally:
        os.close(descriptor)
    os.truncate(ballast, max(0, ballast.stat().st_size - leave_bytes))
    return ballast


def upload(client: Client, label: str, files: list[Path]) -> tuple[list[dict], str | None]:
    """The rows of an upload (file, status, reason), or the sentence the whole call was refused with."""
    from gradio_client.exceptions import AppError

    try:
        table, *_ = client.predict(label, [handle_file(str(path)) for path in files], "",
                                  api_name="/upload_training_data")
    except AppError as error:
        return [], str(error)
    return [dict(zip(table["headers"], row)) for row in table["data"]], None


def assert_store_whole(uploads: Path, sent: dict[str, bytes], acknowledged: set[str]) -> set[str]:
    """Every acknowledged upload is stored; every file in the store is a whole image under its real name (the
    hash of what was sent), and no temporary file is left behind. The hashes stored."""
    from PIL import Image

    stored = set()
    for path in uploads.rglob("*"):
        if not path.is_file():
            continue
        assert not path.name.startswith(".") and not path.name.endswith(".tmp"), f"left behind: {path.name}"
        assert path.stem in sent, f"{path.name} is no upload's hash"
        if path.read_bytes() != sent[path.stem]:  # kept in another format: it must decode to the end
            try:
                with Image.open(path) as image:
                    image.load()
            except OSError as error:
                pytest.fail(f"{path.name} is stored half-written under its real name ({error})")
        stored.add(path.stem)
    assert acknowledged <= stored, f"acknowledged uploads lost: {acknowledged - stored}"
    return stored


def refusals(rows: list[dict], error: str | None) -> list[str]:
    """What the user was told about the files that were not stored: the call's sentence, or each row's reason."""
    return [error] if error else [row["reason"] for row in rows if row["status"] == "rejected"]


def hashes(files: list[Path]) -> dict[str, bytes]:
    return {hashlib.sha256(path.read_bytes()).hexdigest(): path.read_bytes() for path in files}


def uploads_refused(fault: str, sentences: list[str], says: str) -> None:
    """The sentence names the fault: the disk, not the user's files."""
    assert all(re.search(says, sentence, re.I) for sentence in sentences), (fault, sentences)


@contextlib.contextmanager
def app_on_a_tmpfs(tmp_path: Path, cache_dir: Path, size: str):
    """An app whose data folder is a tmpfs of size: (data folder, app, client)."""
    copy_models(tmp_path / "models")
    with tmpfs(tmp_path / "data", size) as data:
        app = Served(app_env(tmp_path, cache_dir))
        try:
            client = patient_client(app.url)
            yield data, app, client
        finally:
            stop_app(app)


def upload_ten_cats(client: Client, cats: list[Path]) -> set[str]:
    rows, error = upload(client, "cat", cats)
    assert error is None and [row["status"] for row in rows] == ["added"] * 10, (rows, error)
    return set(hashes(cats))


@requires_photos
def test_uploads_to_a_full_disk_are_refused_in_a_sentence_and_lose_nothing(tmp_path, cache_dir, small_photo_dir):
    cats, dogs = photos(small_photo_dir / "cats", 10), photos(small_photo_dir / "dogs", 20)
    sent = hashes(cats + dogs)
    with app_on_a_tmpfs(tmp_path, cache_dir, "4m") as (data, app, client):
        acknowledged = upload_ten_cats(client, cats)
        ballast = fill(data, leave_bytes=48 * 1024)  # room for about two photos

        rows, error = upload(client, "dog", dogs)
        told = refusals(rows, error)
        assert told, (rows, error)
        for sentence in told:
            assert_sentence(sentence)
        acknowledged |= {hashlib.sha256(path.read_bytes()).hexdigest() for path, row in zip(dogs, rows)
                         if row["status"] in ("added", "suspect")}
        assert_store_whole(data / "uploads", sent, acknowledged)
        # Predictions go on, on the full disk (their log rows wait until there is room).
        assert predict_rest(app.url, cats[0])["label"] == "cat"
        assert client.predict(handle_file(str(dogs[0])), api_name="/predict")["label"] == "dog"

        ballast.unlink()  # room again: the same upload goes through
        rows, error = upload(client, "dog", dogs)
        assert error is None and {row["status"] for row in rows} <= {"added", "duplicate", "suspect"}, rows
        stored = assert_store_whole(data / "uploads", sent, acknowledged)
        assert stored == set(sent)
        stats = client.predict(api_name="/dataset_stats")
        assert stats["uploads"]["cat"] == 10 and stats["uploads"]["dog"] + stats["suspect"]["dog"] == 20
        # The two predictions made while the disk was full reached the log once there was room.
        wait_logged(app.url, 2)
    uploads_refused("full", told, r"space|full")


@requires_photos
def test_uploads_to_a_read_only_data_folder_are_refused_in_a_sentence_and_lose_nothing(tmp_path, cache_dir,
                                                                                        small_photo_dir):
    cats, dogs = photos(small_photo_dir / "cats", 10), photos(small_photo_dir / "dogs", 10)
    sent = hashes(cats + dogs)
    with app_on_a_tmpfs(tmp_path, cache_dir, "16m") as (data, app, client):
        acknowledged = upload_ten_cats(client, cats)
        remount(data, "ro")  # as root, chmod would not stop a write: the filesystem itself turns read-only
        try:
            rows, error = upload(client, "dog", dogs)
            told = refusals(rows, error)
            assert told and not [row for row in rows if row["status"] in ("added", "suspect")], (rows, error)
            for sentence in told:
                assert_sentence(sentence)
            assert assert_store_whole(data / "uploads", sent, acknowledged) == acknowledged
            assert predict_rest(app.url, cats[0])["label"] == "cat"
            assert client.predict(handle_file(str(dogs[0])), api_name="/predict")["label"] == "dog"
            # The log cannot write its rows either: /api/status says so in a sentence while they wait.
            outage = wait_for(lambda: get_json(app.url + "/api/status")["prediction_log"]["write_error"], 30)
            assert_sentence(outage)
        finally:
            remount(data, "rw")
        rows, error = upload(client, "dog", dogs)
        assert error is None and {row["status"] for row in rows} <= {"added", "suspect"}, rows
        assert assert_store_whole(data / "uploads", sent, acknowledged) == set(sent)
        # The two predictions made while it was read-only reach the log once it is writable again.
        wait_logged(app.url, 2)
    uploads_refused("read-only", told, r"read-only|cannot be written|not writable")


def disk_bytes(folder: Path) -> int:
    """What the files under folder take on a tmpfs: whole 4 KiB pages."""
    return sum(-(-path.stat().st_size // 4096) * 4096 for path in folder.rglob("*") if path.is_file())


@requires_photos
def test_a_full_disk_fails_a_retraining_in_a_sentence_and_publishes_nothing(tmp_path, cache_dir, small_photo_dir):
    shipped = shipped_models()
    # Room for the shipped versions and 1 MiB more: a new version (about 5 MB) does not fit.
    with tmpfs(tmp_path / "models", f"{(disk_bytes(shipped) + 2**20) // 1024}k") as models:
        hub = copy_models(models)
        production, versions = hub.production(), hub.versions()
        free = shutil.disk_usage(models).free
        app = Served(app_env(tmp_path, cache_dir, CATDOG_BASE_DATA_DIR=str(small_photo_dir)))
        try:
            client = patient_client(app.url)
            assert client.predict("", api_name="/retrain")["running"]
            status = finished(client)
            assert status["stage"] == "failed", status
            assert_sentence(status["error"])
            assert re.search(r"no space left", status["error"], re.I), status["error"]
            assert predict_rest(app.url, photos(small_photo_dir / "dogs", 1)[0])["version"] == production
            assert hub.versions() == versions
            assert_hub_whole(hub, production)
            assert not list(hub.repo.glob(".staging-*"))
            assert shutil.disk_usage(models).free >= free - 8192  # what the failed write took is given back
        finally:
            stop_app(app)


@requires_photos
def test_a_server_stopped_right_after_its_predictions_keeps_a_row_for_each(tmp_path, cache_dir, small_photo_dir):
    """SIGTERM (docker stop, a redeploy) a moment after the last answer: the rows the log still held in memory
    are written before the server exits."""
    import sqlite3

    copy_models(tmp_path / "models")
    app = Served(app_env(tmp_path, cache_dir, CATDOG_PREPARE_EMBEDDINGS="0"))
    try:
        answered = [predict_rest(app.url, photo) for photo in photos(small_photo_dir / "cats", 5)]
        app.process.terminate()  # the log writes in batches, a fifth of a second apart: the last rows wait
        app.process.wait(timeout=60)
    finally:
        app.stop()
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "predictions.sqlite")) as log:
        assert log.execute("SELECT count(*) FROM predictions").fetchone()[0] == len(answered)


def test_a_stop_ends_although_a_client_stalls_in_the_middle_of_an_upload(tmp_path, cache_dir):
    """uvicorn waits for open requests when it is stopped; a client that sends half an upload and goes quiet
    (a dead link, or on purpose) would hold a `docker stop` or a redeploy until it is killed."""
    import socket
    import time

    copy_models(tmp_path / "models")
    grace = 5  # the server's; a stalled request is closed after it
    app = Served(app_env(tmp_path, cache_dir, CATDOG_PREPARE_EMBEDDINGS="0",
                         CATDOG_SHUTDOWN_GRACE_SECONDS=str(grace)))
    try:
        with socket.create_connection(("127.0.0.1", app.port), timeout=30) as stalled:
            # One whole request first, so the server is surely reading this connection, then half of another.
            stalled.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert stalled.recv(4096).startswith(b"HTTP/1.1 200")
            stalled.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                            b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
            stopping = time.monotonic()
            app.process.terminate()
            app.process.wait(timeout=grace + 50)  # without the grace period: never
            # Nor sooner: the open request was given its grace period (a lower bound, which a busy machine keeps).
            assert time.monotonic() - stopping >= grace - 0.5
    finally:
        app.stop()
