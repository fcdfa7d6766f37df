"""The app on a real loopback server, driven through gradio_client and plain HTTP."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.request

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from catdog_model.config import Settings
from catdog_model.hub import LocalHub, next_version
from catdog_model.service import EXPLAIN_SIDE
from bench.servers import wait_for
from tests.conftest import PRODUCTION, RETRAINING_SECONDS, patient_client, requires_weights, shipped_models

pytestmark = [requires_weights]


@pytest.fixture(scope="module")
def shipped() -> LocalHub:
    """The hub the server's models were copied from."""
    return LocalHub(shipped_models(), Settings.from_env().model_name)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_health_status_and_every_endpoint_listed(server, shipped):
    url, service = server
    assert get_json(url + "health") == {"status": "ok", "model_loaded": True, "model_version": shipped.production(),
                                     "precision": "fp32"}
    assert get_json(url + "api/status")["versions"] == shipped.versions()
    endpoints = set(get_json(url + "gradio_api/info")["named_endpoints"])
    for name in ("predict", "explain", "predict_batch", "upload_training_data", "retrain", "retrain_status",
                 "promote", "rollback", "metrics", "dataset_stats", "versions", "correct", "show_retraining"):
        assert f"/{name}" in endpoints


def test_every_endpoint_says_what_it_does_and_names_its_inputs_and_outputs(server, shipped):
    url, _ = server
    endpoints = get_json(url + "gradio_api/info")["named_endpoints"]
    unnamed = [(name, item["label"]) for name, endpoint in endpoints.items()
               for item in endpoint["parameters"] + endpoint["returns"]
               if re.fullmatch(r"(value|parameter)_\d+", str(item["label"]))]
    assert unnamed == []
    assert [name for name, endpoint in endpoints.items() if not endpoint["description"]] == []
    # The examples a reader copies from the API page are photos, not Gradio's sample PDF or picture of a bus.
    examples = json.dumps({name: [item.get("example_input") for item in endpoint["parameters"]]
                           for name, endpoint in endpoints.items()})
    assert "cat.jpg" in json.dumps(endpoints["/predict"]["parameters"][0]["example_input"])
    assert "dog.jpg" in json.dumps(endpoints["/predict_batch"]["parameters"][0]["example_input"])
    assert ".pdf" not in examples and "bus.png" not in examples
    tokens = [parameter for endpoint in endpoints.values() for parameter in endpoint["parameters"]
              if parameter["parameter_name"] == "token"]
    assert len(tokens) >= 8 and all(token["parameter_has_default"] and token["parameter_default"] == ""
                                    for token in tokens)
    # Without a token, this server (which has one) answers with its sentence, not a missing-argument TypeError.
    with pytest.raises(AppError, match="needs the admin token"):
        patient_client(url).predict(shipped.production(), api_name="/promote")


def test_a_program_calls_a_tokenless_loopback_server_without_naming_a_token(settings, tmp_path):
    import shutil

    from catdog_model.app import build_app
    from catdog_model.service import Service
    from tests.conftest import serve_in_thread

    shutil.copytree(shipped_models(), settings.models_dir, ignore=shutil.ignore_patterns(".lock"))
    service = Service(dataclasses.replace(settings, admin_token=None, prepare_embeddings=False)).start()
    url, stop = serve_in_thread(build_app(service))
    try:
        production = service.hub.production()
        promoted = patient_client(url).predict(production, api_name="/promote")
        assert promoted == f"Production is now {production}."
    finally:
        stop()
        service.close()


def test_a_program_calls_every_endpoint_by_its_documented_parameter_names_without_a_token(settings, tmp_path,
                                                                                          small_photo_dir):
    import shutil

    from catdog_model.app import build_app
    from catdog_model.service import Service
    from tests.conftest import serve_in_thread

    shutil.copytree(shipped_models(), settings.models_dir, ignore=shutil.ignore_patterns(".lock"))
    for folder in ("cats", "dogs"):  # a retraining refuses at once: too few photos, before any Keras
        (tmp_path / "no-base-data" / folder).mkdir(parents=True)
    service = Service(dataclasses.replace(settings, admin_token=None, prepare_embeddings=False,
                                          base_data_dir=tmp_path / "no-base-data")).start()
    app = build_app(service)
    # Each of these calls is a new Gradio session: entered without building every component's config.
    from catdog_model.gradio_sessions import SharedConfigSessions

    (mounted,) = [route.app for route in app.routes if hasattr(getattr(route, "app", None), "state_holder")]
    assert isinstance(mounted.state_holder, SharedConfigSessions)
    url, stop = serve_in_thread(app)
    client = patient_client(url)
    try:
        documented = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        photo, production = handle_file(str(sorted((small_photo_dir / "dogs").iterdir())[3])), PRODUCTION
        calls = {"/predict": {"image": photo}, "/predict_with_details": {"image": photo},
                 "/explain": {"image": photo}, "/predict_batch": {"files": [photo]},
                 "/correct": {"image": photo, "label": "dog"},
                 "/upload_training_data": {"label": "dog", "files": [photo]},
                 "/confirm_suspects": {}, "/discard_suspects": {}, "/promote": {"version": production},
                 "/rollback": {}, "/refresh_metrics": {"window": "hour"}, "/metrics": {"window": "hour"},
                 "/versions": {}, "/dataset_stats": {}, "/photos_to_label": {},
                 "/label_photo": {"sha256": "0" * 64, "label": "cat"}, "/retrain": {"fine_tune": False},
                 "/retrain_status": {}, "/show_retraining": {}, "/retrain_and_follow": {"fine_tune": False},
                 "/data_issues": {"top": 5}, "/decide_photo": {"sha256": "0" * 64, "action": "exclude"}}
        assert set(calls) == set(documented)  # a new endpoint needs its call here
        answers = {}
        for name, parameters in calls.items():
            assert set(parameters) <= {item["parameter_name"] for item in documented[name]["parameters"]}, name
            if name == "/retrain_and_follow":  # after /retrain's retraining has ended
                wait_for(lambda: not client.predict(api_name="/retrain_status")["running"], RETRAINING_SECONDS)
            try:
                answers[name] = client.predict(**parameters, api_name=name)
            except AppError as refusal:
                answers[name] = f"refused: {refusal}"
        assert answers["/predict"]["label"] == "dog" and answers["/predict_with_details"][0]["label"] == "dog"
        assert answers["/promote"] == f"Production is now {production}."
        assert answers["/label_photo"].startswith("refused: ")  # nothing waits under that sha256
        assert "needs at least 10 photos of each class" in answers["/data_issues"]  # one uploaded dog
        assert "No labelled photo has the sha256" in answers["/decide_photo"]
        assert answers["/retrain"]["running"] or answers["/retrain"]["stage"] != "idle"
        assert "at least" in answers["/retrain_and_follow"][1]  # the verdict: too few photos, in a sentence
        assert [name for name, answer in answers.items() if str(answer).startswith("refused")] == [
            "/label_photo", "/data_issues", "/decide_photo"]
    finally:
        client.close()
        stop()
        service.close()


def test_predict_real_photos_through_gradio_client(server, small_photo_dir):
    url, service = server
    client = patient_client(url)
    for folder, label in (("cats", "cat"), ("dogs", "dog")):
        photo = sorted((small_photo_dir / folder).iterdir())[0]
        result = client.predict(handle_file(str(photo)), api_name="/predict")
        assert result["label"] == label
        assert {item["label"] for item in result["confidences"]} == {"cat", "dog"}
    service.log.flush()
    assert service.log.statistics()["sources"]["api"] >= 2


def test_explain_returns_the_photo_in_its_own_shape_with_its_heat_map_and_the_label(server, small_photo_dir):
    from PIL import Image

    url, _ = server
    photo = sorted((small_photo_dir / "dogs").iterdir())[2]
    overlay, label, details = patient_client(url).predict(handle_file(str(photo)), api_name="/explain")
    assert label["label"] == "dog" and "red pushed towards dog" in details
    with Image.open(overlay) as image, Image.open(photo) as original:
        assert image.mode == "RGB" and max(image.size) <= EXPLAIN_SIDE
        width, height = original.size
        assert abs(image.size[0] / image.size[1] - width / height) < 0.01  # the photo's shape, not a square


def test_batch_gives_a_row_per_file_rejects_non_images_and_says_when_there_are_no_files(server, small_photo_dir, tmp_path):
    url, _ = server
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    photo = sorted((small_photo_dir / "dogs").iterdir())[0]
    table, csv_path = patient_client(url).predict([handle_file(str(photo)), handle_file(str(text))],
                                                  api_name="/predict_batch")
    rows = table["data"]
    assert rows[0][:2] == [photo.name, "dog"]
    assert rows[1][0] == "notes.jpg" and rows[1][1] == "" and "not an image" in rows[1][5]
    assert open(csv_path).read().startswith("file,label,p_dog,confidence,flags,error")
    with pytest.raises(AppError, match="No photos were given: choose one or more photos"):
        patient_client(url).predict([], api_name="/predict_batch")  # not an empty table and CSV


def test_a_batch_naming_one_uploaded_file_many_times_classifies_it_once(server, small_photo_dir):
    """A path is cheap to repeat in a call's JSON; the photo behind it is decoded and logged once."""
    import httpx

    url, service = server
    photo = sorted((small_photo_dir / "cats").iterdir())[0]
    service.log.flush()
    before = service.log.statistics("all")["count"]
    with httpx.Client(base_url=url, timeout=60) as http:
        (path,) = http.post("gradio_api/upload", files={"files": (photo.name, photo.read_bytes())}).json()
        file = {"path": path, "orig_name": photo.name, "meta": {"_type": "gradio.FileData"}}
        event = http.post("gradio_api/call/predict_batch", json={"data": [[file] * 100]}).json()["event_id"]
        stream = http.get(f"gradio_api/call/predict_batch/{event}").text
    table = json.loads(stream.split("event: complete\ndata:", 1)[1])[0]
    assert [row[:2] for row in table["data"]] == [[photo.name, "cat"]] * 100
    service.log.flush()
    assert service.log.statistics("all")["count"] == before + 1


def test_mutations_need_the_admin_token(server, shipped):
    url, service = server
    client = patient_client(url)
    with pytest.raises(Exception, match="admin token"):
        client.predict("v1", "wrong", api_name="/promote")
    with pytest.raises(Exception, match="admin token"):
        client.predict("", api_name="/rollback")
    assert service.hub.production() == shipped.production()


@pytest.mark.heavy
def test_upload_retrain_compare_promote_and_roll_back_through_the_api(server, shipped, small_photo_dir):
    url, service = server
    client = patient_client(url)
    for folder, label in (("cats", "cat"), ("dogs", "dog")):
        photos = [handle_file(str(path)) for path in sorted((small_photo_dir / folder).iterdir())]
        results, stats, _ = client.predict(label, photos + photos[:1], "s3cret", api_name="/upload_training_data")
        statuses = [row[1] for row in results["data"]]
        assert statuses.count("added") == 30 and statuses.count("duplicate") == 1
    assert stats["uploads"] == {"cat": 30, "dog": 30}

    started = client.predict("s3cret", api_name="/retrain")
    assert started["log"][0] == "Retraining started."
    with pytest.raises(Exception, match="already running"):
        client.predict("s3cret", api_name="/retrain")
    deadline = time.time() + RETRAINING_SECONDS
    while (status := client.predict(api_name="/retrain_status"))["running"] and time.time() < deadline:
        time.sleep(1)
    assert status["stage"] == "done", status
    result = status["result"]
    new = next_version(shipped.versions())
    assert result["version"] == new
    # No trusted held-out set here (no base data): the candidate is published but never promoted by itself.
    assert result["gate_passed"] is False and result["promoted"] is False
    assert "trusted held-out set has 0 images" in result["reason"]
    assert get_json(url + "health")["model_version"] == shipped.production()

    assert client.predict(new, "s3cret", api_name="/promote") == f"Production is now {new}."
    assert get_json(url + "health")["model_version"] == new
    assert shipped.production() in client.predict("s3cret", api_name="/rollback")
    assert get_json(url + "health")["model_version"] == shipped.production()
    versions = client.predict(api_name="/versions")
    assert [row["version"] for row in versions] == shipped.versions() + [new]


def test_a_correction_through_the_api_needs_the_token_and_waits_among_the_uploads_to_review(server, small_photo_dir,
                                                                                          tmp_path):
    from PIL import Image

    url, service = server
    client = patient_client(url)
    mirrored = tmp_path / "mirrored-cat.png"  # a photo no other test uploads
    with Image.open(sorted((small_photo_dir / "cats").iterdir())[2]) as cat:
        cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    photo = handle_file(str(mirrored))
    with pytest.raises(Exception, match="admin token"):
        client.predict(photo, "dog", "wrong", api_name="/correct")
    assert service.curation.uploads.suspect_counts() == {"cat": 0, "dog": 0}
    answer = client.predict(photo, "dog", "s3cret", api_name="/correct")  # production is sure it is a cat
    assert answer.startswith("Kept for review as a dog: production") and "says cat" in answer
    assert service.curation.uploads.suspect_counts() == {"cat": 0, "dog": 1}
    assert "1 suspect image discarded." == client.predict("s3cret", api_name="/discard_suspects")[0]


def test_predict_over_plain_http_upload_call_and_event_stream(server, small_photo_dir):
    import httpx

    url, _ = server
    photo = sorted((small_photo_dir / "cats").iterdir())[1]
    with httpx.Client(base_url=url, timeout=60) as http:
        uploaded = http.post("gradio_api/upload", files={"files": (photo.name, photo.read_bytes(), "image/jpeg")})
        path = uploaded.json()[0]
        call = http.post("gradio_api/call/predict",
                         json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]})
        stream = http.get(f"gradio_api/call/predict/{call.json()['event_id']}").text
    event, data = [line for line in stream.splitlines() if line][-2:]
    assert event == "event: complete"
    assert json.loads(data.removeprefix("data: "))[0]["label"] == "cat"


def test_a_non_image_over_http_ends_in_an_error_event_not_a_crash(server, tmp_path):
    import httpx

    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as http:
        path = http.post("gradio_api/upload", files={"files": ("notes.jpg", b"not a photo", "image/jpeg")}).json()[0]
        call = http.post("gradio_api/call/predict",
                         json={"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}]})
        stream = http.get(f"gradio_api/call/predict/{call.json()['event_id']}").text
        assert "event: error" in stream and "Traceback" not in stream
        assert http.get("health").json()["model_loaded"] is True


def test_the_server_is_given_the_grace_period_the_setting_names(monkeypatch, tmp_path):
    """CATDOG_SHUTDOWN_GRACE_SECONDS reaches uvicorn: test_faults' stalled stop ends because of it, and a
    deployment sets it under its orchestrator's own grace period."""
    import catdog_model.app as app_module
    from catdog_model.service import Service

    for name, value in (("CATDOG_SHUTDOWN_GRACE_SECONDS", "3.5"), ("CATDOG_MODELS_DIR", str(tmp_path / "models")),
                        ("CATDOG_DATA_DIR", str(tmp_path / "data")), ("CATDOG_RELOAD_SECONDS", "0"),
                        ("CATDOG_PREPARE_EMBEDDINGS", "0")):
        monkeypatch.setenv(name, value)
    made, run = [], {}
    monkeypatch.setattr(app_module, "Service", lambda settings: made.append(Service(settings)) or made[-1])
    monkeypatch.setattr(app_module.uvicorn, "run", lambda application, **options: run.update(options))
    try:
        app_module.main([])
    finally:
        for service in made:
            service.close()
    assert run["timeout_graceful_shutdown"] == 3.5

