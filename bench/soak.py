"""Soak test: Locust at 10 users against the app for N minutes, one minute at a time, watching failures,
latency drift and the server's memory.

    python -m bench.soak --minutes 10 [--users 10] [--json]

Minute 1 is the warm-up: RSS growth is measured from its end to the end of the run (target: under 5 %).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import psutil

from catdog_model.config import PROJECT_ROOT
from bench.loadtest import DEFAULT_IMAGES, App, image_options, run_locust


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--images", default=str(DEFAULT_IMAGES) if DEFAULT_IMAGES.is_dir() else None)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="catdog-soak-"))
    shutil.copytree(PROJECT_ROOT / "models", work / "models", ignore=shutil.ignore_patterns(".lock"))
    env = {**os.environ, "CATDOG_MODELS_DIR": str(work / "models"), "CATDOG_DATA_DIR": str(work / "data"),
           "CATDOG_RELOAD_SECONDS": "0", "PYTHONPATH": str(PROJECT_ROOT)}
    app = App(env)
    minutes = []
    try:
        for minute in range(1, arguments.minutes + 1):
            result = run_locust(app.url, arguments.users, 60, image_options(arguments.images))
            result["rss_mb"] = round(psutil.Process(app.process.pid).memory_info().rss / 2**20, 1)
            minutes.append({"minute": minute, **result})
            if not arguments.json:
                print(f"minute {minute:>2}: {result['requests_per_s']:>6} req/s  p50 {result['p50_ms']:>6} ms  "
                      f"p95 {result['p95_ms']:>6} ms  failures {result['failures']}  RSS {result['rss_mb']} MB",
                      flush=True)
    finally:
        app.stop()
        shutil.rmtree(work, ignore_errors=True)
    warm, last = minutes[0], minutes[-1]
    summary = {
        "minutes": len(minutes), "users": arguments.users,
        "requests": sum(minute["requests"] for minute in minutes),
        "failures": sum(minute["failures"] for minute in minutes),
        "wrong_labels": sum(minute["wrong_labels"] or 0 for minute in minutes),
        "p50_ms_first_last": [minutes[1 if len(minutes) > 1 else 0]["p50_ms"], last["p50_ms"]],
        "p95_ms_first_last": [minutes[1 if len(minutes) > 1 else 0]["p95_ms"], last["p95_ms"]],
        "rss_mb_after_warmup": warm["rss_mb"], "rss_mb_end": last["rss_mb"],
        "rss_growth_percent": round(100 * (last["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"], 1),
        "peak_rss_mb": round(app.peak_rss / 2**20, 1),
    }
    if arguments.json:
        print(json.dumps({"summary": summary, "per_minute": minutes}))
        return
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
