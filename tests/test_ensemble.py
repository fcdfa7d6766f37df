"""bench.ensemble counts each version's mistakes, alone and mirror-averaged, and the mean of the first k."""

from __future__ import annotations

import numpy as np

from bench.ensemble import mistakes_table


def test_versions_wrong_on_different_photos_are_right_together_and_each_is_counted_alone():
    dogs = np.array([True, True, False, False])
    answers = {  # (plain, mirrored) p(dog) of each photo
        "v1": (np.array([0.9, 0.4, 0.1, 0.2]), np.array([0.9, 0.3, 0.1, 0.9])),  # photo 2 wrong; 4 wrong mirrored
        "v2": (np.array([0.45, 0.9, 0.1, 0.1]), np.array([0.35, 0.9, 0.2, 0.1])),  # photo 1 wrong either way
        "v3": (np.array([0.1, 0.1, 0.9, 0.9]), np.array([0.1, 0.1, 0.9, 0.9])),  # wrong on every photo
    }
    rows = mistakes_table(answers, dogs)
    assert rows == [
        {"models": ["v1"], "mistakes": 1, "mirror_averaged_mistakes": 2},  # mirrored (0.35, 0.55) both wrong
        {"models": ["v2"], "mistakes": 1, "mirror_averaged_mistakes": 1},
        {"models": ["v3"], "mistakes": 4, "mirror_averaged_mistakes": 4},
        {"models": ["v1", "v2"], "mirror_averaged_mistakes": 0},  # means 0.65, 0.625, 0.125, 0.325
        {"models": ["v1", "v2", "v3"], "mirror_averaged_mistakes": 3},  # v3 drags photos 1, 2 and 4 across 0.5
    ]
