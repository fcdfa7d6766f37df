"""The load-test program runs end to end (briefly); its numbers are benchmark output, not assertions."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys

from catdog_model.config import PROJECT_ROOT
from tests.conftest import requires_weights

pytestmark = pytest.mark.heavy  # starts servers, trains or builds: make test-fast leaves it out


@requires_weights
def test_loadtest_runs_every_server_and_reports_the_ratios(small_photo_dir, env):
    result = subprocess.run([sys.executable, "-m", "bench.loadtest", "--users", "2", "--seconds", "4",
                             "--one-user-seconds", "3", "--starts", "1", "--images", str(small_photo_dir), "--json"],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for name in ("minimal_gradio", "catdog", "noop", "minimal_fastapi"):
        load = report[name]["load"]
        assert load["requests"] > 0 and load["failures"] == 0 and load["server_cpu_ms"] > 0, (name, load["errors"])
        assert report[name]["ready_s"] > 0 and report[name]["peak_rss_mb"] > 0
    assert report["catdog"]["rest"]["requests"] > 0 and report["catdog"]["rest"]["failures"] == 0
    assert report["catdog"]["load"]["wrong_labels"] is not None
    assert set(report["ratios"]) == {"catdog_to_minimal_gradio", "catdog_to_noop", "rest_to_minimal_fastapi",
                                     "ready_to_minimal_gradio"}
