"""The load-test program runs end to end (briefly); its numbers are benchmark output, not assertions."""

from __future__ import annotations

import json
import subprocess
import sys

from catdog_model.config import PROJECT_ROOT
from tests.conftest import requires_weights


@requires_weights
def test_loadtest_runs_both_servers_and_reports(small_photo_dir, env):
    result = subprocess.run([sys.executable, "-m", "eval.loadtest", "--users", "2", "--seconds", "4",
                             "--one-user-seconds", "3", "--images", str(small_photo_dir), "--json"],
                            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    for name in ("catdog", "noop"):
        load = report[name]["load"]
        assert load["requests"] > 0 and load["failures"] == 0
        assert report[name]["ready_s"] > 0 and report[name]["peak_rss_mb"] > 0
    assert report["catdog"]["load"]["wrong_labels"] is not None
    assert report["throughput_ratio"] > 0
