"""Uploads outlive a wiped disk: they are committed to a Hub dataset repo and read back for retraining."""

from __future__ import annotations

import dataclasses

import pytest

from catdog_model.config import Settings
from catdog_model.service import Service, ServiceError
from tests.conftest import training_data, trusted_photos


def test_uploads_reach_the_hub_dataset_and_come_back_after_a_wipe(start_service, hf_env, small_photo_dir, tmp_path,
                                                                  cache_dir):
    def service(name: str) -> Service:
        return start_service(dataclasses.replace(Settings.from_env(), models_dir=tmp_path / "models",
                                                 data_dir=tmp_path / name, cache_dir=cache_dir,
                                                 hub_dataset="tester/catdog-uploads", reload_seconds=0))

    first = service("before-restart")
    for folder, label in (("cats", "cat"), ("dogs", "dog")):
        photos = [str(path) for path in sorted((small_photo_dir / folder).iterdir())[:6]]
        assert [row["status"] for row in first.curation.upload(label, photos)] == ["added"] * 6
    first.close()  # commits what the upload sync has pending

    after_restart = service("after-restart")  # an empty disk, as a restarted Space has
    assert after_restart.curation.uploads.counts() == {"cat": 0, "dog": 0}
    dataset = training_data(after_restart)
    assert dataset.counts() == {"cat": 6, "dog": 6}
    assert {example.sha256 for example in dataset.examples} == {
        example.sha256 for example in first.curation.uploads.dataset().examples}


def test_the_base_data_and_trusted_photos_can_come_from_a_hub_dataset(start_service, hf_env, small_photo_dir,
                                                                     tmp_path, cache_dir,
                                                                     monkeypatch):
    """CATDOG_BASE_DATA_DIR=hf:<repo>, as a Space names its base data: counted, split, and its test split is the
    gate's trusted set, exactly as from the same photos in a folder."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hf_env["HF_ENDPOINT"])
    api.create_repo("tester/catdog-base", repo_type="dataset")
    api.upload_folder(folder_path=str(small_photo_dir), repo_id="tester/catdog-base", repo_type="dataset")
    monkeypatch.setenv("CATDOG_BASE_DATA_DIR", "hf:tester/catdog-base")
    from_hub = start_service(dataclasses.replace(Settings.from_env(), models_dir=tmp_path / "models",
                                                 data_dir=tmp_path / "hub", cache_dir=cache_dir, reload_seconds=0,
                                                 prepare_embeddings=False))
    assert from_hub.settings.base_data_hub == "tester/catdog-base" and from_hub.settings.base_data_dir is None
    monkeypatch.setenv("CATDOG_BASE_DATA_DIR", str(small_photo_dir))
    from_folder = start_service(dataclasses.replace(Settings.from_env(), models_dir=tmp_path / "models",
                                                    data_dir=tmp_path / "folder", cache_dir=cache_dir,
                                                    reload_seconds=0, prepare_embeddings=False))
    assert from_hub.curation.dataset_stats()["base"] == from_folder.curation.dataset_stats()["base"] == {"cat": 30, "dog": 30}

    def hashes(examples) -> set[str]:
        return {example.sha256 for example in examples}

    assert hashes(trusted_photos(from_hub)) == hashes(trusted_photos(from_folder)) and len(
        trusted_photos(from_hub)) == 12
    assert hashes(training_data(from_hub).examples) == hashes(training_data(from_folder).examples)


def test_a_hub_dataset_that_cannot_be_read_is_a_sentence_and_counts_as_no_photos(start_service, hf_env, tmp_path,
                                                                                cache_dir,
                                                                                monkeypatch):
    monkeypatch.setenv("CATDOG_BASE_DATA_DIR", "hf:tester/no-such-dataset")
    service = start_service(dataclasses.replace(Settings.from_env(), models_dir=tmp_path / "models",
                                                data_dir=tmp_path / "data", cache_dir=cache_dir, reload_seconds=0,
                                                prepare_embeddings=False))
    assert service.curation.dataset_stats()["base"] == {"cat": 0, "dog": 0}  # the Metrics tab and upload replies go on
    with pytest.raises(ServiceError, match="The Hub dataset tester/no-such-dataset cannot be read now"):
        trusted_photos(service)
