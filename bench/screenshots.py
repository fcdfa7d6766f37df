"""The README's screenshots, taken from what a fresh clone serves: the shipped models (on a private copy), the
shared photos as base data, an empty data folder, and a browser (Debian's chromium, driven by Playwright).

    python -m bench.screenshots [--out assets] [--photos ../shared/data/cats_vs_dogs_more]

Predict: a dog photo classified, then Show why. Retrain: twenty cats and twenty dogs from --photos uploaded,
a retraining followed to its verdict. Metrics: after 150 real photos and 110 pictures of noise through
POST /api/predict, refreshed.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

from catdog_model.config import PROJECT_ROOT
from bench.loadtest import App

SHARED = PROJECT_ROOT.parent / "shared"
CHROMIUM = Path(os.environ.get("CATDOG_CHROMIUM", "/usr/bin/chromium"))
RETRAINING_SECONDS = 1800


def rest_predict(url: str, data: bytes, name: str) -> None:
    boundary = "catdogscreenshots"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "api/predict", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    urllib.request.urlopen(request, timeout=60).read()


def noise(seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def photos(folder: Path, label: str, count: int, skip: int = 0) -> list[Path]:
    return sorted((folder / f"{label}s").glob("*.jpg"))[skip:skip + count]


def upload_in_browser(page, label: str, photos: list[Path]) -> None:
    """Choose the class, choose the files, click Add; the file list is emptied when the add is done."""
    page.get_by_role("radio", name=label, exact=True).check()
    with page.expect_file_chooser() as chooser:
        page.get_by_text("Click to Upload").locator("visible=true").first.click()
    chooser.value.set_files([str(path) for path in photos])
    # The upload has finished when the file list shows the last name (its stem and suffix are separate elements).
    page.get_by_text(photos[-1].stem).locator("visible=true").first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Add to training data").click()
    # The list of chosen files (not the results table, which names them too) is emptied.
    page.locator("span.stem", has_text=photos[-1].stem).first.wait_for(state="detached", timeout=120_000)


def take(url: str, out: Path, base: Path, more: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("heading", name="catdog — cats vs. dogs").wait_for(timeout=60_000)

        dog = photos(more, "dog", 1, skip=7)[0]
        page.locator("input[type=file]").first.set_input_files(str(dog))
        page.locator(f"img[src*='{dog.name}']").first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Classify", exact=True).click()
        page.get_by_text(re.compile(r"^Model v\d+, \d+ ms")).wait_for(timeout=60_000)
        page.get_by_role("button", name="Show why").click()
        page.get_by_text("red pushed towards dog, blue towards cat").first.wait_for(timeout=60_000)
        page.locator(".block", has_text="Why: red pushed").locator("img").wait_for(timeout=60_000)
        page.screenshot(path=str(out / "predict.png"), full_page=True)

        page.get_by_role("tab", name="Retrain").click()
        for label in ("cat", "dog"):
            upload_in_browser(page, label, photos(more, label, 20))
        page.get_by_role("button", name="Retrain", exact=True).click()
        verdict = page.get_by_text(" was not promoted").or_(page.get_by_text(" is in production now"))
        verdict.first.wait_for(timeout=RETRAINING_SECONDS * 1000)
        page.screenshot(path=str(out / "retrain.png"), full_page=True)

        for path in photos(base, "cat", 75) + photos(base, "dog", 75):
            rest_predict(url, path.read_bytes(), path.name)
        for seed in range(110):
            rest_predict(url, noise(seed), f"noise-{seed}.png")
        page.get_by_role("tab", name="Metrics").click()
        page.get_by_role("button", name="Refresh").click()
        expect(page.locator('[data-card="drift"] .catdog-card-value')).not_to_have_text(
            "Too little traffic", timeout=60_000)
        page.locator(".block", has_text="Confidence, unfamiliarity").locator("svg.marks path").first.wait_for(
            timeout=60_000)
        page.screenshot(path=str(out / "metrics.png"), full_page=True)
        browser.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.screenshots", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(PROJECT_ROOT / "assets"))
    parser.add_argument("--base", default=str(SHARED / "data" / "cats_vs_dogs"), help="the base data")
    parser.add_argument("--photos", default=str(SHARED / "data" / "cats_vs_dogs_more"),
                        help="photos to upload, from outside the base data")
    arguments = parser.parse_args(argv)
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="catdog-screenshots-") as folder:
        work = Path(folder)
        shutil.copytree(PROJECT_ROOT / "models", work / "models", ignore=shutil.ignore_patterns(".lock"))
        env = {**os.environ, "CATDOG_MODELS_DIR": str(work / "models"), "CATDOG_DATA_DIR": str(work / "data"),
               "CATDOG_BASE_DATA_DIR": arguments.base}
        env.pop("CATDOG_ADMIN_TOKEN", None)
        app = App(env)  # `python app.py` on a free port, once its model is loaded
        try:
            take(app.url + "/", out, Path(arguments.base), Path(arguments.photos))
        finally:
            app.stop()
    print(f"wrote {out / 'predict.png'}, {out / 'retrain.png'} and {out / 'metrics.png'}")


if __name__ == "__main__":
    main()
