"""Load-test catdog with Locust against the ceilings it is compared with, all in one run, on one machine.

    python -m bench.loadtest [--users 10] [--seconds 60] [--starts 3] [--retrain] [--json]

Servers, each started on a free loopback port (start to ready: the median of --starts starts) and
load-tested in turn:
- the minimal Gradio app (bench/minimal_apps.py: one endpoint, constant answer) — Gradio's ceiling here;
- catdog (`python app.py`) through Gradio's /predict, and through POST /api/predict;
- catdog with a no-op model (CATDOG_NOOP_MODEL=1): what catdog's own web layer costs;
- a minimal FastAPI app serving the same model.onnx (decode + one ONNX Runtime call) — the REST ceiling.
Each answers one warm-up prediction (its time is reported: a first request pays one-off costs), then gets
--users users for --seconds (throughput, p50/p95/p99, failures, the server's CPU time per prediction) and 1 user
(latency); catdog's RSS is read after its load. With --retrain, catdog's 1-user latency is measured again while a
retraining runs. Locust runs on the same machine and shares its cores.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from catdog_model.config import PROJECT_ROOT
from bench.servers import free_port

DEFAULT_IMAGES = PROJECT_ROOT.parent / "shared" / "data" / "cats_vs_dogs"
LOCUSTFILE = PROJECT_ROOT / "bench" / "locustfile.py"
END_TO_END = "predict (end to end)"
LABEL_CHECK = "label check"


class App:
    """`python app.py` in a child process, with its start-up time and peak memory."""

    def __init__(self, env: dict[str, str], command: tuple[str, ...] = ("app.py",)):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, *command], cwd=PROJECT_ROOT,
                                        env={**env, "GRADIO_SERVER_PORT": str(self.port)},
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not self.ready():
            if self.process.poll() is not None or time.perf_counter() - started > 180:
                raise RuntimeError("the app did not start")
            time.sleep(0.05)  # start to ready is read to within 50 ms
        self.ready_seconds = time.perf_counter() - started
        self.peak_rss = 0
        self._watching = True
        threading.Thread(target=self._watch_memory, daemon=True).start()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return json.loads(response.read())["model_loaded"]
        except OSError:
            return False

    def _watch_memory(self) -> None:
        process = psutil.Process(self.process.pid)
        while self._watching:
            try:
                self.peak_rss = max(self.peak_rss, process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far, its threads and any children (a retraining) together."""
        process = psutil.Process(self.process.pid)
        times = process.cpu_times()
        return times.user + times.system + sum(child.cpu_times().user + child.cpu_times().system
                                               for child in process.children(recursive=True))

    def stop(self) -> None:
        self._watching = False
        self.process.terminate()
        self.process.wait(timeout=30)


def run_locust(url: str, users: int, seconds: int, options: tuple[str, ...] = (), user: str = "PredictUser") -> dict:
    """Locust headless against url with one of bench/locustfile.py's users and its options (--load-images …);
    the end-to-end row of its statistics, and each failure's message with its count."""
    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder) / "run"
        locust = subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
                                 "-r", str(users), "-t", f"{seconds}s", "--host", url, "--csv", str(prefix),
                                 "--only-summary", "--stop-timeout", "10", *options, user],
                                cwd=PROJECT_ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        stats, failures = Path(f"{prefix}_stats.csv"), Path(f"{prefix}_failures.csv")
        rows = {row["Name"]: row for row in csv.DictReader(stats.open())} if stats.exists() else {}
        errors = {f"{row['Name']}: {row['Error']}": int(row["Occurrences"])
                  for row in (csv.DictReader(failures.open()) if failures.exists() else ())}
    if END_TO_END not in rows:
        raise SystemExit(f"Locust finished no prediction against {url} in {seconds} s ({user}, {users} users): "
                         f"give it more --seconds. Locust said:\n{locust.stderr[-2000:]}")
    row = rows[END_TO_END]
    wrong = int(rows[LABEL_CHECK]["Failure Count"]) if LABEL_CHECK in rows else None
    return {"users": users, "seconds": seconds, "requests": int(row["Request Count"]),
            "failures": int(row["Failure Count"]), "errors": errors, "wrong_labels": wrong, "requests_per_s": round(float(row["Requests/s"]), 2),
            "p50_ms": float(row["50%"]), "p95_ms": float(row["95%"]), "p99_ms": float(row["99%"])}


def warm_up(url: str, user: str) -> float:
    """One prediction, awaited, before the timed runs; its time in ms. A server's first request pays one-off
    costs (lazy imports, ONNX Runtime's first run: about 1 s here, several on a busy machine) that would
    otherwise land in the first run's percentiles, or outlast a short run altogether."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buffer, "JPEG")
    photo = ("warm-up.jpg", buffer.getvalue(), "image/jpeg")
    started = time.perf_counter()
    if user == "RestUser":
        requests.post(url + "/api/predict", files={"file": photo}, timeout=300).raise_for_status()
    else:
        upload = requests.post(url + "/gradio_api/upload", files={"files": photo}, timeout=300)
        upload.raise_for_status()
        call = requests.post(url + "/gradio_api/call/predict", timeout=300,
                             json={"data": [{"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}]})
        call.raise_for_status()
        stream = requests.get(f"{url}/gradio_api/call/predict/{call.json()['event_id']}", timeout=300)
        if "event: complete" not in stream.text:
            raise SystemExit(f"The warm-up prediction against {url} did not complete: {stream.text[-300:]}")
    return round((time.perf_counter() - started) * 1000, 1)


def start_retrain(url: str) -> None:
    from gradio_client import Client

    Client(url, verbose=False).predict("", api_name="/retrain")


def image_options(folder: str | None) -> tuple[str, ...]:
    """Locust's options for these photos; none: the locustfile's default (CATDOG_LOAD_IMAGES, else generated)."""
    return ("--load-images", folder) if folder else ()


def measure(env: dict[str, str], arguments, command: tuple[str, ...] = ("app.py",), user: str = "PredictUser",
            retrain: bool = False, rest: bool = False, check_labels: bool = True) -> dict:
    # Start to ready varies by a second from one start to the next here: the median of --starts starts.
    starts = []
    for _ in range(arguments.starts - 1):
        started = App(env, command)
        starts.append(started.ready_seconds)
        started.stop()
    app = App(env, command)
    starts.append(app.ready_seconds)
    options = image_options(arguments.images) + ("--no-label-check",) * (not check_labels)
    try:
        first_request_ms = warm_up(app.url, user)
        before = app.cpu_seconds()
        result = {"ready_s": round(statistics.median(starts), 1), "first_request_ms": first_request_ms,
                  "load": run_locust(app.url, arguments.users, arguments.seconds, options, user)}
        # What one prediction costs the server, whatever the machine's speed or Locust's share of it.
        result["load"]["server_cpu_ms"] = round((app.cpu_seconds() - before) * 1000
                                                / max(result["load"]["requests"], 1), 2)
        result["rss_mb_after_load"] = round(psutil.Process(app.process.pid).memory_info().rss / 2**20, 1)
        result["one_user"] = run_locust(app.url, 1, arguments.one_user_seconds, options, user)
        if rest:
            result["rest"] = run_locust(app.url, arguments.users, arguments.seconds, options, "RestUser")
        if retrain:
            start_retrain(app.url)
            result["one_user_during_retrain"] = run_locust(app.url, 1, arguments.one_user_seconds, options, user)
        result["peak_rss_mb"] = round(app.peak_rss / 2**20, 1)
        return result
    finally:
        app.stop()


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / max(denominator, 1e-9), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=60, help="length of each --users run")
    parser.add_argument("--one-user-seconds", type=int, default=20, help="length of each 1-user run")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES) if DEFAULT_IMAGES.is_dir() else None,
                        help="folder with cats/ and dogs/ (default: ../shared/data/cats_vs_dogs if present)")
    parser.add_argument("--retrain", action="store_true", help="also measure latency while a retraining runs")
    parser.add_argument("--starts", type=int, default=3, help="starts of each server; its start to ready is "
                                                              "their median")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    arguments = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="catdog-loadtest-"))
    # Each app gets a private copy of the models and data, so a retraining here never touches the repository.
    shutil.copytree(PROJECT_ROOT / "models", work / "models", ignore=shutil.ignore_patterns(".lock"))
    # The background embedding of the base data after a first start is a one-off job at low priority, not
    # the request path: off, so that every catdog run measures the same thing. Uploads go to a private folder:
    # Gradio files an upload under its content's hash, and any other Gradio server on this machine that stops
    # deletes the files it received, the same photo under these servers' feet included.
    base = {**os.environ, "CATDOG_MODELS_DIR": str(work / "models"), "CATDOG_RELOAD_SECONDS": "0",
            "PYTHONPATH": str(PROJECT_ROOT), "CATDOG_PREPARE_EMBEDDINGS": "0",
            "GRADIO_TEMP_DIR": str(work / "gradio-files")}
    base.pop("CATDOG_ADMIN_TOKEN", None)
    if arguments.images:
        base.update(CATDOG_BASE_DATA_DIR=arguments.images)
    from catdog_model.config import Settings
    from catdog_model.hub import LocalHub
    from catdog_model.layout import ONNX_FILE

    model = LocalHub(work / "models", Settings.from_env().model_name).download() / ONNX_FILE
    results = {
        "minimal_gradio": measure(base, arguments, ("-m", "bench.minimal_apps", "gradio"), check_labels=False),
        "catdog": measure({**base, "CATDOG_DATA_DIR": str(work / "data")}, arguments, retrain=arguments.retrain,
                          rest=True),
        "noop": measure({**base, "CATDOG_DATA_DIR": str(work / "noop-data"), "CATDOG_NOOP_MODEL": "1"},
                        arguments, check_labels=False),
        "minimal_fastapi": measure(base, arguments, ("-m", "bench.minimal_apps", "fastapi", "--model", str(model)),
                                   user="RestUser"),
        "images": "real photos" if arguments.images else "generated JPEGs",
    }
    shutil.rmtree(work, ignore_errors=True)
    catdog, gradio, noop, fastapi = (results[name] for name in ("catdog", "minimal_gradio", "noop", "minimal_fastapi"))
    results["ratios"] = {
        "catdog_to_minimal_gradio": ratio(catdog["load"]["requests_per_s"], gradio["load"]["requests_per_s"]),
        "catdog_to_noop": ratio(catdog["load"]["requests_per_s"], noop["load"]["requests_per_s"]),
        "rest_to_minimal_fastapi": ratio(catdog["rest"]["requests_per_s"], fastapi["load"]["requests_per_s"]),
        "ready_to_minimal_gradio": ratio(catdog["ready_s"], gradio["ready_s"]),
    }
    if arguments.json:
        print(json.dumps(results))
        return
    names = ("minimal_gradio", "catdog", "noop", "minimal_fastapi")
    print(f"{'':24}" + "".join(f"{name:>17}" for name in names))
    rows = [("ready (s)", "ready_s", None), ("first prediction (ms)", "first_request_ms", None),
            (f"req/s, {arguments.users} users", "load", "requests_per_s"),
            ("p50 ms", "load", "p50_ms"), ("p95 ms", "load", "p95_ms"), ("failures", "load", "failures"),
            ("server CPU ms / pred.", "load", "server_cpu_ms"),
            ("p50 ms, 1 user", "one_user", "p50_ms"), ("p95 ms, 1 user", "one_user", "p95_ms"),
            ("RSS after load (MB)", "rss_mb_after_load", None), ("peak RSS (MB)", "peak_rss_mb", None)]
    for title, key, field in rows:
        values = [results[name][key] if field is None else results[name][key][field] for name in names]
        print(f"{title:<24}" + "".join(f"{value!s:>17}" for value in values))
    rest = catdog["rest"]
    print(f"catdog POST /api/predict: {rest['requests_per_s']} req/s, p50 {rest['p50_ms']} ms, "
          f"failures {rest['failures']}, wrong labels {rest['wrong_labels']}")
    print("ratios: " + ", ".join(f"{name} {value}" for name, value in results["ratios"].items()))
    if "one_user_during_retrain" in catdog:
        during = catdog["one_user_during_retrain"]
        print(f"1 user during a retraining: p50 {during['p50_ms']} ms, p95 {during['p95_ms']} ms "
              f"(idle p95 {catdog['one_user']['p95_ms']} ms)")


if __name__ == "__main__":
    main()
