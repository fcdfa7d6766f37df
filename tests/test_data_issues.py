"""Finding the data's problems (catdog data-issues) and keeping people's decisions about them (data_decisions):
planted label errors come out on top, and training never sees an excluded photo."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import threading
from pathlib import Path

import pytest

from catdog_model.config import PROJECT_ROOT
from catdog_model.data import load_folder
from catdog_model.data_decisions import DECISIONS_FILE, DataDecisions
from catdog_model.errors import ServiceError
from tests.conftest import requires_weights
from tests.test_cli import run


def other(label: str) -> str:
    return "cat" if label == "dog" else "dog"


def planted_folder(small_photo_dir: Path, root: Path, swaps: int) -> tuple[Path, set[str]]:
    """A copy of the small photo folder with `swaps` cats filed under dogs/ and as many dogs under cats/."""
    folder = root / "planted"
    shutil.copytree(small_photo_dir, folder)
    swapped = set()
    for label in ("cats", "dogs"):
        for path in sorted((folder / label).iterdir())[:swaps]:
            target = folder / ("dogs" if label == "cats" else "cats") / f"swapped-{path.name}"
            path.rename(target)
            swapped.add(str(target.relative_to(folder)))
    return folder, swapped


@pytest.fixture
def shipped(env, tmp_path) -> dict:
    """The environment with a copy of the repository's models: production's backbone embeds the photos."""
    shutil.copytree(PROJECT_ROOT / "models", tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    return {**env, "CATDOG_DATA_DIR": str(tmp_path / "data")}


def test_planted_label_errors_come_out_at_the_top_of_the_ranking(small_photo_dir, shipped, tmp_path):
    folder, swapped = planted_folder(small_photo_dir, tmp_path, swaps=4)
    out = tmp_path / "report"
    report = json.loads(run(["catdog", "data-issues", "--data-dir", str(folder), "--out", str(out), "--top", "8",
                             "--json"], shipped).stdout)
    assert report["photos"] == 60 and report["version"] == "v5"
    with open(out / "data_issues.csv", newline="") as table:
        ranked = [row["source"] for row in csv.DictReader(table)]
    assert len(ranked) == 60
    found = swapped & set(ranked[:10])
    assert len(found) >= 6, f"swapped photos in the top 10: {sorted(found)}; the top 10: {ranked[:10]}"
    flagged = {suspect["source"] for suspect in report["suspects"] if "label" in suspect["flagged"].split()}
    assert len(flagged & swapped) >= 6 and report["label"] == len(flagged)
    assert (out / "contact_sheet.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "data_issues.json").read_text())["photos"] == 60


def test_a_photo_relabelled_by_a_person_is_no_longer_a_label_error(small_photo_dir, shipped, tmp_path):
    folder, swapped = planted_folder(small_photo_dir, tmp_path, swaps=4)
    decisions = DataDecisions(tmp_path / "data")
    for example in load_folder(folder).examples:
        if example.source in swapped:
            decisions.decide(example.sha256, "relabel", other(example.label), "label error", example.source)
    report = json.loads(run(["catdog", "data-issues", "--data-dir", str(folder), "--out", str(tmp_path / "report"),
                             "--json"], shipped).stdout)
    assert report["decisions_applied"]["relabelled"] == {"label error": 8}
    assert not {suspect["source"] for suspect in report["suspects"] if "label" in suspect["flagged"]} & swapped


def test_ranking_never_forks_a_process_pool_as_it_would_from_the_apps_threaded_server(monkeypatch):
    """cleanlab forks a multiprocessing pool by default: from the server's worker thread, a forked child can wait
    forever on a lock another thread held (seen: the Retrain tab's ranking hung)."""
    import multiprocessing

    import numpy as np

    from catdog_model.data import Example
    from catdog_model.data_issues import find_data_issues

    def no_pool(*arguments, **keywords):
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    rng = np.random.default_rng(0)
    labels = ["cat"] * 40 + ["dog"] * 40
    embeddings = rng.normal(size=(80, 16)) + np.array([[3.0 if label == "dog" else 0.0] * 16 for label in labels])
    examples = [Example(f"{index:064x}", label, f"{label}s/{index}.jpg", b"") for index, label in enumerate(labels)]
    examples[0] = dataclasses.replace(examples[0], label="dog")  # a cat's embedding filed as a dog
    ranked = find_data_issues(examples, embeddings)
    assert ranked[0].source == "cats/0.jpg" and "label" in ranked[0].flagged


def test_too_few_photos_is_a_sentence(small_photo_dir, shipped, tmp_path):
    folder = tmp_path / "few"
    for label in ("cats", "dogs"):
        (folder / label).mkdir(parents=True)
        for path in sorted((small_photo_dir / label).iterdir())[:3]:
            shutil.copy(path, folder / label / path.name)
    result = run(["catdog", "data-issues", "--data-dir", str(folder), "--out", str(tmp_path / "report")], shipped,
                 expect=2)
    assert "needs at least 10 photos of each class; these are 3 cats and 3 dogs" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("options, message", [
    (["--folds", "1"], "--folds needs at least 2: each head is fitted on the other folds\n"),
    (["--top", "-1"], "--top needs 0 or more"),
    (["--out", "pyproject.toml"], "--out pyproject.toml is a file"),
])
def test_options_that_cannot_work_are_refused_before_any_photo_is_read(options, message, env):
    result = run(["catdog", "data-issues", "--data-dir", "/nonexistent-folder", *options], env, expect=2)
    assert message in result.stderr and "Traceback" not in result.stderr


def test_decisions_are_kept_by_content_and_every_change_is_a_new_revision(tmp_path):
    decisions = DataDecisions(tmp_path)
    decisions.decide("a" * 64, "exclude", reason="outlier", source="cats/drawing.jpg")
    decisions.decide("b" * 64, "relabel", "dog", "label error", "cats/husky.jpg")
    decisions.decide("a" * 64, "relabel", "cat", "a person looked again")  # replaces the earlier one
    assert decisions.revision() == 3
    kept = decisions.all()
    assert kept["a" * 64].action == "relabel" and kept["a" * 64].label == "cat" and kept["b" * 64].label == "dog"
    assert decisions.undo("b" * 64) and not decisions.undo("b" * 64)
    assert set(decisions.all()) == {"a" * 64} and decisions.revision() == 4  # taking back nothing is no revision


def test_two_people_deciding_at_once_both_land(tmp_path):
    decisions = DataDecisions(tmp_path)
    threads = [threading.Thread(target=lambda index=index: [decisions.decide(f"{index:02d}{n:062d}", "exclude")
                                                            for n in range(10)]) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(decisions.all()) == 40 and decisions.revision() == 40


@pytest.mark.parametrize("action, label, message", [
    ("delete", None, "Unknown decision 'delete': use one of exclude, relabel"),
    ("relabel", "horse", "needs a label, one of cat, dog; got 'horse'"),
])
def test_a_decision_that_cannot_be_kept_is_refused(tmp_path, action, label, message):
    with pytest.raises(ServiceError, match=message):
        DataDecisions(tmp_path).decide("a" * 64, action, label)
    assert not (tmp_path / DECISIONS_FILE).exists()


HAND_EDITED = '{"revision": 1, "decisions": {"abc": {"action": "%s", "label": %s, "reason": "", "source": "", "time": 1}}}'


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"revision": 1, "decisions": {"abc": {"x": 1}}}',
                                     HAND_EDITED % ("Exclude", "null"), HAND_EDITED % ("relabel", '"Dog"')])
def test_a_damaged_decisions_file_is_a_sentence_and_is_left_as_it_is(tmp_path, content):
    (tmp_path / DECISIONS_FILE).write_text(content)
    with pytest.raises(ServiceError, match="data_decisions.json cannot be read .* move it away"):
        DataDecisions(tmp_path).decide("a" * 64, "exclude")
    assert (tmp_path / DECISIONS_FILE).read_text() == content


@pytest.mark.heavy
@requires_weights
def test_excluded_photos_never_reach_training_and_relabelled_ones_train_with_their_new_label(small_photo_dir, env,
                                                                                             tmp_path):
    data_dir = tmp_path / "data"
    decisions = DataDecisions(data_dir)
    examples = load_folder(small_photo_dir).examples
    for example in examples[:3]:
        decisions.decide(example.sha256, "exclude", reason="outlier", source=example.source)
    decisions.decide(examples[-1].sha256, "relabel", other(examples[-1].label), "label error", examples[-1].source)
    trained = json.loads(run(["catdog", "train", "--data-dir", str(small_photo_dir), "--seed", "3", "--epochs", "3",
                              "--image-size", "160"], {**env, "CATDOG_DATA_DIR": str(data_dir)}).stdout)
    version = Path(trained["path"])
    data = json.loads((version / "metrics.json").read_text())["data"]
    # The content hash covers every photo trained, validated and tested on, with its label.
    assert data["n_images"] == 57 and data["content_hash"] == decisions.apply(load_folder(small_photo_dir)).content_hash()
    assert data["decisions"] == {"revision": 4, "excluded": {"outlier": 3}, "relabelled": {"label error": 1}}
    assert "(revision 4) applied: 3 photo(s) left out (3 as outlier), 1 relabelled (1 as label error); dataset" in \
        (version / "README.md").read_text()
    # The card's Reproduce command cuts the photos as training did: decisions applied, the same test split.
    evaluated = json.loads(run(["catdog", "evaluate", "--data-dir", str(small_photo_dir), "--json"],
                               {**env, "CATDOG_DATA_DIR": str(data_dir)}).stdout)
    assert evaluated["decisions_applied"] == data["decisions"] and evaluated["n_images"] == data["splits"]["test"]


def test_a_retraining_from_the_app_trains_and_is_judged_with_the_decisions_applied(small_photo_dir, settings):
    from catdog_model.images import ImageLimits
    from catdog_model.retrain_data import trusted_examples, training_dataset
    from catdog_model.uploads import UploadStore

    settings = dataclasses.replace(settings, base_data_dir=small_photo_dir, trusted_data_dir=None)
    split = dict(seed=0, validation_fraction=0.1, test_fraction=0.2)
    judged_before = trusted_examples(settings, **split)
    uploads = UploadStore(settings.data_dir / "uploads", ImageLimits.from_settings(settings))
    trained_before = training_dataset(settings, uploads, judged_before).examples
    decisions = DataDecisions(settings.data_dir)
    decisions.decide(trained_before[0].sha256, "exclude", reason="outlier")
    decisions.decide(trained_before[1].sha256, "relabel", other(trained_before[1].label), "label error")
    decisions.decide(judged_before[0].sha256, "relabel", other(judged_before[0].label), "label error")

    judged = {example.sha256: example.label for example in trusted_examples(settings, **split)}
    trained = {example.sha256: example.label for example in training_dataset(settings, uploads, judged_before).examples}
    assert trained_before[0].sha256 not in trained and len(trained) == len(trained_before) - 1
    assert trained[trained_before[1].sha256] == other(trained_before[1].label)
    assert judged[judged_before[0].sha256] == other(judged_before[0].label) and len(judged) == len(judged_before)


@pytest.fixture
def reviewing(small_photo_dir, settings, tmp_path):
    """A started Service on a copy of the shipped models whose base data is the small folder with four cats filed
    as dogs and four dogs as cats; and the swapped photos' sources."""
    from catdog_model.service import Service

    folder, swapped = planted_folder(small_photo_dir, tmp_path, swaps=4)
    shutil.copytree(PROJECT_ROOT / "models", settings.models_dir, ignore=shutil.ignore_patterns(".lock"))
    service = Service(dataclasses.replace(settings, base_data_dir=folder, trusted_data_dir=None,
                                          prepare_embeddings=False)).start()
    yield service, swapped
    service.close()


def trained_labels(service) -> dict[str, str]:
    from catdog_model.retrain_data import training_dataset

    return {example.source: example.label
            for example in training_dataset(service.settings, service.curation.uploads, []).examples}


@requires_weights
def test_the_retrain_tab_lists_planted_label_errors_first_and_an_admin_can_exclude_relabel_and_undo(reviewing):
    service, swapped = reviewing
    review = service.data_review
    ranking, listed = service.review_data(top=10)
    top = [ranking.examples[photo.sha256].source for photo in listed]
    assert ranking.report["photos"] == 60 and len(top) == 10
    assert len(swapped & set(top)) >= 6, f"swapped photos among the top 10: {top}"
    captions = [caption for _, caption in review.gallery(listed)]
    assert captions[0].startswith("#1 label error · given ") and len(captions) == 10
    first, second = [suspect for suspect in ranking.suspects[:10] if suspect.source in swapped][:2]

    said = review.decide(first.sha256, "exclude")
    assert said.startswith(f"Left {first.source} out: the next retraining neither trains nor is judged on it")
    assert first.source not in trained_labels(service)
    said = review.decide(second.sha256, "relabel")
    assert f"{second.source} counts as a {other(second.given_label)} from now on" in said
    assert trained_labels(service)[second.source] == other(second.given_label)
    # The page's own list, drawn again: each decision in its photo's caption.
    captions = dict(zip(top, (caption for _, caption in review.gallery(listed))))
    assert captions[first.source].endswith("· LEFT OUT")
    assert captions[second.source].endswith(f"· NOW A {other(second.given_label).upper()}")

    # The next ranking leaves the excluded photo out of the cleanlab run but lists it after the suspects, with the
    # label it was given, so the decision can be taken back; programs read the same.
    ranking, listed = service.review_data(top=10)
    assert ranking.report["photos"] == 59 and len(listed) >= 11
    assert ranking.report["decisions_applied"]["excluded"] == {"label error (the app's data review)": 1}
    shown = {photo.sha256: caption for photo, (_, caption) in zip(listed, review.gallery(listed))}
    assert shown[first.sha256] == f"decided earlier · given {first.given_label} · LEFT OUT"
    rows = {row["sha256"]: row for row in review.rows(ranking, listed)}
    assert rows[first.sha256]["decision"] == "exclude" and rows[first.sha256]["trained_as"] is None
    assert rows[second.sha256]["given_label"] == second.given_label
    assert rows[second.sha256]["trained_as"] == other(second.given_label)

    # Relabelling again gives the photo back its own label: the decision is taken back, not stacked.
    assert review.decide(second.sha256, "relabel").startswith(f"{second.source} is back as it was given")
    assert review.decide(first.sha256, "undo").startswith(f"{first.source} is back as it was given")
    assert trained_labels(service)[first.source] == first.given_label and not DataDecisions(service.settings.data_dir).all()
    assert "no decision about" in review.decide(first.sha256.upper(), "undo")

    # A relabelled swap is no longer a label error in the next ranking.
    review.decide(first.sha256, "relabel")
    ranking, _ = service.review_data(top=10)
    assert sum(ranking.report["decisions_applied"]["relabelled"].values()) == 1
    relabelled = next(suspect for suspect in ranking.suspects if suspect.source == first.source)
    assert "label" not in relabelled.flagged and relabelled.given_label == other(first.given_label)


@requires_weights
def test_a_decision_about_a_photo_no_one_can_see_or_an_unknown_one_is_refused(reviewing):
    service, _ = reviewing
    with pytest.raises(ServiceError, match="No labelled photo has the sha256 'f{64}'"):
        service.data_review.decide("f" * 64, "exclude")
    with pytest.raises(ServiceError, match="Unknown decision 'delete': use one of exclude, relabel, undo"):
        service.data_review.decide("f" * 64, "delete")
    for top in (1000, 0, 5.5, "5", True):
        with pytest.raises(ServiceError, match="a whole number of suspects between 1 and 100, not"):
            service.review_data(top=top)
    assert not (service.settings.data_dir / DECISIONS_FILE).exists()


@requires_weights
def test_a_second_ranking_asked_for_while_one_runs_is_told_to_wait(reviewing):
    service, _ = reviewing
    started, release = threading.Event(), threading.Event()

    def slow_progress(stage, done, total):
        started.set()
        release.wait(60)

    first = threading.Thread(target=lambda: service.review_data(top=5, progress=slow_progress))
    first.start()
    try:
        assert started.wait(120)
        with pytest.raises(ServiceError, match="being found for another request: try again when it is done"):
            service.review_data(top=5)
    finally:
        release.set()
        first.join(120)
    assert len(service.review_data(top=5)[1]) == 5


@requires_weights
def test_photos_the_cache_has_not_embedded_yet_are_left_to_the_background_job(reviewing, monkeypatch, tmp_path):
    from catdog_model import data_review

    service, _ = reviewing
    monkeypatch.setattr(service.data_review, "settings",
                        dataclasses.replace(service.settings, cache_dir=tmp_path / "empty-cache"))
    started = []
    monkeypatch.setattr(service.retrainer, "prepare", lambda: started.append(1) or True)
    monkeypatch.setattr(data_review, "IN_REQUEST_EMBEDDINGS", 10)
    with pytest.raises(ServiceError, match=r"60 of the 60 labelled photos are not embedded by v\d+'s backbone yet. "
                                           r"Embedding in the background is off \(CATDOG_PREPARE_EMBEDDINGS=0\)"):
        service.review_data(top=5)
    assert started == []  # the operator switched it off
    monkeypatch.setattr(service, "settings", dataclasses.replace(service.settings, prepare_embeddings=True))
    with pytest.raises(ServiceError, match="The server embeds them in the background now"):
        service.review_data(top=5)
    assert started == [1]
