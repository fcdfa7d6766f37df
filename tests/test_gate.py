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


@pytest.mark.parametrize("candidate_log_loss, passed", [
    (0.0005, True),   # the same answers, as sure
    (0.04, True),     # a little less sure: within the margin
    (0.358, False),   # the same answers far less surely: what 50 swapped labels did on 12 trusted photos
])
def test_a_tie_in_accuracy_given_far_less_surely_is_not_promoted(candidate_log_loss, passed):
    decision = promotion_gate(1.0, 1.0, 500, **RULES, candidate_log_loss=candidate_log_loss,
                              production_log_loss=0.0005, log_loss_margin=0.05)
    assert decision.passed is passed
    if not passed:
        assert decision.reason.endswith("but log loss 0.358 vs production's 0.001: more than 0.05 worse "
                                        "(CATDOG_GATE_LOG_LOSS_MARGIN), the same answers given far less surely")


def test_without_log_losses_accuracy_alone_decides():
    assert promotion_gate(0.97, 0.97, 500, **RULES, candidate_log_loss=None, production_log_loss=0.1,
                          log_loss_margin=0.0).passed
