"""The promotion gate, with set accuracies: what passes, what does not, and why."""

from __future__ import annotations

import pytest

from catdog_model.gate import promotion_gate

RULES = {"min_images": 100, "tolerance": 0.01, "min_accuracy": 0.9}


@pytest.mark.parametrize("candidate, production, passed", [
    (0.98, 0.97, True),    # better
    (0.97, 0.97, True),    # equal
    (0.965, 0.97, True),   # worse, within the tolerance
    (0.95, 0.97, False),   # worse than the tolerance allows
    (0.20, 0.97, False),   # a poisoned candidate
    (0.93, None, True),    # no production: the minimum accuracy alone decides
    (0.85, None, False),
])
def test_the_gate_compares_with_production_less_the_tolerance(candidate, production, passed):
    decision = promotion_gate(candidate, production, 500, **RULES)
    assert decision.passed is passed
    assert "500 trusted held-out images" in decision.reason


def test_the_reason_says_both_accuracies_as_the_comparison_table_does():
    assert promotion_gate(0.984, 0.986, 500, **{**RULES, "tolerance": 0.0}).reason == (
        "accuracy 98.40% vs production's 98.60% on 500 trusted held-out images: below production's")
    assert promotion_gate(0.965, 0.97, 500, **RULES).reason == (
        "accuracy 96.50% vs production's 97.00% on 500 trusted held-out images: at least production's less the "
        "tolerance of 1.00% (CATDOG_PROMOTION_TOLERANCE)")


def test_the_tolerance_is_used():
    assert not promotion_gate(0.95, 0.97, 500, **{**RULES, "tolerance": 0.0}).passed
    assert promotion_gate(0.95, 0.97, 500, **{**RULES, "tolerance": 0.05}).passed


def test_without_enough_trusted_images_nothing_is_promoted_automatically():
    for candidate, images in ((None, 0), (1.0, 99)):
        decision = promotion_gate(candidate, 0.5, images, **RULES)
        assert not decision.passed
        assert f"has {images} images and at least 100 are needed" in decision.reason
