"""The model card says how a version was fine-tuned, whichever schedule, runs and options trained it."""

from __future__ import annotations

import dataclasses

import pytest

from catdog_model.card import fine_tuning_description
from catdog_model.finetune import FineTuneConfig


def described(epochs_run: int, **options) -> str:
    return fine_tuning_description({"config": dataclasses.asdict(FineTuneConfig(**options)), "epochs_run": epochs_run})


@pytest.mark.parametrize("options, epochs_run, says, does_not_say", [
    ({}, 6, ["lowered on a plateau", "for 6 epochs (at most 8)", "keeping the epoch with the lowest validation loss",
             "changed in contrast (±10 %)"],
     ["cosine", "smoothed", "mean", "runs"]),
    ({"schedule": "cosine", "epochs": 10, "average_last": 4}, 10,
     ["falling along a cosine to 0", "for 10 epochs,", "the weights the mean of those after each of the last 4 epochs"],
     ["at most", "lowest validation loss", "soup"]),
    ({"schedule": "cosine", "epochs": 5, "runs": 3}, 15,
     ["3 times from the same start", "for 15 epochs in all (5 a run)", "a uniform model soup"],
     ["at most", "lowest validation loss", "last"]),
    ({"runs": 2, "label_smoothing": 0.1}, 11,
     ["labels smoothed by 0.1", "for 11 epochs in all (at most 8 a run)",
      "keeping each run's epoch with the lowest validation loss", "the mean of the runs' weights is the model"],
     ["cosine"]),
])
def test_the_card_describes_the_schedule_the_runs_and_what_was_kept(options, epochs_run, says, does_not_say):
    description = described(epochs_run, **options)
    assert all(words in description for words in says), description
    assert not any(words in description for words in does_not_say), description


def test_a_version_fine_tuned_before_schedules_and_runs_existed_is_described_as_it_trained():
    config = dataclasses.asdict(FineTuneConfig())
    for newer in ("schedule", "average_last", "runs", "label_smoothing"):
        del config[newer]
    assert "keeping the epoch with the lowest validation loss" in fine_tuning_description({"config": config,
                                                                                          "epochs_run": 6})
