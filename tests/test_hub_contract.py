"""One contract, both backends: the local folder hub, and the Hugging Face Hub backend talking HTTP to the
Hub-protocol test server through stock huggingface_hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from catdog_model.config import PROJECT_ROOT
from catdog_model.hub import HFHub, HubError, LocalHub
from catdog_model.version_metrics import metrics_table, read_metrics
from tests.test_hub import version_folder

_repo_numbers = iter(range(10_000))


@pytest.fixture(params=["local", "hf"])
def hub(request, tmp_path):
    if request.param == "local":
        return LocalHub(tmp_path / "models", "catdog-contract")
    endpoint = request.getfixturevalue("hf_env")["HF_ENDPOINT"]
    return HFHub(f"tester/catdog-contract-{next(_repo_numbers)}", tmp_path / "pending", endpoint)


@pytest.fixture
def staged(tmp_path):
    return version_folder(tmp_path / "staged")


def test_versions_are_numbered_snapshots_with_their_card(hub, staged):
    assert hub.versions() == [] and hub.production() is None
    assert hub.push(staged, write_card=lambda version: f"# {version}\n") == "v1"
    (staged / "metrics.json").write_text(json.dumps({"created_at": "later", "test": {"accuracy": 0.9}}))
    assert hub.push(staged, write_card=lambda version: f"# {version}\n") == "v2"
    assert hub.versions() == ["v1", "v2"]
    assert (hub.download("v1") / "README.md").read_text() == "# v1\n"
    assert read_metrics(hub, "v1")["test"] == {"accuracy": 0.5}  # v1 is unchanged by the later push
    assert read_metrics(hub, "v2")["test"] == {"accuracy": 0.9}


def test_promote_rollback_and_clear_errors(hub, staged):
    for _ in range(3):
        hub.push(staged)
    with pytest.raises(HubError, match="no production model"):
        hub.resolve("production")
    hub.promote("v1")
    hub.promote("v3")
    hub.promote("v3")  # promoting production again changes nothing
    assert hub.production() == "v3" and hub.resolve() == "v3"
    assert metrics_table(hub)[0]["created_at"] == "2026-11-27T00:00:00+00:00"
    assert [row["production"] for row in metrics_table(hub)] == [False, False, True]
    assert hub.rollback() == "v1"
    with pytest.raises(HubError, match="no earlier production version"):
        hub.rollback()
    with pytest.raises(HubError, match="No model version 'v9'"):
        hub.promote("v9")


def test_each_rollback_returns_to_the_version_that_production_last_replaced(hub, staged):
    for _ in range(3):
        hub.push(staged)
    for version in ("v1", "v2", "v3"):
        hub.promote(version)
    assert hub.rollback() == "v2" and hub.production() == "v2"
    assert hub.rollback() == "v1" and hub.production() == "v1"


def test_a_rollback_may_skip_versions_of_the_history_which_then_leave_it(hub, staged):
    for _ in range(4):
        hub.push(staged)
    for version in ("v1", "v2", "v3", "v4"):
        hub.promote(version)
    with pytest.raises(HubError, match="v4 was never production before v4"):
        hub.rollback(to="v4")
    assert hub.rollback(to="v2") == "v2" and hub.refs()["previous"] == ["v1"]
    assert hub.rollback() == "v1"


def test_concurrent_alias_updates_lose_nothing(hub, staged):
    hub.push(staged)
    hub.promote("v1")

    def append_many(name: str):
        for index in range(5):
            hub._update_refs(lambda refs: {**refs, "previous": refs["previous"] + [f"{name}{index}"]})

    writers = [threading.Thread(target=append_many, args=(name,)) for name in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert sorted(hub.refs()["previous"]) == sorted(f"{name}{index}" for name in "ab" for index in range(5))


def test_hub_push_retries_transient_errors(hf_env, hub_server, staged, tmp_path):
    _, state = hub_server
    hub = HFHub("tester/catdog-flaky", tmp_path / "pending", hf_env["HF_ENDPOINT"])
    state.fail_next_commits = 2
    assert hub.push(staged) == "v1"
    assert state.fail_next_commits == 0


def test_a_failed_push_keeps_the_files_and_says_where(hf_env, staged, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token")
    hub = HFHub("tester/catdog-refused", tmp_path / "pending", hf_env["HF_ENDPOINT"])
    with pytest.raises(HubError, match="(?s)failed .*401.*kept in") as raised:
        hub.push(staged)
    kept = str(raised.value).rsplit("kept in ", 1)[1].rstrip(".")
    assert os.path.isfile(f"{kept}/config.json") and os.path.isfile(f"{kept}/head.weights.h5")


def test_downloaded_revisions_load_offline(hf_env, staged, tmp_path):
    hub = HFHub("tester/catdog-offline", tmp_path / "pending", hf_env["HF_ENDPOINT"])
    hub.push(staged)
    hub.promote("v1")
    assert hub.production() == "v1" and read_metrics(hub, "v1")  # online: refs.json and v1 come into the cache
    script = ("from catdog_model.hub import HFHub; from catdog_model.version_metrics import read_metrics; "
              "from pathlib import Path; "
              "hub = HFHub('tester/catdog-offline', Path('.')); "
              "print(hub.production(), read_metrics(hub, 'production')['test']['accuracy'])")
    offline = {**os.environ, **hf_env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9",
               "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run([sys.executable, "-c", script], env=offline, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["v1", "0.5"]
