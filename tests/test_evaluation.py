"""Metrics on a fixture whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest

from catdog_model.evaluation import compute_metrics, save_plots

LABELS = ["cat", "cat", "cat", "dog", "dog"]
P_DOG = [0.1, 0.7, 0.2, 0.9, 0.4]  # predicted: cat, dog, cat, dog, cat


def test_metrics_match_the_hand_computed_answers():
    result = compute_metrics(LABELS, P_DOG)
    assert result["confusion_matrix"] == [[2, 1], [1, 1]]
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx(1 / 2)  # of 2 predicted dogs, 1 is a dog
    assert result["recall"] == pytest.approx(1 / 2)  # of 2 dogs, 1 is found
    assert result["f1"] == pytest.approx(1 / 2)
    # Dog scores 0.9 and 0.4 against cat scores 0.1, 0.7, 0.2: 5 of 6 pairs ranked right.
    assert result["roc_auc"] == pytest.approx(5 / 6)
    expected_log_loss = -sum(math.log(p if label == "dog" else 1 - p) for label, p in zip(LABELS, P_DOG)) / 5
    assert result["log_loss"] == pytest.approx(expected_log_loss)
    assert result["n_images"] == 5


def test_one_class_only_has_no_roc_auc_and_bad_input_is_refused():
    assert compute_metrics(["dog", "dog"], [0.8, 0.3])["roc_auc"] is None
    with pytest.raises(ValueError, match="2 labels but 1 probabilities"):
        compute_metrics(["dog", "cat"], [0.5])
    with pytest.raises(ValueError, match="No images"):
        compute_metrics([], [])


def test_plots_are_written_as_png(tmp_path):
    paths = save_plots(LABELS, P_DOG, tmp_path / "plots", title="fixture")
    assert [path.name for path in paths] == ["confusion_matrix.png", "roc_curve.png"]
    assert all(path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000 for path in paths)
