"""bench.ensemble scores versions only on photos none of them trained on, the same photos for each, mirrored
left to right; and counts each version's mistakes, alone and mirror-averaged, and the mean of the first k."""

from __future__ import annotations

import numpy as np
import pytest

from bench.ensemble import decoded_at, mirrored, mistakes_table, refuse_other_data
from catdog_model.data import Example
from catdog_model.errors import ServiceError
from catdog_model.images import ImageLimits
from tests.test_images import encode, half_red_half_blue

DATA = {"content_hash": "abc", "split_seed": 42, "validation_fraction": 0.1, "test_fraction": 0.2}


@pytest.mark.parametrize("second, refused", [
    (DATA, None),
    ({**DATA, "content_hash": "other"}, "v2 trained on other photos than these folders give"),
    ({**DATA, "split_seed": 7}, "cut their data differently"),
    ({**DATA, "test_fraction": 0.3}, "cut their data differently"),
])
def test_versions_are_compared_only_on_the_photos_and_split_they_all_held_out(second, refused):
    if refused is None:
        refuse_other_data({"v1": DATA, "v2": second}, "abc")
    else:
        with pytest.raises(ServiceError, match=refused):
            refuse_other_data({"v1": DATA, "v2": second}, "abc")


def test_every_size_holds_the_same_photos_in_the_same_order_and_a_broken_one_is_left_out():
    photos = [Example("a", "cat", "cats/a.png", encode(half_red_half_blue(), "PNG")),
              Example("b", "dog", "dogs/b.txt", b"not an image"),
              Example("c", "dog", "dogs/c.png", encode(half_red_half_blue(32, 32), "PNG"))]
    images, dogs = decoded_at(photos, {16, 24}, ImageLimits())
    assert dogs.tolist() == [False, True]
    assert images[16].shape == (2, 16, 16, 3) and images[24].shape == (2, 24, 24, 3)
    with pytest.raises(ServiceError, match="No photo of this split decodes"):
        decoded_at(photos[1:2], {16}, ImageLimits())


def test_the_mirror_swaps_left_and_right_and_keeps_top_and_bottom():
    image = np.asarray(half_red_half_blue(8, 4)).copy()[np.newaxis]  # red on the left, blue on the right
    image[0, 0, :, 1] = 7  # the top row marked with a little green
    flipped = mirrored(image)
    assert flipped[0, 0, 0].tolist() == [0, 7, 255] and flipped[0, 0, -1].tolist() == [255, 7, 0]
    assert flipped[0, 3, 0].tolist() == [0, 0, 255] and flipped[0, 3, -1].tolist() == [255, 0, 0]


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
