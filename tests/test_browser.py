"""A real browser (Debian's chromium, driven by Playwright) uses the three tabs of a real app process.

Set CATDOG_SCREENSHOTS_DIR=assets to refresh the README's screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.hub import LocalHub
from tests.conftest import OTHER_VERSION, WEIGHTS_DIR, free_port, requires_weights, shipped_models

CHROMIUM = Path(os.environ.get("CATDOG_CHROMIUM", "/usr/bin/chromium"))
pytestmark = [requires_weights,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)")]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, small_photo_dir, cache_dir):
    root = tmp_path_factory.mktemp("browser-app")
    shutil.copytree(shipped_models(), root / "models", ignore=shutil.ignore_patterns(".lock"))
    port = free_port()
    env = {**os.environ, "CATDOG_MODELS_DIR": str(root / "models"), "CATDOG_DATA_DIR": str(root / "data"),
           "CATDOG_CACHE_DIR": str(cache_dir), "CATDOG_EXAMPLES_DIR": str(small_photo_dir),
           "CATDOG_BASE_DATA_DIR": str(small_photo_dir),
           "GRADIO_SERVER_PORT": str(port), "CATDOG_OFFLINE": "1", "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR)}
    env.pop("CATDOG_ADMIN_TOKEN", None)
    process = subprocess.Popen([sys.executable, "app.py"], cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(app_url)
        page.get_by_role("heading", name="catdog — cats vs. dogs").wait_for(timeout=60_000)
        yield page
        browser.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("CATDOG_SCREENSHOTS_DIR")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_predict_tab_labels_an_uploaded_photo(page, small_photo_dir):
    photo = sorted((small_photo_dir / "dogs").iterdir())[-1]  # not one of the examples, whose names are on the page
    page.locator("input[type=file]").first.set_input_files(str(photo))
    page.locator(f"img[src*='{photo.name}']").first.wait_for(timeout=30_000)  # the upload has finished
    page.get_by_role("button", name="Classify", exact=True).click()
    shipped = LocalHub(shipped_models(), Settings.from_env().model_name).production()
    page.get_by_text(f"Model {shipped}").wait_for(timeout=60_000)
    assert page.get_by_test_id("label-output-value").first.inner_text().strip() == "dog"
    page.get_by_role("button", name="Show why").click()
    heat_map = page.locator(".block", has_text="Why: red pushed towards dog").locator("img")
    heat_map.wait_for(timeout=60_000)
    assert heat_map.evaluate("image => image.naturalWidth") == 288  # the photo as the model saw it, overlaid
    screenshot(page, "predict.png")


def test_retrain_tab_takes_uploaded_images(page, small_photo_dir):
    page.get_by_role("tab", name="Retrain").click()
    photos = sorted((small_photo_dir / "cats").iterdir())[-3:]
    with page.expect_file_chooser() as chooser:
        page.get_by_text("Click to Upload").locator("visible=true").first.click()
    chooser.value.set_files([str(path) for path in photos])
    # The upload has finished when the file list shows the last name (its stem and suffix are separate elements).
    page.get_by_text(photos[-1].stem).locator("visible=true").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Add to training data").click()
    added = page.get_by_text("added", exact=True).locator("visible=true")
    added.first.wait_for(timeout=60_000)
    assert added.count() == 3


def test_retrain_button_follows_progress_to_the_end_and_shows_the_gate(page):
    page.get_by_role("button", name="Retrain", exact=True).click()
    # 12 trusted photos (the base data's test split) are too few for automatic promotion: the reason is shown.
    page.get_by_text("not promoted automatically").first.wait_for(timeout=300_000)
    page.get_by_text("log_loss", exact=True).locator("visible=true").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Check status").click()
    page.get_by_text("Published v").first.wait_for(timeout=30_000)
    screenshot(page, "retrain.png")


def test_suspect_promote_and_rollback_buttons_answer(page):
    page.get_by_role("button", name="Confirm suspect images").click()
    page.get_by_text("There are no suspect images.").first.wait_for(timeout=30_000)
    shipped = LocalHub(shipped_models(), Settings.from_env().model_name).production()
    page.get_by_label("Version to promote (e.g. v3)").fill(OTHER_VERSION)
    page.get_by_role("button", name="Promote").click()
    page.get_by_text(f"Production is now {OTHER_VERSION}.").wait_for(timeout=60_000)
    page.get_by_role("button", name="Roll back").click()
    page.get_by_text(f"Rolled back: production is now {shipped}.").wait_for(timeout=60_000)


def test_metrics_tab_shows_tables_and_plots(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Metrics").click()
    page.get_by_role("button", name="Refresh").click()
    # production's accuracy, in a table
    page.get_by_text("95 % interval").locator("visible=true").first.wait_for(timeout=60_000)
    expect(page.get_by_text("in this window (day)")).to_have_count(1, timeout=30_000)  # the predictions above
    images = page.locator("img[src*='.png']")
    sources = [images.nth(index).get_attribute("src") for index in range(images.count())]
    for name in ("confusion_matrix", "roc_curve"):
        assert any(name in source for source in sources), sources
    for title in ("Requests per minute", "Mean latency (ms)", "Confidence, unfamiliarity", "Labels", "Confidence"):
        expect(page.locator(".block", has_text=title).locator("svg.marks").first).to_be_visible()
    # Each plot drew its marks (points or bars), from the database's aggregates.
    assert page.locator("svg.marks path[aria-roledescription], svg.marks path").count() > 5
    screenshot(page, "metrics.png")
