"""The retraining child's own side, without a full training: what it trains on, and that it never outlives the
server that started it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from catdog_model.config import PROJECT_ROOT
from catdog_model.errors import ServiceError
from catdog_model.finetune import FineTuneConfig
from catdog_model.images import content_hash
from catdog_model.retrain_data import training_dataset
from catdog_model.retrain_job import CONFIG_VARIABLE, PARENT_VARIABLE, SETTINGS_VARIABLE, RetrainConfig
from catdog_model.retraining import LAST_RETRAINING_FILE, Retrainer, RetrainState
from catdog_model.uploads import UploadStore
from tests.conftest import random_jpeg
from bench.servers import wait_for


def has_ended(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_suspect_upload_joins_training_only_once_an_admin_confirms_it(settings, tmp_path):
    settings = dataclasses.replace(settings, base_data_dir=None, hub_dataset=None)
    store = UploadStore(settings.data_dir / "uploads")
    doubted, agreed = random_jpeg(1), random_jpeg(2)

    def production_doubts(label: str, image: bytes) -> str | None:
        return "production says dog with 99% confidence" if image == doubted else None

    results = store.add("cat", [("doubted.jpg", doubted), ("agreed.jpg", agreed)], production_doubts)
    assert [result.status for result in results] == ["suspect", "added"]

    def trained_on() -> dict[str, str]:
        return {example.sha256: example.label for example in training_dataset(settings, store, []).examples}

    assert trained_on() == {content_hash(agreed): "cat"}
    assert len(store.review_suspects(confirm=True)) == 1
    assert trained_on() == {content_hash(agreed): "cat", content_hash(doubted): "cat"}


def test_the_retraining_recipe_changes_the_fields_it_names_and_a_wrong_one_is_a_sentence(settings):
    from catdog_model.service import Service

    recipe = '{"training": {"epochs": 7}, "fine_tuning": {"blocks": 2}}'
    service = Service(dataclasses.replace(settings, retrain_recipe=recipe))
    assert service.retrainer.config == RetrainConfig(dataclasses.replace(RetrainConfig().training, epochs=7),
                                                     FineTuneConfig(blocks=2))
    service.close()
    for wrong in ('{"training": {"epoch": 7}}', '{"training": {"epochs": "many"}}', "epochs=7", "[7]",
                  '{"fine_tuning": "deep"}'):
        with pytest.raises(ServiceError, match=r"^CATDOG_RETRAIN_RECIPE is not a recipe .*write JSON such as"):
            Service(dataclasses.replace(settings, retrain_recipe=wrong))


# The child as the server starts it (python -m catdog_model.retrain_job, run as __main__), except that its work
# never finishes and never prints: it says it has started working, then waits silently.
SILENT_CHILD = """
import pathlib, runpy, sys, threading
import catdog_model.hub

working = pathlib.Path(sys.argv[1])

def open_hub(settings):
    working.touch()
    threading.Event().wait()

catdog_model.hub.open_hub = open_hub
sys.argv = sys.argv[:1]
runpy.run_module("catdog_model.retrain_job", run_name="__main__", alter_sys=True)
"""

# The server's side: start the child as Retrainer does (its pid in the environment, its output in a pipe), say
# the child's pid, then serve until killed.
SERVER = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, sys.argv[3]: str(os.getpid())})
print(child.pid, flush=True)
sys.stdin.read()
"""


def test_a_silent_retraining_child_ends_when_the_server_is_killed(settings, tmp_path):
    working = tmp_path / "child-is-working"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), SETTINGS_VARIABLE: settings.to_json(),
           CONFIG_VARIABLE: RetrainConfig().to_json()}
    server = subprocess.Popen([sys.executable, "-c", SERVER, SILENT_CHILD, str(working), PARENT_VARIABLE],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=PROJECT_ROOT)
    child = None
    try:
        child = psutil.Process(int(server.stdout.readline()))
        wait_for(working.exists, 120)  # the child has reached its work
        os.kill(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        wait_for(lambda: has_ended(child), 30)  # ...and ends with the server
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
        if child is not None and child.is_running():
            child.kill()


def test_the_time_left_follows_the_pace_since_a_stage_resumed_not_since_it_first_began():
    state = RetrainState(running=True)
    state.stage_changed("fine-tuning", now=100.0)
    state.progressed(0, 100)
    state.progressed(10, 100)
    assert state.seconds_left(110.0) == pytest.approx(90)  # 10 batches in 10 s: 90 to go
    state.stage_changed("preparing the validation step", now=110.0)  # Keras traces; seconds tick, no batches
    state.progressed(20, 0)
    assert state.seconds_left(130.0) is None
    state.stage_changed("fine-tuning", now=130.0)  # resumed where it was: its pace starts from there
    state.progressed(50, 100)
    state.progressed(60, 100)
    assert state.seconds_left(140.0) == pytest.approx(40)


SCORES = {"accuracy": 0.98, "precision": 0.97, "recall": 0.99, "f1": 0.98, "roc_auc": 0.99, "log_loss": 0.05,
          "n_images": 500}


@pytest.mark.parametrize("kept", [
    "not an object", {"stage": "done", "log": None}, {"stage": "done", "result": [1, 2]},
    {"stage": "done", "result": {"version": "v6", "candidate": {**SCORES, "f1": "n/a"}}},
    {"stage": "done", "result": {"candidate": SCORES}}, {"stage": "done", "done": "all"},
])
def test_a_kept_retraining_that_is_not_one_is_not_shown(settings, kept):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    (settings.data_dir / LAST_RETRAINING_FILE).write_text(json.dumps(kept))
    state = Retrainer(settings, lambda result: None).last()
    assert state.stage == "idle" and not state.running and state.result is None


def test_the_last_retraining_is_shown_after_a_restart_and_never_as_running(settings):
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    result = {"version": "v6", "candidate": SCORES, "production": SCORES, "promoted": False}
    (settings.data_dir / LAST_RETRAINING_FILE).write_text(json.dumps(
        {"running": True, "stage": "done", "log": ["Retraining started.", "Finished."], "result": result}))
    state = Retrainer(settings, lambda result: None).last()
    assert (state.stage, state.running, state.result) == ("done", False, result)
