"""What the Retrain tab says of a retraining, from its status: pure functions, read as sentences and tables."""

from __future__ import annotations

import pytest

from catdog_model.reports import (decisions_summary, production_line, retraining_comparison, retraining_progress,
                                  retraining_verdict)

RESULT = {"version": "v7", "production_version": "v5", "promoted": False,
          "reason": "accuracy 0.9840 vs production 0.9860 on 500 trusted held-out images: below production's",
          "candidate": {"accuracy": 0.984, "precision": 0.99, "recall": 0.978, "f1": 0.984, "roc_auc": 0.9984,
                        "log_loss": 0.0585, "n_images": 500},
          "production": {"accuracy": 0.986, "precision": 0.984, "recall": 0.988, "f1": 0.986, "roc_auc": 0.999,
                         "log_loss": 0.0433, "n_images": 500}}


def status(**changes) -> dict:
    return {"running": False, "stage": "done", "done": 0, "total": 0, "seconds_left": None, "seconds": 74,
            "error": None, "result": RESULT, **changes}


@pytest.mark.parametrize("given, line", [
    (status(stage="idle", result=None, seconds=None), "No retraining has run yet."),
    (status(running=True, stage="embedding", done=500, total=2040, seconds_left=41),
     "**Embedding** — 500 of 2,040, about 41 s left."),
    (status(running=True, stage="loading Keras", done=4), "**Loading Keras** — 4 s."),
    (status(running=True, stage="fine-tuning", done=10, total=500, seconds_left=754),
     "**Fine-tuning** — 10 of 500, at most 12 min 34 s left."),
    (status(), "The last retraining finished in 74 s."),
    (status(stage="failed", seconds=3), "The last retraining failed in 3 s."),
    (status(stage="idle", result=None, seconds=None, preparing={"done": 1200, "total": 2500}),
     "No retraining has run yet. Getting the next retraining ready in the background (embedding with "
     "production's backbone: 1,200 of 2,500 photos); a retraining started now takes over from there."),
    (status(preparing={"done": 0, "total": 0}), "The last retraining finished in 74 s. Getting the next retraining "
     "ready in the background (embedding with production's backbone); a retraining started now takes over from "
     "there."),
])
def test_the_progress_line_says_the_stage_how_far_and_the_time_left(given, line):
    assert retraining_progress(given) == line


@pytest.mark.parametrize("given, verdict", [
    (status(), "⏸️ **v7 was not promoted**: accuracy 0.9840 vs production 0.9860 on 500 trusted held-out images: "
               "below production's."),
    (status(result={**RESULT, "promoted": True, "reason": "at least production's"}),
     "✅ **v7 is in production now**: at least production's."),
    (status(stage="failed", error="Training needs at least 5 images of each class.", result=None),
     "❌ The retraining failed: Training needs at least 5 images of each class."),
    (status(running=True, stage="training", result=None), ""),
    (status(production="v7"), "✅ **v7 is in production now**, promoted by hand; the gate had said: accuracy "
                              "0.9840 vs production 0.9860 on 500 trusted held-out images: below production's."),
])
def test_the_verdict_is_one_sentence(given, verdict):
    assert retraining_verdict(given) == verdict


def test_the_comparison_names_both_versions_and_shows_percentages_and_differences():
    table = retraining_comparison(RESULT).splitlines()
    assert table[0] == "**v7 (candidate) vs v5 (production) on 500 trusted photos**"
    assert table[2] == "| | v7 (candidate) | v5 (production) | difference |"
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in table[4:]}
    assert rows["accuracy"] == ["98.4%", "98.6%", "-0.2 pt |"]
    assert rows["recall (dog)"] == ["97.8%", "98.8%", "-1.0 pt |"]
    assert rows["log loss"] == ["0.059", "0.043", "+0.015 |"]
    alone = retraining_comparison({**RESULT, "production": None})  # no production to compare with
    assert "difference" not in alone and "| accuracy | 98.4% |" in alone
    assert retraining_comparison(None) == retraining_comparison({"version": "v7", "candidate": None}) == ""


def test_production_and_the_versions_that_can_be_served_are_named_in_order():
    assert production_line("v10", {"v10", "v9", "v5"}) == (
        "In production now: **v10**. Versions that can be served (promoted or rolled back to): v5, v9, v10.")
    assert production_line("v10", None) == "In production now: **v10**."  # while a retraining is followed
    assert production_line(None, set()) == "No version is in production."


def test_corrections_are_counted_with_their_share_of_predictions():
    decisions = {"added": 2, "suspect": 1, "confirmed": 1, "labelled": 3, "discarded": 0}
    assert decisions_summary(decisions, 150) == ("**3** corrections (2.0% of predictions), 1 of them held for "
                                                 "review; 1 suspect confirmed, 3 waiting photos labelled, 0 photos "
                                                 "discarded.")
    assert decisions_summary({}, 0).startswith("**0** corrections,")


def test_each_flag_is_a_warning_heading_above_the_line():
    from catdog_model.reports import prediction_details

    assert prediction_details((), "Model **v5**, 12 ms") == "Model **v5**, 12 ms"
    lines = prediction_details(("low_confidence", "unfamiliar"), "Model **v5**, 12 ms").split("\n\n")
    assert lines[0].startswith("### ⚠️ Not sure")
    assert lines[1].startswith("### ⚠️ This does not look like a cat or a dog photo")
    assert lines[2] == "Model **v5**, 12 ms — flagged: low_confidence, unfamiliar"
