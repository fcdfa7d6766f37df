"""The service behind the tabs, without a browser: hot promotion under load, a missing model, the figures."""

from __future__ import annotations

import dataclasses
import shutil
import threading

import pytest

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.service import Service, ServiceError
from catdog_model.hub import LocalHub
from tests.conftest import WEIGHTS_DIR, requires_weights

SHIPPED = LocalHub(PROJECT_ROOT / "models", Settings.from_env().model_name).production()


def make_settings(root, cache_dir, **changes) -> Settings:
    return dataclasses.replace(Settings.from_env(), weights_dir=WEIGHTS_DIR, models_dir=root / "models",
                               data_dir=root / "data", cache_dir=cache_dir, **changes)


@pytest.fixture
def service(tmp_path, cache_dir, small_photo_dir) -> Service:
    shutil.copytree(PROJECT_ROOT / "models", tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    return Service(make_settings(tmp_path, cache_dir, examples_dir=small_photo_dir))


@requires_weights
def test_promotion_while_predictions_run_fails_no_request(service, small_photo_dir):
    photos = [path.read_bytes() for path in sorted((small_photo_dir / "dogs").iterdir())[:5]]
    seen_versions, failures = set(), []
    stop = threading.Event()

    def predict_forever():
        while not stop.is_set():
            for photo in photos:
                try:
                    prediction, _ = service.predict(photo)
                    seen_versions.add(prediction.version)
                except Exception as error:  # any failure at all is what this test looks for
                    failures.append(error)

    clients = [threading.Thread(target=predict_forever) for _ in range(4)]
    for client in clients:
        client.start()
    for _ in range(3):
        service.promote("v1")
        service.rollback()
    stop.set()
    for client in clients:
        client.join()
    assert failures == []
    assert seen_versions == {"v1", SHIPPED}
    assert service.health()["model_version"] == SHIPPED


@requires_weights
def test_figures_examples_and_versions_for_the_metrics_tab(service, small_photo_dir):
    service.predict((small_photo_dir / "cats" / sorted((small_photo_dir / "cats").iterdir())[0].name).read_bytes())
    service.log.flush()
    figures = service.figures()
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in figures.values())
    assert [row["production"] for row in service.versions()] == [row["version"] == SHIPPED
                                                               for row in service.versions()]
    assert service.metrics()["monitoring"]["count"] == 1
    examples = service.example_images()
    assert len(examples) == 4 and {path.split("/")[-2] for path in examples} == {"cats", "dogs"}


def test_without_a_model_the_service_says_why_and_health_is_not_ready(tmp_path, cache_dir):
    service = Service(make_settings(tmp_path, cache_dir))
    assert service.health() == {"status": "not ready", "model_loaded": False, "model_version": None}
    assert "no production model yet" in service.load_error
    with pytest.raises(ServiceError, match="No model is loaded: .*no production model yet"):
        service.predict(b"\xff\xd8 any bytes")


def test_retraining_with_too_few_images_reports_the_reason(tmp_path, cache_dir):
    service = Service(make_settings(tmp_path, cache_dir))
    service.start_retrain()
    for _ in range(100):
        if not service.retrain_state.running:
            break
        threading.Event().wait(0.1)
    assert service.retrain_state.stage == "failed"
    assert "at least 5 images of each class" in service.retrain_state.error


def test_the_admin_token_is_checked_only_when_set(tmp_path, cache_dir):
    open_service = Service(make_settings(tmp_path / "open", cache_dir))
    open_service.check_token(None)
    guarded = Service(make_settings(tmp_path / "guarded", cache_dir, admin_token="s3cret"))
    guarded.check_token("s3cret")
    for wrong in (None, "", "s3cre", "s3cret "):
        with pytest.raises(ServiceError, match="admin token") as raised:
            guarded.check_token(wrong)
        assert "s3cret" not in str(raised.value)


@requires_weights
def test_a_version_that_cannot_load_is_never_promoted(service):
    weights = service.hub.repo / "v1" / "head.weights.h5"
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-4] + b"XXXX")
    with pytest.raises(ServiceError, match="v1 cannot be promoted: .*does not match the sha256"):
        service.promote("v1")
    assert service.hub.production() == SHIPPED and service.health()["model_version"] == SHIPPED
