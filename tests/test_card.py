"""The model card says how a version was fine-tuned, whichever schedule, runs and options trained it."""

from __future__ import annotations

import dataclasses

import pytest

import json

from catdog_model.card import fine_tuning_description, render_model_card
from catdog_model.config import PROJECT_ROOT
from catdog_model.finetune import AUGMENTATION_REVISION, FineTuneConfig

V5 = PROJECT_ROOT / "models" / "catdog-mobilenetv2" / "v5"


def described(epochs_run: int, **options) -> str:
    return fine_tuning_description({"config": dataclasses.asdict(FineTuneConfig(**options)), "epochs_run": epochs_run,
                                    "augmentation": AUGMENTATION_REVISION})


@pytest.mark.parametrize("options, epochs_run, says, does_not_say", [
    ({}, 6, ["lowered on a plateau", "for 6 epochs (at most 8)", "keeping the epoch with the lowest validation loss",
             "changed in contrast (±10 %)"],
     ["cosine", "smoothed", "mean", "runs", "mixup", "L2-SP"]),
    ({"mixup": 0.2}, 7, ["blended with another of its batch (mixup, Beta(0.2, 0.2))", "for 7 epochs (at most 8)"],
     ["smoothed", "cosine", "L2-SP"]),
    ({"pull_to_start": 100.0}, 5, ["pulled back after each step towards where fine-tuning began, by 100.0 × the "
                                   "learning rate of their distance (L2-SP weight decay)"], ["mixup", "smoothed"]),
    ({"schedule": "cosine", "epochs": 10, "average_last": 4}, 10,
     ["falling along a cosine to 0", "for 10 epochs,", "the weights averaged over the last 4 epochs"],
     ["at most", "lowest validation loss", "soup"]),
    ({"schedule": "cosine", "epochs": 5, "runs": 3}, 15,
     ["3 times from the same start", "for 15 epochs in all (5 a run)", "a uniform model soup"],
     ["at most", "lowest validation loss", "last"]),
    ({"runs": 2, "label_smoothing": 0.1}, 11,
     ["labels smoothed by 0.1", "for 11 epochs in all (at most 8 a run)",
      "keeping each run's epoch with the lowest validation loss", "the mean of the runs' weights is the model"],
     ["cosine"]),
    ({"schedule": "cosine", "epochs": 6, "runs": 2, "average_last": 3}, 12,
     ["for 12 epochs in all (6 a run)", "each run's weights averaged over its last 3 epochs", "a uniform model soup"],
     ["at most", "lowest validation loss"]),
    ({"schedule": "cosine", "epochs": 6}, 6, ["for 6 epochs"], ["at most", "lowest validation loss", "averaged", "mean"]),
    ({"crop_margin": 0.0, "rotation": 0.0, "contrast": 0.0}, 6, ["on photos mirrored,"],
     ["cropped", "rotated", "contrast", "each drawn apart"]),
    ({"rotation": 0.0}, 6, ["randomly cropped (from 15 % larger), mirrored and changed in contrast (±10 %), each drawn"],
     ["rotated"]),
])
def test_the_card_describes_the_schedule_the_runs_and_what_was_kept(options, epochs_run, says, does_not_say):
    description = described(epochs_run, **options)
    assert all(words in description for words in says), description
    assert not any(words in description for words in does_not_say), description


def test_a_version_fine_tuned_before_schedules_runs_and_the_augmentation_fix_is_described_as_it_trained():
    """v5's metrics.json has neither the newer options nor an augmentation revision: it trained on one random draw
    per photo for mirroring, rotation and contrast, contrast only raised, one crop offset per batch."""
    tuning = json.loads((V5 / "metrics.json").read_text())["training"]["fine_tuning"]
    description = fine_tuning_description(tuning)
    assert "keeping the epoch with the lowest validation loss" in description
    assert "at one random place per batch" in description and "raised in contrast (up to 10 %)" in description
    assert "±" not in description and "each drawn apart" not in description


def test_the_rendered_card_carries_the_fine_tuning_sentence():
    config, metrics = (json.loads((V5 / name).read_text()) for name in ("config.json", "metrics.json"))
    card = render_model_card("catdog-mobilenetv2", "v5", config, metrics)
    assert fine_tuning_description(metrics["training"]["fine_tuning"]) + ": 377 s on 2 CPU cores." in card
