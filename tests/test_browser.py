"""A real browser (Debian's chromium, driven by Playwright) uses the three tabs of a real app process.

Set CATDOG_SCREENSHOTS_DIR=assets to refresh the README's screenshots."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.hub import LocalHub
from bench.servers import wait_for
from tests.conftest import OTHER_VERSION, RETRAINING_SECONDS, WEIGHTS_DIR, free_port, requires_weights, shipped_models

CHROMIUM = Path(os.environ.get("CATDOG_CHROMIUM", "/usr/bin/chromium"))
pytestmark = [pytest.mark.heavy, requires_weights,
              pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)")]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, small_photo_dir, cache_dir):
    root = tmp_path_factory.mktemp("browser-app")
    shutil.copytree(shipped_models(), root / "models", ignore=shutil.ignore_patterns(".lock"))
    port = free_port()
    env = {**os.environ, "CATDOG_MODELS_DIR": str(root / "models"), "CATDOG_DATA_DIR": str(root / "data"),
           "CATDOG_CACHE_DIR": str(cache_dir), "CATDOG_EXAMPLES_DIR": str(small_photo_dir),
           "CATDOG_BASE_DATA_DIR": str(small_photo_dir), "CATDOG_REVIEW_QUEUE": "1",
           "GRADIO_SERVER_PORT": str(port), "CATDOG_OFFLINE": "1", "CATDOG_WEIGHTS_DIR": str(WEIGHTS_DIR)}
    env.pop("CATDOG_ADMIN_TOKEN", None)
    log = root / "app.log"
    with log.open("wb") as output:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=PROJECT_ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def started() -> bool:
        assert process.poll() is None, f"the app did not start: {log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(url + "health", timeout=2)
            return True
        except OSError:
            return False

    try:
        wait_for(started, seconds=180, every=0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def browser(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    """A fresh page for each test: none depends on what an earlier one left on screen."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(app_url)
    page.get_by_role("heading", name="catdog — cats vs. dogs").wait_for(timeout=60_000)
    yield page
    page.close()


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
    # Another photo: the answers about the last one go, rather than sit beside it.
    from playwright.sync_api import expect

    cat = sorted((small_photo_dir / "cats").iterdir())[-1]
    page.locator("input[type=file]").first.set_input_files(str(cat))
    page.locator(f"img[src*='{cat.name}']").first.wait_for(timeout=30_000)
    expect(page.get_by_text(f"Model {shipped}")).to_have_count(0, timeout=30_000)
    expect(heat_map).to_have_count(0)
    expect(page.get_by_test_id("label-output-value")).to_have_count(0)


def test_a_wrong_prediction_corrected_on_the_predict_tab_waits_among_the_uploads_to_review(page, small_photo_dir):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Predict").click()
    photo = sorted((small_photo_dir / "dogs").iterdir())[-2]
    page.locator("input[type=file]").first.set_input_files(str(photo))
    page.locator(f"img[src*='{photo.name}']").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Classify", exact=True).click()
    expect(page.get_by_test_id("label-output-value").first).to_have_text("dog", timeout=60_000)
    page.get_by_role("button", name="Wrong? It's a cat").click()
    # Production was sure it is a dog: the person's word waits for an admin.
    page.get_by_text("Kept for review as a cat").wait_for(timeout=60_000)
    page.get_by_role("tab", name="Retrain").click()
    expect(page.get_by_text("uploaded as cat").first).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Discard suspect images").click()
    page.get_by_text("1 suspect image discarded.").wait_for(timeout=30_000)
    expect(page.get_by_text("uploaded as cat")).to_have_count(0, timeout=30_000)


def test_a_photo_production_finds_unfamiliar_waits_on_the_retrain_tab_until_someone_labels_it(page, tmp_path):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    noise = tmp_path / "static-noise.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(noise)
    page.get_by_role("tab", name="Predict").click()
    page.locator("input[type=file]").first.set_input_files(str(noise))
    page.locator(f"img[src*='{noise.name}']").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Classify", exact=True).click()
    page.get_by_text(re.compile(r"flagged: .*unfamiliar")).first.wait_for(timeout=60_000)
    page.reload()
    page.get_by_role("tab", name="Retrain").click()
    waiting = page.get_by_text("to label", exact=True)
    page.get_by_role("button", name="Show photos to label").click()
    expect(waiting).to_have_count(1, timeout=30_000)
    waiting.click()
    page.get_by_role("button", name="It's a dog", exact=True).click()
    page.get_by_text("Kept as a dog: it joins the next retraining.").wait_for(timeout=30_000)
    expect(waiting).to_have_count(0, timeout=30_000)
    page.reload()
    page.get_by_role("tab", name="Retrain").click()
    page.get_by_role("button", name="Show photos to label").click()
    expect(page.get_by_text("to label", exact=True)).to_have_count(0, timeout=30_000)


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


def test_the_learning_loop_from_uploads_to_a_verdict_that_survives_a_reload_then_promote_and_roll_back(
        page, small_photo_dir):
    """Twenty new cats and twenty new dogs uploaded, a retraining followed to its verdict, the verdict and the
    comparison still there after a reload, the candidate promoted by hand (the small trusted set is too small
    for the gate to do it) and rolled back, each step read on the page."""
    from playwright.sync_api import expect

    from catdog_model.data import IMAGE_SUFFIXES
    from tests.conftest import PHOTOS_DIR

    page.get_by_role("tab", name="Retrain").click()
    shipped = LocalHub(shipped_models(), Settings.from_env().model_name).production()
    expect(page.get_by_text(f"In production now: {shipped}")).to_be_visible(timeout=30_000)
    taken = {path.name for path in small_photo_dir.rglob("*")}
    for label in ("cat", "dog"):
        photos = [path for path in sorted((PHOTOS_DIR / f"{label}s").iterdir())
                  if path.suffix.lower() in IMAGE_SUFFIXES and path.name not in taken][:20]
        upload_in_browser(page, label, photos)
    added = page.get_by_text("added", exact=True).locator("visible=true")
    added.first.wait_for(timeout=30_000)
    assert added.count() >= 18  # the dogs' rows: production may hold one or two back as suspect

    page.get_by_role("button", name="Retrain", exact=True).click()
    expect(page.get_by_label("Log", exact=True)).to_have_value(re.compile("Retraining started"), timeout=60_000)
    # A second click, from another page or program, is told so; it does not start another retraining later.
    from gradio_client import Client

    client = Client(page.url.split("?")[0], verbose=False)
    try:
        with pytest.raises(Exception, match="already running"):
            client.submit(False, "", api_name="/retrain_and_follow").result(timeout=120)
    finally:
        client.close()
    verdict = page.get_by_text(" was not promoted").or_(page.get_by_text(" is in production now"))
    verdict.first.wait_for(timeout=RETRAINING_SECONDS * 1000)
    candidate = re.search(r"(v\d+) (was not promoted|is in production now)", verdict.first.inner_text()).group(1)
    comparison = page.get_by_text(f"{candidate} (candidate) vs {shipped} (production) on 12 trusted photos")
    expect(comparison).to_be_visible()
    expect(page.get_by_role("cell", name="accuracy", exact=True)).to_be_visible()
    assert "Published " + candidate in page.get_by_label("Log", exact=True).input_value()
    screenshot(page, "retrain.png")

    page.reload()
    page.get_by_role("tab", name="Retrain").click()
    expect(page.get_by_text(f"{candidate} was not promoted")).to_be_visible(timeout=60_000)
    expect(comparison).to_be_visible()

    page.get_by_label("Version to promote (e.g. v3)").fill(candidate)
    page.get_by_role("button", name="Promote").click()
    page.get_by_text(f"Production is now {candidate}.").wait_for(timeout=60_000)
    expect(page.get_by_text(f"In production now: {candidate}")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Roll back").click()
    page.get_by_text(f"Rolled back: production is now {shipped}.").wait_for(timeout=60_000)
    expect(page.get_by_text(f"In production now: {shipped}")).to_be_visible(timeout=30_000)
    health = json.loads(urllib.request.urlopen(page.url.split("?")[0] + "health").read())
    assert health["model_version"] == shipped


def test_suspect_promote_and_rollback_buttons_answer(page):
    page.get_by_role("tab", name="Retrain").click()
    page.get_by_role("button", name="Discard suspect images").click()
    page.get_by_text(" discarded.").or_(page.get_by_text("There are no suspect images.")).first.wait_for(
        timeout=30_000)
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
