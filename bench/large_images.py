"""Memory under large images: N concurrent 7000×7000 RGBA PNGs (about 200 KB each on disk, 196 MB decoded)
sent to /predict of a real app, watching the server's RSS and how fast /health answers meanwhile.

    python -m bench.large_images [--requests 16] [--side 7000] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from PIL import Image

from catdog_model.config import PROJECT_ROOT
from bench.loadtest import App


def large_png(side: int) -> bytes:
    image = Image.new("RGBA", (side, side), (250, 250, 250, 255))
    image.paste((120, 80, 40, 255), (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def predict(url: str, data: bytes) -> str:
    """Upload → call → event stream; the last event's kind."""
    with httpx.Client(base_url=url, timeout=300) as http:
        path = http.post("/gradio_api/upload", files={"files": ("large.png", data, "image/png")}).json()[0]
        event = http.post("/gradio_api/call/predict", json={"data": [{"path": path, "meta": {
            "_type": "gradio.FileData"}}]}).json()["event_id"]
        lines = [line for line in http.get(f"/gradio_api/call/predict/{event}").text.splitlines() if line]
        return lines[-2].removeprefix("event: ")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.large_images", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)

    data = large_png(arguments.side)
    work = Path(tempfile.mkdtemp(prefix="catdog-large-"))
    shutil.copytree(PROJECT_ROOT / "models", work / "models", ignore=shutil.ignore_patterns(".lock"))
    app = App({**os.environ, "CATDOG_MODELS_DIR": str(work / "models"), "CATDOG_DATA_DIR": str(work / "data"),
               "CATDOG_RELOAD_SECONDS": "0", "PYTHONPATH": str(PROJECT_ROOT)})
    server = psutil.Process(app.process.pid)
    health_seconds, peak_rss, running = [], [0], [True]

    def watch() -> None:
        while running[0]:
            peak_rss[0] = max(peak_rss[0], server.memory_info().rss)
            started = time.perf_counter()
            httpx.get(app.url + "/health", timeout=30)
            health_seconds.append(time.perf_counter() - started)
            time.sleep(0.1)

    try:
        predict(app.url, data)  # warm-up: the first request pays one-off costs
        rss_before = server.memory_info().rss
        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(arguments.requests) as pool:
            outcomes = list(pool.map(lambda _: predict(app.url, data), range(arguments.requests)))
        seconds = time.perf_counter() - started
        running[0] = False
        watcher.join()
        rss_after = server.memory_info().rss
    finally:
        app.stop()
        shutil.rmtree(work, ignore_errors=True)
    result = {"requests": arguments.requests, "png_kb": round(len(data) / 1024),
              "decoded_mb_each": round(arguments.side ** 2 * 4 / 2**20), "seconds": round(seconds, 1),
              "outcomes": {kind: outcomes.count(kind) for kind in set(outcomes)},
              "rss_mb_before": round(rss_before / 2**20), "rss_mb_peak": round(peak_rss[0] / 2**20),
              "rss_mb_after": round(rss_after / 2**20),
              "rss_mb_growth_peak": round((peak_rss[0] - rss_before) / 2**20),
              "health_ms_max": round(max(health_seconds) * 1000), "health_checks": len(health_seconds)}
    print(json.dumps(result) if arguments.json else "\n".join(f"{key}: {value}" for key, value in result.items()))


if __name__ == "__main__":
    main()
