"""The attacks of the security review, repeated against a real app on this machine and measured:

1. the EXIF CPU bomb: a 64×48 PNG with 6,000 (then 12,000) padding EXIF tags, two at once to POST /api/predict;
2. three small zip archives of ten distinct 4000×4000 BMPs each, in one upload call: the server's RSS and the
   disk the uploads take;
3. a flood: --flood-clients clients posting the largest image the decode budget accepts, for --flood-seconds,
   while one client classifies a normal photo over and over on REST and one on Gradio's /predict; then the same
   flood of normal photos, the ceiling for the same machine.

    python -m bench.attacks [--flood-clients 50] [--flood-seconds 20] [--photo PATH] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import tempfile
import threading
import time
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from gradio_client import Client, handle_file
from PIL import Image

from bench.loadtest import App
from catdog_model.config import PROJECT_ROOT

DEFAULT_PHOTO = PROJECT_ROOT.parent / "shared" / "data" / "cats_vs_dogs" / "cats"
BOMB_SIDE = 5600  # RGBA: 31 megapixels, charged 245 MB to decode, just within the default 256 MB


def exif_block(orientation: int, padding_tags: int = 0, tag_bytes: int = 1000) -> bytes:
    """An EXIF block as Pillow stores it ("Exif\\0\\0", a little-endian TIFF IFD): the orientation tag, then
    padding_tags unknown ASCII tags of tag_bytes each."""
    entries = [struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)]
    data_offset = 8 + 2 + 12 * (padding_tags + 1) + 4
    for index in range(padding_tags):
        entries.append(struct.pack("<HHII", 0xD000 + index, 2, tag_bytes, data_offset + index * tag_bytes))
    padding = (b"x" * (tag_bytes - 1) + b"\0") * padding_tags
    return (b"Exif\0\0II*\0" + struct.pack("<IH", 8, padding_tags + 1) + b"".join(entries) + b"\0\0\0\0" +
            padding)


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def post(url: str, data: bytes, name: str = "image.png") -> tuple[int, float]:
    started = time.perf_counter()
    response = httpx.post(url + "/api/predict", files={"file": (name, data)}, timeout=600)
    return response.status_code, time.perf_counter() - started


def exif_bomb(url: str) -> dict:
    results = {}
    for tags in (6000, 12000):
        bomb = encoded(Image.new("RGB", (64, 48), (200, 100, 50)), "PNG", exif=exif_block(8, tags))
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: post(url, bomb), range(2)))
        results[f"{len(bomb) / 1e6:.1f} MB"] = {"statuses": [status for status, _ in answers],
                                                "seconds": [round(seconds, 3) for _, seconds in answers]}
    return results


def huge_bmp_archives(folder: Path) -> list[Path]:
    """Three archives of ten distinct 4000×4000 BMPs: 48 MB each unpacked, a few KB packed."""
    paths = []
    for part in range(3):
        path = folder / f"part{part}.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for index in range(10):
                image = Image.new("RGB", (4000, 4000), (20 * index, 80 * part, 128))
                image.paste((255, 255, 255), (100 * index, 100 * part, 100 * index + 400, 100 * part + 400))
                archive.writestr(f"{index}.bmp", encoded(image, "BMP"))
        paths.append(path)
    return paths


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def zip_upload(app: App, data_dir: Path, work: Path) -> dict:
    archives = huge_bmp_archives(work)
    server = psutil.Process(app.process.pid)
    before, peak, watching = server.memory_info().rss, [0], [True]

    def watch():
        while watching[0]:
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    started = time.perf_counter()
    table, *_ = Client(app.url, verbose=False).predict(
        "cat", [handle_file(str(path)) for path in archives], "", api_name="/upload_training_data")
    seconds = time.perf_counter() - started
    watching[0] = False
    statuses = Counter(row[1] for row in table["data"])
    return {"archives_mb": round(sum(path.stat().st_size for path in archives) / 1e6, 2),
            "unpacked_mb": 30 * 48, "statuses": dict(statuses), "seconds": round(seconds, 1),
            "rss_growth_mb": round((peak[0] - before) / 2**20), "stored_mb": round(folder_bytes(data_dir / "uploads") / 2**20, 1)}


def percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))], 3) if ordered else float("nan")


def gradio_predict(client: Client, path: str) -> float:
    started = time.perf_counter()
    client.predict(handle_file(path), api_name="/predict")
    return time.perf_counter() - started


def flood(app: App, flood_image: bytes, photo: Path, clients: int, seconds: float) -> dict:
    """clients post flood_image for seconds; meanwhile one client classifies photo on REST, one on Gradio."""
    stop = threading.Event()
    outcomes: Counter = Counter()
    rest_seconds: list[float] = []
    gradio_seconds: list[float] = []
    photo_bytes = photo.read_bytes()

    def flooding():
        with httpx.Client(timeout=600) as http:
            while not stop.is_set():
                try:
                    outcomes[http.post(app.url + "/api/predict", files={"file": ("f.png", flood_image)}).status_code] += 1
                except httpx.HTTPError as error:
                    outcomes[type(error).__name__] += 1

    def rest_probe():
        while not stop.is_set():
            status, elapsed = post(app.url, photo_bytes, photo.name)
            if status == 200:
                rest_seconds.append(elapsed)

    def gradio_probe():
        client = Client(app.url, verbose=False)
        while not stop.is_set():
            gradio_seconds.append(gradio_predict(client, str(photo)))

    threads = [threading.Thread(target=flooding, daemon=True) for _ in range(clients)]
    threads += [threading.Thread(target=rest_probe, daemon=True), threading.Thread(target=gradio_probe, daemon=True)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=600)
    return {"flood_answers": dict(outcomes), "rest_photos": len(rest_seconds), "rest_p50_s": percentile(rest_seconds, 50),
            "rest_p95_s": percentile(rest_seconds, 95), "gradio_photos": len(gradio_seconds),
            "gradio_p50_s": percentile(gradio_seconds, 50), "gradio_p95_s": percentile(gradio_seconds, 95)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.split("\n")[0])
    parser.add_argument("--flood-clients", type=int, default=50)
    parser.add_argument("--flood-seconds", type=float, default=20)
    parser.add_argument("--photo", type=Path, help="a normal photo (default: the first shared cat photo)")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    photo = arguments.photo or sorted(DEFAULT_PHOTO.iterdir())[0]

    work = Path(tempfile.mkdtemp(prefix="catdog-attacks-"))
    shutil.copytree(PROJECT_ROOT / "models", work / "models", ignore=shutil.ignore_patterns(".lock"))
    data_dir = work / "data"
    app = App({**os.environ, "CATDOG_MODELS_DIR": str(work / "models"), "CATDOG_DATA_DIR": str(data_dir),
               "CATDOG_RELOAD_SECONDS": "0", "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        bomb = encoded(Image.new("RGBA", (BOMB_SIDE, BOMB_SIDE), (120, 80, 40, 255)), "PNG")
        report = {"exif_bomb": exif_bomb(app.url), "zip_upload": zip_upload(app, data_dir, work),
                  f"flood of {BOMB_SIDE}x{BOMB_SIDE} RGBA PNGs": flood(app, bomb, photo, arguments.flood_clients,
                                                                     arguments.flood_seconds),
                  "flood of normal photos (ceiling)": flood(app, photo.read_bytes(), photo, arguments.flood_clients,
                                                            arguments.flood_seconds)}
    finally:
        app.stop()
        shutil.rmtree(work, ignore_errors=True)
    if arguments.json:
        print(json.dumps(report, indent=2))
        return
    for name, values in report.items():
        print(f"{name}:")
        for key, value in values.items():
            print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
