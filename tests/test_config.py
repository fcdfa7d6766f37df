"""Settings from the environment: a number that cannot work is refused at start in a sentence that says what to
give, before anything runs on it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.errors import ServiceError


def numeric_settings() -> list[tuple[str, dict]]:
    """Each number Settings.from_env reads: its variable and the keywords it is read with (least, most, …)."""
    tree = ast.parse((PROJECT_ROOT / "catdog_model" / "config.py").read_text())
    return [(call.args[0].value, {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords})
            for call in ast.walk(tree) if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "_number"
            and call.args and isinstance(call.args[0], ast.Constant)]


def test_every_number_has_a_range():
    assert len(numeric_settings()) >= 20
    assert not [name for name, keywords in numeric_settings() if "least" not in keywords and "most" not in keywords]


@pytest.mark.parametrize("name, keywords", numeric_settings(), ids=[name for name, _ in numeric_settings()])
def test_a_value_just_past_either_bound_is_refused_and_the_bound_itself_is_taken(monkeypatch, name, keywords):
    for bound, past in (("least", -1), ("most", +1)):
        if bound not in keywords:
            continue
        monkeypatch.setenv(name, str(keywords[bound] + past))
        with pytest.raises(ServiceError, match=f"^{name}='[^']*' is out of range: give "):
            Settings.from_env()
        monkeypatch.setenv(name, str(keywords[bound]))
        Settings.from_env()


@pytest.mark.parametrize("name, value, sentence", [
    ("CATDOG_SHUTDOWN_GRACE_SECONDS", "-1", "give a finite number of seconds, 0 or more"),
    ("CATDOG_SHUTDOWN_GRACE_SECONDS", "nan", "give a finite number of seconds, 0 or more"),
    ("CATDOG_SHUTDOWN_GRACE_SECONDS", "inf", "give a finite number of seconds, 0 or more"),
    ("CATDOG_FILE_CACHE_MINUTES", "-5", "give a finite number of minutes, 0 or more"),
    ("CATDOG_LOG_BUFFER_ROWS", "0", "give a whole number, 1 or more"),  # a queue of size 0 has no bound
    ("CATDOG_SERVING_THREADS", "-1", "give a whole number, 0 or more"),
    ("CATDOG_LOW_CONFIDENCE", "80", "give a finite number, from 0 to 1"),
    ("CATDOG_GATE_LOG_LOSS_MARGIN", "nan", "give a finite number, 0 or more (or inf: no log-loss check)"),
    ("GRADIO_SERVER_PORT", "70000", "give a whole number, from 1 to 65535"),
])
def test_the_sentence_says_what_to_give(monkeypatch, name, value, sentence):
    monkeypatch.setenv(name, value)
    with pytest.raises(ServiceError) as refused:
        Settings.from_env()
    assert str(refused.value) == f"{name}={value!r} is out of range: {sentence}."


@pytest.mark.parametrize("name, value, sentence", [("CATDOG_MAX_FILES", "many", "is not a whole number"),
                                                 ("CATDOG_RELOAD_SECONDS", "soon", "is not a number")])
def test_a_word_where_a_number_belongs_is_refused_with_its_kind(monkeypatch, name, value, sentence):
    monkeypatch.setenv(name, value)
    with pytest.raises(ServiceError, match=f"^{name}='{value}' {sentence}.$"):
        Settings.from_env()


@pytest.mark.parametrize("name, value, field, expected", [
    ("CATDOG_RELOAD_SECONDS", "0", "reload_seconds", 0.0),  # 0: never follow the alias
    ("CATDOG_SERVING_THREADS", "0", "serving_threads", 0),  # 0: ONNX Runtime's own choice
    ("CATDOG_PROMOTION_TOLERANCE", "-0.01", "promotion_tolerance", -0.01),  # a gain of a point is demanded
    ("CATDOG_GATE_LOG_LOSS_MARGIN", "inf", "gate_log_loss_margin", float("inf")),  # no log-loss check
])
def test_values_with_a_documented_meaning_are_taken(monkeypatch, name, value, field, expected):
    monkeypatch.setenv(name, value)
    assert getattr(Settings.from_env(), field) == expected


@pytest.mark.parametrize("run, name, value, sentence", [
    ("runpy.run_path('app.py', run_name='__main__')",  # python app.py
     "CATDOG_LOG_BUFFER_ROWS", "0", "CATDOG_LOG_BUFFER_ROWS='0' is out of range: give a whole number, 1 or more."),
    ("sys.argv[1:] = ['serve']; runpy.run_module('catdog', run_name='__main__')",
     "CATDOG_LOG_BUFFER_ROWS", "0", "CATDOG_LOG_BUFFER_ROWS='0' is out of range: give a whole number, 1 or more."),
    ("runpy.run_path('app.py', run_name='__main__')",
     "CATDOG_RETRAIN_RECIPE", '{"training": {"epochs": 0}}', "epochs and batch_size must be at least 1."),
    ("runpy.run_path('app.py', run_name='__main__')",  # a file where the folder belongs: root cannot write there
     "CATDOG_DATA_DIR", "/dev/null/data", "CATDOG_DATA_DIR (/dev/null/data) cannot be written: Not a directory."),
])
def test_the_app_refuses_a_bad_setting_before_loading_gradio(run, name, value, sentence):
    # Gradio takes seconds to import: an operator's typo is told at once, with its sentence and status 2.
    script = (f"import runpy, sys\ntry:\n    {run}\n"
              "except SystemExit as stop:\n    print(stop.code, 'gradio' in sys.modules)")
    refused = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             env={**os.environ, name: value}, timeout=300)
    assert refused.stdout.split() == ["2", "False"], refused.stderr[-2000:]
    assert sentence in refused.stderr
    assert "Traceback" not in refused.stderr


def test_help_is_given_even_where_a_setting_is_bad():
    # The settings are checked early only to start a server: asking how to start one needs none of them.
    helped = subprocess.run([sys.executable, "app.py", "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={**os.environ, "CATDOG_MAX_FILES": "many"}, timeout=300)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert helped.stdout.startswith("usage: catdog serve")
