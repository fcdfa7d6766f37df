"""Attacks on the running app, each repeated from an adversarial review: files the client never uploaded,
refused requests, mutations without the token, and limits that must come from the environment."""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest
from gradio.utils import get_upload_folder
from gradio_client import handle_file

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.errors import public_message
from catdog_model.images import content_hash
from catdog_model.web import UPLOADED_FILES_ONLY, is_uploaded_file, loopback_only_message
from tests.conftest import (OTHER_VERSION, WEIGHTS_DIR, patient_client, random_jpeg, requires_weights,
                            serve_in_thread, shipped_models)
from bench.servers import free_port, wait_for


pytestmark = [requires_weights]
FILE_ENDPOINTS = {"predict": lambda file: [file], "predict_with_details": lambda file: [file],
                  "explain": lambda file: [file],
                  "predict_batch": lambda file: [[file]],
                  "upload_training_data": lambda file: ["cat", [file], "s3cret"]}


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are (httpx always adds a Host header) and return the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict[str, str]:
    """Paths an attacker might name: system files, a device, and inside the upload folder a symlink out, a
    FIFO and a `..` escape."""
    upload_folder = Path(get_upload_folder())
    upload_folder.mkdir(parents=True, exist_ok=True)
    trap = upload_folder / f"catdog-test-{os.getpid()}"
    trap.mkdir(exist_ok=True)
    (trap / "link.jpg").unlink(missing_ok=True)
    (trap / "link.jpg").symlink_to("/etc/passwd")
    (trap / "pipe.jpg").unlink(missing_ok=True)
    os.mkfifo(trap / "pipe.jpg")
    yield {"system file": "/etc/passwd", "environment": "/proc/self/environ", "endless device": "/dev/zero",
           "missing file": "/etc/no-such-file", "symlink out of the upload folder": str(trap / "link.jpg"),
           "fifo in the upload folder": str(trap / "pipe.jpg"), "dot-dot escape": f"{trap}/../../../etc/passwd",
           "relative path": "etc/passwd", "the upload folder itself": str(upload_folder)}
    for name in ("link.jpg", "pipe.jpg"):
        (trap / name).unlink(missing_ok=True)
    trap.rmdir()


def test_only_regular_files_inside_the_upload_folder_count_as_uploaded(planted, tmp_path):
    folder = get_upload_folder()
    for path in planted.values():
        assert not is_uploaded_file(path, folder), path
    inside = Path(folder) / "catdog-test-file.jpg"
    inside.write_bytes(b"x")
    try:
        assert is_uploaded_file(str(inside), folder)
    finally:
        inside.unlink()


@pytest.mark.parametrize("endpoint", sorted(FILE_ENDPOINTS))
def test_paths_never_uploaded_are_refused_over_http_with_one_sentence(server, planted, endpoint):
    url, service = server
    uploads_before = service.curation.uploads.counts()
    with httpx.Client(base_url=url, timeout=10) as http:
        for kind, path in planted.items():
            response = http.post(f"gradio_api/call/{endpoint}", json={"data": FILE_ENDPOINTS[endpoint](file_data(path))})
            assert response.status_code == 400, (kind, response.text)
            assert response.json() == {"error": UPLOADED_FILES_ONLY}, kind  # the same words, exists or not
            # The browser's route is guarded the same way.
            joined = http.post("gradio_api/queue/join", json={"data": FILE_ENDPOINTS[endpoint](file_data(path)),
                                                              "fn_index": 0, "session_hash": "attacker"})
            assert joined.status_code == 422 and joined.json()["error"] == UPLOADED_FILES_ONLY, (kind, joined.text)
        assert http.get("health").json()["model_loaded"] is True  # still serving
    assert service.curation.uploads.counts() == uploads_before


def test_paths_never_uploaded_are_refused_through_gradio_client_in_its_own_words(server, planted):
    from gradio_client.exceptions import ValidationError

    url, _ = server
    client = patient_client(url)
    for kind, path in planted.items():
        # Refused before Gradio reads the file: the same sentence whether the file exists or not, none of it,
        # and gradio_client shows it (a ValidationError), not a bare "400 Bad Request".
        with pytest.raises(ValidationError, match=re.escape(UPLOADED_FILES_ONLY)):
            client.predict({"path": path}, api_name="/predict")
    with pytest.raises(ValidationError, match=re.escape("pass handle_file(path) rather than the path itself")):
        client.predict("cat.jpg", api_name="/predict")  # the path itself, where handle_file was meant


def test_nothing_of_the_servers_disk_reaches_gradios_cache(server, planted):
    url, _ = server
    with httpx.Client(base_url=url, timeout=10) as http:
        for path in planted.values():
            http.post("gradio_api/call/predict", json={"data": [file_data(path)]})
    secrets = [Path("/etc/passwd").read_bytes()[:64], b"CATDOG_", b"PATH="]
    for cached in Path(get_upload_folder()).rglob("*"):
        if cached.is_file() and not cached.is_symlink() and cached.stat().st_size < 10_000_000:
            content = cached.read_bytes()
            assert not any(secret in content for secret in secrets), cached


def test_a_bad_file_in_the_ui_endpoint_gets_catdogs_sentence(server, tmp_path):
    url, _ = server
    notes = tmp_path / "notes.jpg"
    notes.write_text("minutes of the meeting, not a photo")
    with pytest.raises(Exception, match="not an image that can be read") as raised:
        patient_client(url).predict(handle_file(str(notes)), api_name="/predict_with_details")
    assert "preprocess" not in str(raised.value) and "/tmp" not in str(raised.value)


def test_promote_without_a_version_gets_a_sentence(server):
    url, _ = server
    for version in (None, "", "   "):
        with pytest.raises(Exception, match="Say which version to promote"):
            patient_client(url).predict(version, "s3cret", api_name="/promote")


MUTATIONS = {"upload_training_data": lambda photo, token: ["cat", [handle_file(str(photo))], token],
             "retrain": lambda photo, token: [token], "retrain_and_follow": lambda photo, token: [False, token],
             "correct": lambda photo, token: [handle_file(str(photo)), "dog", token],
             "promote": lambda photo, token: ["v1", token], "rollback": lambda photo, token: [token],
             "confirm_suspects": lambda photo, token: [token], "discard_suspects": lambda photo, token: [token],
             # Not a change, but it shows users' uploads: for admins only.
             "data_issues": lambda photo, token: [token, 5],
             "decide_photo": lambda photo, token: [content_hash(photo.read_bytes()), "exclude", token]}


@pytest.mark.parametrize("endpoint", sorted(MUTATIONS))
def test_mutations_without_the_right_token_change_nothing(server, small_photo_dir, endpoint, caplog, capfd):
    caplog.set_level(logging.INFO, logger="catdog_model.web")
    url, service = server
    photo = sorted((small_photo_dir / "cats").iterdir())[5]
    before = (service.curation.uploads.counts(), service.curation.uploads.suspect_counts(), service.hub.refs(),
              service.health()["model_version"])
    client = patient_client(url)
    for token in (None, "", "wrong", "s3cret "):
        with pytest.raises(Exception, match="needs the admin token"):
            client.predict(*MUTATIONS[endpoint](photo, token), api_name=f"/{endpoint}")
    after = (service.curation.uploads.counts(), service.curation.uploads.suspect_counts(), service.hub.refs(),
             service.health()["model_version"])
    assert after == before and not (service.settings.data_dir / "data_decisions.json").exists()
    assert service.retrainer.last().stage == "idle" and not service.retrainer.last().running
    # Each refusal is one line in the server's log, never a traceback.
    assert "Traceback" not in capfd.readouterr().err
    assert sum("refused" in record.getMessage() for record in caplog.records) >= 4


def test_without_a_token_mutations_are_allowed_only_on_loopback(start_service, settings):
    from catdog_model.service import NotAllowed

    start_service(dataclasses.replace(settings, admin_token=None, server_name="127.0.0.1")).check_token(None)
    exposed = start_service(dataclasses.replace(settings, admin_token=None, server_name="0.0.0.0"))
    with pytest.raises(NotAllowed, match="set CATDOG_ADMIN_TOKEN"):
        exposed.check_token(None)
    with pytest.raises(NotAllowed, match="set CATDOG_ADMIN_TOKEN"):
        exposed.check_token("anything")


def test_messages_never_show_absolute_paths():
    assert public_message("No file at /srv/catdog/data/uploads/cat/x.jpg.") == "No file at x.jpg."
    assert public_message("weights not in CATDOG_WEIGHTS_DIR (/work/shared/weights)") == \
        "weights not in CATDOG_WEIGHTS_DIR (weights)"
    assert public_message("use https://huggingface.co/a/b and 3/4") == "use https://huggingface.co/a/b and 3/4"
    assert public_message("database sqlite:////srv/catdog/data/predictions.sqlite is locked") == \
        "database sqlite:///predictions.sqlite is locked"


def test_a_batch_holds_one_files_bytes_at_a_time(start_service, settings, tmp_path):
    """From the second adversarial review: 32 files of 20 MB of noise in one batch were all read before any
    was decoded (+572 MB). Each is now read, decoded (or refused) and let go before the next."""
    import tracemalloc

    shutil.copytree(PROJECT_ROOT / "models", settings.models_dir)
    service = start_service(settings)
    noise = []
    for index in range(8):
        path = tmp_path / f"noise{index}.jpg"
        path.write_bytes(os.urandom(8 * 2**20))
        noise.append(str(path))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(random_jpeg(3, side=300))
    tracemalloc.start()
    try:
        rows = service.predict_batch(noise + [str(photo)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all("not an image" in row["error"] for row in rows[:8]) and rows[8]["label"] in ("cat", "dog")
    assert peak < 3 * 8 * 2**20


@pytest.mark.heavy
def test_a_corrupt_prediction_log_is_reported_without_the_servers_paths(start_service, settings):
    shutil.copytree(shipped_models(), settings.models_dir, ignore=shutil.ignore_patterns(".lock"))
    settings.data_dir.mkdir(parents=True)
    (settings.data_dir / "predictions.sqlite").write_bytes(b"this is not a database " * 1000)
    service = start_service(settings)
    service.predict(random_jpeg(1, side=64))
    assert wait_for(lambda: service.log.last_error is not None, 60)  # the writer tried, and failed
    shown = json.dumps([service.dashboard.status(), service.dashboard.metrics("all"),
                        service.dashboard.metrics_view("all")["summary"]], default=str)
    assert "predictions.sqlite" in shown  # the log's trouble is told...
    assert str(settings.data_dir) not in shown and "sqlite:////" not in shown  # ...without where it lives
    service.log.close(timeout=0)  # its row can never be written: closing need not wait for it


def test_a_refusal_never_echoes_a_page_of_input_back(server):
    url, _ = server
    with pytest.raises(Exception) as raised:
        patient_client(url).predict("v" * 5000, "s3cret", api_name="/promote")
    assert "No model version 'vvvv" in str(raised.value) and "v" * 100 not in str(raised.value)


LIMITS_FROM_ENVIRONMENT = {"CATDOG_MAX_PIXELS": ("max_pixels", "1234567"), "CATDOG_MAX_FILES": ("max_files", "7"),
                           "CATDOG_MIN_SIDE": ("min_side", "33"), "CATDOG_MAX_UPLOAD_MB": ("max_upload_mb", "3"),
                           "CATDOG_DECODE_MEMORY_MB": ("decode_memory_mb", "77"),
                           "CATDOG_LOW_CONFIDENCE": ("low_confidence", "0.66"),
                           "CATDOG_SUSPECT_CONFIDENCE": ("suspect_confidence", "0.77"),
                           "CATDOG_GATE_MIN_IMAGES": ("gate_min_images", "55"),
                           "CATDOG_GATE_MIN_ACCURACY": ("gate_min_accuracy", "0.88"),
                           "CATDOG_PROMOTION_TOLERANCE": ("promotion_tolerance", "0.02"),
                           "CATDOG_AUTO_PROMOTE": ("auto_promote", "0"),
                           "CATDOG_FILE_CACHE_MINUTES": ("file_cache_minutes", "9"),
                           "CATDOG_MAX_REQUEST_MB": ("max_request_mb", "11"),
                           "CATDOG_MAX_REQUEST_MEGAPIXELS": ("max_request_megapixels", "22")}


def test_every_limit_setting_reaches_the_code_that_enforces_it(start_service, monkeypatch, settings):
    for name, (_, value) in LIMITS_FROM_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    from_env = Settings.from_env()
    for name, (field, value) in LIMITS_FROM_ENVIRONMENT.items():
        expected = False if field == "auto_promote" else type(getattr(from_env, field))(value)
        assert getattr(from_env, field) == expected, name
    service = start_service(dataclasses.replace(from_env, weights_dir=settings.weights_dir,
                                                models_dir=settings.models_dir, data_dir=settings.data_dir,
                                                cache_dir=settings.cache_dir))
    assert (service.limits.max_pixels, service.limits.min_side, service.limits.decode_bytes) == (
        1234567, 33, 77 * 2**20)
    assert service.curation.uploads.limits is service.limits
    assert (service.curation.uploads.request_limits.stored_bytes, service.curation.uploads.request_limits.pixels) == (
        11 * 2**20, 22 * 10**6)
    with pytest.raises(ValueError, match="8 files in one request; the limit is 7"):
        service.curation.upload("cat", ["a.jpg"] * 8)


def test_the_upload_size_limit_reaches_gradio(start_service, settings):
    from catdog_model.app import build_app

    url, stop = serve_in_thread(build_app(start_service(dataclasses.replace(settings, max_upload_mb=1))))
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            small = http.post("/gradio_api/upload", files={"files": ("small.jpg", b"x" * 500_000)})
            large = http.post("/gradio_api/upload", files={"files": ("large.jpg", b"x" * 1_500_000)})
        assert small.status_code == 200 and large.status_code == 413
    finally:
        stop()


@pytest.mark.heavy
def test_uploads_and_batch_results_leave_the_disk_once_they_are_old(start_service, settings, small_photo_dir, tmp_path,
                                                                     monkeypatch):
    from catdog_model.app import build_app

    shutil.copytree(shipped_models(), settings.models_dir, ignore=shutil.ignore_patterns(".lock"))
    gradio_files = tmp_path / "gradio-files"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(gradio_files))
    service = start_service(dataclasses.replace(settings, file_cache_minutes=0.05))  # 3 seconds
    url, stop = serve_in_thread(build_app(service))
    photos = sorted((small_photo_dir / "dogs").iterdir())[:4]
    try:
        client = patient_client(url)
        for photo in photos:
            assert client.predict(handle_file(str(photo)), api_name="/predict")["label"] == "dog"
            client.predict([handle_file(str(photo))], api_name="/predict_batch")
        # Nothing but the uploads and the results Gradio serves: no empty temporary files beside them.
        assert all(path.stat().st_size > 0 for path in gradio_files.rglob("*") if path.is_file())
        # A batch's CSV goes when a later batch finds it older than the cache time.
        long_ago = time.time() - 3600
        for result in (settings.data_dir / "batch-results").glob("*.csv"):
            os.utime(result, (long_ago, long_ago))
        client.predict([handle_file(str(photos[0]))], api_name="/predict_batch")
        assert len(list((settings.data_dir / "batch-results").glob("*.csv"))) == 1
        # Gradio removes the files it served once they are older than the cache time, 3 s here.
        wait_for(lambda: not [path for path in gradio_files.rglob("*") if path.is_file()], seconds=120)
    finally:
        stop()


@pytest.mark.parametrize("name, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("::", False), ("", False),
                                            ("127.example.com", False), ("localhost.example.com", False)])
def test_only_loopback_addresses_count_as_loopback(settings, name, loopback):
    assert dataclasses.replace(settings, server_name=name).on_loopback is loopback


@pytest.mark.heavy
def test_without_a_token_only_this_machines_own_requests_are_answered(start_service, tmp_path, cache_dir,
                                                                      small_photo_dir):
    """A web page whose name an attacker rebinds to 127.0.0.1 (DNS rebinding) reaches a loopback server from the
    victim's browser, but its requests carry the attacker's name in Host; any other page — another site's, or
    another local web app's on another port — can POST a form to 127.0.0.1, but the browser names it in
    Origin. Only the app's own origin, or a program (no Origin), may change anything."""
    from catdog_model.app import build_app

    shutil.copytree(shipped_models(), tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    settings = dataclasses.replace(Settings.from_env(), weights_dir=WEIGHTS_DIR, models_dir=tmp_path / "models",
                                   data_dir=tmp_path / "data", cache_dir=cache_dir, admin_token=None,
                                   server_name="127.0.0.1", server_port=free_port())
    service = start_service(settings)
    url, stop = serve_in_thread(build_app(service), settings.server_port)
    port = settings.server_port
    refusal = loopback_only_message(port)
    photo = sorted((small_photo_dir / "dogs").iterdir())[0].read_bytes()
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            production = http.get("/health").json()["model_version"]
            for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", "10.0.0.7",
                         "0.0.0.0", "localhost.", f"[::1]attacker:{port}", "localhost:attacker"):
                refused = http.post("/gradio_api/call/promote", json={"data": [OTHER_VERSION, ""]},
                                    headers={"Host": host})
                assert refused.status_code == 403 and refused.json()["error"] == refusal, host
                assert http.get("/health", headers={"Host": host}).status_code == 403
            for host in (f"127.0.0.1:{port}", f"LOCALHOST:{port}", f"[::1]:{port}", "localhost"):
                assert http.get("/health", headers={"Host": host}).json()["model_version"] == production
            for origin in ("https://attacker.example", "null", f"http://localhost:{port + 1}",
                           f"http://127.0.0.1:{port + 1}",
                           f"https://127.0.0.1:{port}", "http://localhost", f"http://127.0.0.1:{port}@attacker.example",
                           f"http://127.0.0.2:{port}", f"http://[::1]:{port}", ""):
                refused = http.post("/api/predict", files={"file": ("dog.jpg", photo)}, headers={"Origin": origin})
                assert refused.status_code == 403 and refused.json()["error"] == refusal, origin
                assert http.get("/health", headers={"Origin": origin}).status_code == 200  # reading stays open
            for own in (url, f"http://localhost:{port}"):
                own_page = http.post("/api/predict", files={"file": ("dog.jpg", photo)}, headers={"Origin": own})
                assert own_page.json()["label"] == "dog"
        for request in (b"GET /health HTTP/1.0\r\n\r\n", b"GET /health HTTP/1.1\r\nHost: \r\n\r\n"):
            assert b" 403 " in raw_request(port, request).split(b"\r\n")[0], request  # no Host, or an empty one
        service.log.flush()
        assert service.log.statistics("all")["count"] == 2  # the refused posts were never predicted nor logged
        assert patient_client(url).predict(OTHER_VERSION, "", api_name="/promote") == \
            f"Production is now {OTHER_VERSION}."  # this machine's own clients keep every action
    finally:
        stop()


def test_with_a_token_any_host_name_is_answered(server):
    url, _ = server  # behind a proxy or under its own name: the token guards the mutations
    assert httpx.get(url + "health", headers={"Host": "catdog.example.org"}).json()["model_loaded"] is True


def test_an_oversized_call_is_refused_unread(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as http:
        response = http.post("gradio_api/call/predict", json={"data": ["x" * 3_000_000]})
        assert response.status_code == 413 and "at most 1024 KB" in response.json()["error"]
        assert http.get("health").json()["model_loaded"] is True


def large_png(side: int = 2000) -> bytes:
    """An RGBA PNG that takes tens of MB to decode (a large decode, not a small photo's)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (120, 80, 40, 255)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.heavy
def test_images_waiting_for_decode_memory_hold_no_thread_and_a_photo_never_waits_behind_them(server, monkeypatch,
                                                                                             small_photo_dir):
    """While a huge decode holds all the shared memory, fifty large images wait for it — more than the 40
    threads every synchronous route shares — and a normal photo is answered meanwhile. Once the memory is
    free they are all answered; past the wait, a large image is told to come back (503 and Retry-After)."""
    from concurrent.futures import ThreadPoolExecutor

    url, service = server
    budget = service.limits.budget
    tries = []
    reserve = budget.reserve

    def counted(amount):
        tries.append(amount)
        return reserve(amount)

    monkeypatch.setattr(budget, "reserve", counted)
    monkeypatch.setattr(budget, "wait_seconds", 600)
    photo = sorted((small_photo_dir / "cats").iterdir())[0].read_bytes()
    large = large_png()

    def post(data: bytes) -> httpx.Response:
        return httpx.post(url + "api/predict", files={"file": ("image.png", data)}, timeout=600)

    with ThreadPoolExecutor(50) as pool:
        with budget.reserve(budget.capacity):  # a huge decode in progress
            waiting = [pool.submit(post, large) for _ in range(50)]
            wait_for(lambda: len(tries) >= 50, seconds=120)  # all fifty have tried and are waiting
            answered = post(photo)
            assert answered.status_code == 200 and answered.json()["label"] == "cat"
            assert not any(future.done() for future in waiting)
        assert all(future.result().status_code == 200 for future in waiting)
    monkeypatch.setattr(budget, "wait_seconds", 0.2)
    with budget.reserve(budget.capacity):
        refused = post(large)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        assert "busy decoding other large images" in refused.json()["error"]
        path = patient_client(url)
        with pytest.raises(Exception, match="busy decoding other large images"):
            path.predict(handle_file(_written(large)), api_name="/predict")


def _written(data: bytes) -> str:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".png", delete=False) as file:
        file.write(data)
    return file.name


MALFORMED_CALLS = {
    "a file given by URL only": ("predict", [{"url": "http://127.0.0.1:1/x.jpg",
                                              "meta": {"_type": "gradio.FileData"}}]),
    "a plain path for a file": ("predict", ["cat.jpg"]),
    "a number for a file": ("predict", [5]),
    "no inputs": ("predict", []),
    "too many inputs": ("predict", [None, None]),
    "inputs not in a list": ("predict", {"image": None}),
    "a plain path for the Predict tab's photo": ("predict_with_details", ["cat.jpg"]),
    "numbers for a batch's files": ("predict_batch", [[1, 2]]),
    "too few inputs for an upload": ("upload_training_data", ["cat"]),
    "a class that is not offered": ("upload_training_data", ["horse", None, ""]),
    "a window in a list": ("metrics", [["day"]]),
    "no window": ("metrics", []),
    "a window in a list on the Metrics tab": ("refresh_metrics", [["day"]]),
    "a number for a version": ("promote", [5, "s3cret"]),
}


def test_each_malformed_call_gets_a_sentence_and_one_log_line(server, caplog, capfd):
    url, _ = server
    capfd.readouterr()
    answers = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for kind, (endpoint, data) in MALFORMED_CALLS.items():
            caplog.clear()
            with caplog.at_level(logging.INFO):
                response = http.post(f"gradio_api/call/{endpoint}", json={"data": data})
                if response.status_code == 200:  # refused by the event itself: the sentence comes in the stream
                    stream = http.get(f"gradio_api/call/{endpoint}/{response.json()['event_id']}").text
                    error = json.loads(stream.split("data:", 1)[1])["error"]
                else:
                    assert response.status_code == 400, kind
                    error = response.json()["error"]
            assert isinstance(error, str) and error.endswith(".") and len(error) < 300, (kind, error)
            answers[kind] = error
            lines = [record for record in caplog.records
                     if record.name.startswith(("catdog", "gradio", "uvicorn.error"))]
            assert len(lines) == 1 and not lines[0].exc_info, (kind, [record.getMessage() for record in lines])
        for kind, (route, body) in {
                "an event number as text": ("gradio_api/queue/join",
                                            {"data": [], "fn_index": "1", "session_hash": "x"}),
                "an event that does not exist": ("gradio_api/queue/join", {"data": [], "fn_index": 999}),
                "another event's number on a named route": ("gradio_api/run/metrics", {"data": ["day"], "fn_index": 1}),
                "inputs nested 100,000 deep": ("gradio_api/call/metrics", "[" * 100_000 + "]" * 100_000),
                "a call that is not an object": ("gradio_api/call/metrics", [["day"]]),
                "a 5,000-character input name by keyword": ("gradio_api/call/v2/metrics", {"w" * 5000: "day"}),
                "inputs by keyword in a list": ("gradio_api/call/v2/metrics", ["day"]),
                "a plain path for a file by keyword": ("gradio_api/call/v2/predict", {"image": "cat.jpg"}),
                "a number for a version by keyword": ("gradio_api/call/v2/promote", {"version": 5, "token": "s3cret"}),
                "a missing input by keyword": ("gradio_api/call/v2/promote", {"token": "wrong"}),
                "a session in a list": ("gradio_api/queue/join",
                                        {"data": [None], "fn_index": 1, "session_hash": ["A" * 5000]}),
                "a trigger as a page of text": ("gradio_api/queue/join", {"data": [None], "fn_index": 1,
                                                                         "session_hash": "s", "trigger_id": "A" * 5000}),
                "an event number with a fraction": ("gradio_api/queue/join",
                                                    {"data": [None], "fn_index": 1.5, "session_hash": "s"}),
                "a call without data": ("gradio_api/call/metrics", {"window": "day"}),
        }.items():
            caplog.clear()
            with caplog.at_level(logging.INFO):
                content = '{"data": [' + body + ']}' if isinstance(body, str) else json.dumps(body)
                response = http.post(route, content=content, headers={"content-type": "application/json"})
            error = response.json()["error"]
            refused = 422 if route.endswith("queue/join") else 400  # 422: gradio_client shows its sentence
            assert response.status_code == refused and error.endswith(".") and len(error) < 300, (kind, response.text)
            assert len([record for record in caplog.records if record.name.startswith(("catdog", "gradio"))]) == 1
        for kind, call in {"a REST call with the wrong form field":
                           lambda: http.post("api/predict", files={"photo": ("x.jpg", b"x")}),
                           "a REST call without a body": lambda: http.post("api/predict"),
                           "a REST GET": lambda: http.get("api/predict")}.items():
            caplog.clear()
            with caplog.at_level(logging.INFO):
                response = call()
            assert response.status_code in (400, 405) and "multipart form field named `file`" in response.json()[
                "error"], kind
            assert len([record for record in caplog.records if record.name.startswith(("catdog", "gradio"))]) == 1
    assert "handle_file" in answers["a plain path for a file"]
    assert "takes 1 input" in answers["no inputs"]
    assert "hour, day, all" in answers["a window in a list"]
    assert "Traceback" not in capfd.readouterr().err


def test_events_without_an_api_name_that_show_users_photos_still_need_the_admin_token(server, monkeypatch):
    """Gradio runs any event by its number, named or not: the Retrain tab's own events that list users' photos
    check the token themselves."""
    import gradio as gr

    from catdog_model.app import build_demo

    _, service = server
    monkeypatch.setattr(service, "settings", dataclasses.replace(service.settings, review_queue=True))
    demo = build_demo(service)
    guarded = {"find_data_issues": [""], "listed_data_issues": [["0" * 64], ["#1 label error"], ""],
               "photos_to_label": [""]}
    found = {event.fn.__name__: event.fn for event in demo.fns.values()
             if event.fn is not None and event.fn.__name__ in guarded}
    assert set(found) == set(guarded)
    for name, inputs in guarded.items():
        with pytest.raises(gr.Error, match="needs the admin token"):
            result = found[name](*inputs)
            if inspect.isgenerator(result):
                next(result)
