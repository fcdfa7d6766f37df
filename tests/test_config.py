"""Settings from the environment: a number that cannot work is refused at start in a sentence that says what to
give, before anything runs on it."""

from __future__ import annotations

import pytest

from catdog_model.config import Settings
from catdog_model.errors import ServiceError


@pytest.mark.parametrize("name, value, sentence", [
    ("CATDOG_SHUTDOWN_GRACE_SECONDS", "-1", "give a number of seconds, 0 or more"),
    ("CATDOG_SHUTDOWN_GRACE_SECONDS", "nan", "give a number of seconds, 0 or more"),
    ("CATDOG_SHUTDOWN_GRACE_SECONDS", "inf", "give a number of seconds, 0 or more"),
    ("CATDOG_RELOAD_SECONDS", "-60", "give a number of seconds, 0 or more"),
    ("CATDOG_FILE_CACHE_MINUTES", "-5", "give a number of minutes, 0 or more"),
    ("CATDOG_LOG_BUFFER_ROWS", "0", "give a whole number, 1 or more"),  # a queue of size 0 has no bound
    ("CATDOG_MAX_FILES", "0", "give a whole number, 1 or more"),
    ("CATDOG_BACKBONE_BATCH_SIZE", "-32", "give a whole number, 1 or more"),
    ("CATDOG_SERVING_THREADS", "-1", "give a whole number, 0 or more"),
    ("CATDOG_LOW_CONFIDENCE", "80", "give a number, from 0 to 1"),
    ("CATDOG_GATE_MIN_ACCURACY", "-0.1", "give a number, from 0 to 1"),
    ("GRADIO_SERVER_PORT", "70000", "give a whole number, from 1 to 65535"),
])
def test_a_number_out_of_its_range_is_refused_with_what_to_give(monkeypatch, name, value, sentence):
    monkeypatch.setenv(name, value)
    with pytest.raises(ServiceError) as refused:
        Settings.from_env()
    assert str(refused.value) == f"{name}={value!r} is out of range: {sentence}."


def test_a_word_where_a_number_belongs_is_refused_with_its_kind(monkeypatch):
    monkeypatch.setenv("CATDOG_MAX_FILES", "many")
    with pytest.raises(ServiceError, match="CATDOG_MAX_FILES='many' is not a valid int"):
        Settings.from_env()


@pytest.mark.parametrize("name, value, field, expected", [
    ("CATDOG_RELOAD_SECONDS", "0", "reload_seconds", 0.0),  # 0: never follow the alias
    ("CATDOG_SERVING_THREADS", "0", "serving_threads", 0),  # 0: ONNX Runtime's own choice
    ("CATDOG_LOW_CONFIDENCE", "1", "low_confidence", 1.0),
    ("CATDOG_SHUTDOWN_GRACE_SECONDS", "0", "shutdown_grace_seconds", 0.0),
    ("GRADIO_SERVER_PORT", "65535", "server_port", 65535),
])
def test_the_bounds_themselves_are_accepted(monkeypatch, name, value, field, expected):
    monkeypatch.setenv(name, value)
    assert getattr(Settings.from_env(), field) == expected
