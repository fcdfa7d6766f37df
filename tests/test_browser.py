"""A real browser (Debian's chromium, driven by Playwright) uses the three tabs of a real app process.
(The README's screenshots come from `python -m bench.screenshots`, on a fresh clone's state.)"""

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
from bench.screenshots import noise, rest_predict, upload_in_browser
from bench.servers import wait_for
from tests.conftest import (OTHER_VERSION, RETRAINING_SECONDS, WEIGHTS_DIR, free_port, patient_client, requires_weights,
                            shipped_models)

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
    from PIL import Image

    with Image.open(photo) as original:
        shape = original.size[0] / original.size[1]
    drawn = heat_map.evaluate("image => image.naturalWidth / image.naturalHeight")
    assert abs(drawn - shape) < 0.01  # the photo's own shape, not squashed to a square
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
    warning = page.get_by_role("heading", name=re.compile("This does not look like a cat or a dog photo"))
    warning.wait_for(timeout=60_000)  # a heading, above the label, not a word in small print
    page.get_by_text(re.compile(r"flagged: .*unfamiliar")).first.wait_for(timeout=60_000)
    page.get_by_role("button", name="Show why").click()
    page.get_by_text("red pushed towards dog, blue towards cat").first.wait_for(timeout=60_000)
    expect(warning).to_be_visible()  # the heat map does not take the warning away
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
    client = patient_client(page.url.split("?")[0])
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
    rolled_back = page.get_by_text(f"Rolled back: production is now {shipped}.")
    rolled_back.wait_for(timeout=60_000)
    # A promotion that fails shows its sentence, and the old success no longer stands beside it.
    from playwright.sync_api import expect

    page.get_by_label("Version to promote (e.g. v3)").fill("v999")
    page.get_by_role("button", name="Promote").click()
    page.get_by_text(re.compile("v999")).locator("visible=true").first.wait_for(timeout=60_000)
    expect(rolled_back).to_have_count(0, timeout=30_000)


def test_data_issues_are_listed_and_a_photo_relabelled_from_the_list_stays_so_after_a_reload(page):
    from playwright.sync_api import expect

    def open_data_issues():
        page.get_by_role("tab", name="Retrain").click()
        page.get_by_text("Data issues: likely label errors").click()
        page.get_by_role("button", name="Find data issues").click()
        summary = page.get_by_text(re.compile(r"[\d,]+ labelled photos.*embedded by v\d+'s backbone"))
        summary.wait_for(timeout=120_000)
        return summary

    open_data_issues()
    page.get_by_role("button", name="Give it the other label").click()
    page.get_by_text("Choose a photo among the data issues first").first.wait_for(timeout=30_000)
    first = page.get_by_text(re.compile(r"^#1 ")).first
    given = re.search(r"given (cat|dog)", first.inner_text()).group(1)
    other = "cat" if given == "dog" else "dog"
    first.click()
    page.get_by_role("button", name="Give it the other label").click()
    page.get_by_text(re.compile(f"counts as a {other} from now on")).wait_for(timeout=30_000)
    expect(page.get_by_text(f"NOW A {other.upper()}").first).to_be_visible(timeout=30_000)
    page.reload()
    summary = open_data_issues()
    expect(summary).to_contain_text("(0 left out and 1 relabelled by earlier decisions)")
    # The relabelled photo is ranked with its new label; found again by its caption, it is given back its own.
    page.get_by_text(f"NOW A {other.upper()}").first.click()
    page.get_by_role("button", name="Take the decision back").click()
    page.get_by_text(re.compile(f"is back as it was given, a {given}")).wait_for(timeout=30_000)
    expect(page.get_by_text(f"NOW A {other.upper()}")).to_have_count(0, timeout=30_000)


def test_classify_all_answers_a_row_a_photo_logged_as_the_tabs_and_says_when_no_photo_was_chosen(
        page, small_photo_dir):
    from playwright.sync_api import expect

    client = patient_client(page.url.split("?")[0])

    def sources() -> dict:
        return client.predict("all", api_name="/metrics")["monitoring"].get("sources", {})

    page.get_by_role("tab", name="Predict").click()
    page.get_by_role("button", name="Classify all").click()
    expect(page.get_by_text("No photos were given").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Error", exact=True)).to_have_count(0)  # a warning; no output marked as failed
    before = sources().get("ui", 0)
    photos = [sorted((small_photo_dir / folder).iterdir())[1] for folder in ("cats", "dogs")]
    page.locator("input[type=file][multiple]").first.set_input_files([str(path) for path in photos])
    page.get_by_text(photos[-1].stem).locator("visible=true").first.wait_for(timeout=30_000)
    page.get_by_role("button", name="Classify all").click()
    for path, label in zip(photos, ("cat", "dog")):
        row = page.get_by_role("row").filter(has_text=path.name)
        expect(row.get_by_role("gridcell", name=label, exact=True).first).to_be_visible(timeout=60_000)
    # Logged as the Predict tab's, once the log's writer has flushed them.
    try:
        assert wait_for(lambda: sources().get("ui", 0) >= before + 2, 30)
    finally:
        client.close()


def rest_predictions(url: str, images: list[bytes]) -> None:
    """Predictions through POST /api/predict, as a program would send them."""
    for index, data in enumerate(images):
        rest_predict(url, data, f"{index}.png")


def cards(page) -> dict[str, tuple[str, str]]:
    """The Metrics tab's headline cards as the browser draws them: {name: (figure, border colour)}."""
    drawn = page.locator(".catdog-card").evaluate_all(
        """cards => Object.fromEntries(cards.map(card => [card.dataset.card,
               [card.querySelector('.catdog-card-value').innerText, getComputedStyle(card).borderTopColor]]))""")
    return {name: tuple(figure_and_colour) for name, figure_and_colour in drawn.items()}


RED, AMBER = "rgb(185, 28, 28)", "rgb(180, 83, 9)"


def test_the_metrics_tab_reads_at_a_glance_after_real_and_odd_traffic(page, small_photo_dir):
    from playwright.sync_api import expect

    url = page.url.split("?")[0]
    client = patient_client(url)
    predictions = page.locator('[data-card="predictions"] .catdog-card-value')
    drift = page.locator('[data-card="drift"] .catdog-card-value')

    def refreshed_after(sent: int, before: int) -> int:
        """Once the log's writer has stored what was sent, click Refresh and wait for the card to count it."""
        count = wait_for(lambda: (lambda now: now if now >= before + sent else None)(
            client.predict("day", api_name="/metrics")["monitoring"].get("count", 0)), 60)
        page.get_by_role("button", name="Refresh").click()
        expect(predictions).to_have_text(f"{count:,}", timeout=60_000)
        return count

    try:
        before = client.predict("day", api_name="/metrics")["monitoring"].get("count", 0)
        real = [path.read_bytes() for folder in ("cats", "dogs")
                for path in sorted((small_photo_dir / folder).iterdir())[:10]]
        rest_predictions(url, real)
        page.get_by_role("tab", name="Metrics").click()
        count = refreshed_after(len(real), before)
        # real photos, under a hundred in all: counted, and too few to test for drift (amber)
        shown = cards(page)
        assert count < 100 and shown["latency"][0].endswith(" ms")
        assert shown["drift"] == ("Too little traffic", AMBER)

        rest_predictions(url, [noise(seed) for seed in range(110)])  # pictures unlike any photo of a pet
        refreshed_after(110, count)
        expect(drift).to_have_text("Drift", timeout=60_000)
        assert cards(page)["drift"][1] == RED
        assert float(cards(page)["flagged"][0].rstrip("%")) > 50  # most of what came was flagged
        images = page.locator("img[src*='.png']")
        sources = [images.nth(index).get_attribute("src") for index in range(images.count())]
        for name in ("confusion_matrix", "roc_curve"):
            assert any(name in source for source in sources), sources
        for title in ("Requests per minute", "Mean latency (ms)", "Confidence, unfamiliarity", "Labels",
                      "Confidence"):
            expect(page.locator(".block", has_text=title).locator("svg.marks").first).to_be_visible()
        assert page.locator("svg.marks path").count() > 5  # lines and bars, from the database's aggregates
        quality = page.locator(".block", has_text="Confidence, unfamiliarity")
        for measure in ("mean confidence", "share flagged"):  # its lines' legend: drawn, not just axes
            expect(quality.get_by_text(measure).first).to_be_visible()
        # Every servable version on the same trusted photos, once the background job has measured them.
        assert wait_for(lambda: all(row["trusted_accuracy"] is not None
                                    for row in client.predict(api_name="/versions") if row["servable"]), 300)
    finally:
        client.close()
    page.get_by_role("button", name="Refresh").click()
    expect(page.get_by_text("accuracy, trusted photos", exact=True).first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("not measured", exact=True)).to_have_count(0, timeout=30_000)

    page.reload()  # what the page shows on arrival, without a click
    page.get_by_role("tab", name="Metrics").click()
    expect(drift).to_have_text("Drift", timeout=60_000)
    assert cards(page)["drift"][1] == RED
