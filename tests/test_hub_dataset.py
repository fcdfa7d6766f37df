"""Uploads outlive a wiped disk: they are committed to a Hub dataset repo and read back for retraining."""

from __future__ import annotations

import dataclasses

from catdog_model.config import Settings
from catdog_model.service import Service


def test_uploads_reach_the_hub_dataset_and_come_back_after_a_wipe(hf_env, small_photo_dir, tmp_path, cache_dir):
    def service(name: str) -> Service:
        return Service(dataclasses.replace(Settings.from_env(), models_dir=tmp_path / "models",
                                           data_dir=tmp_path / name, cache_dir=cache_dir,
                                           hub_dataset="tester/catdog-uploads", reload_seconds=0))

    first = service("before-restart")
    for folder, label in (("cats", "cat"), ("dogs", "dog")):
        photos = [str(path) for path in sorted((small_photo_dir / folder).iterdir())[:6]]
        assert [row["status"] for row in first.upload(label, photos)] == ["added"] * 6
    first.sync_uploads()

    after_restart = service("after-restart")  # an empty disk, as a restarted Space has
    assert after_restart.uploads.counts() == {"cat": 0, "dog": 0}
    dataset = after_restart.training_dataset()
    assert dataset.counts() == {"cat": 6, "dog": 6}
    assert {example.sha256 for example in dataset.examples} == {
        example.sha256 for example in first.uploads.dataset().examples}
