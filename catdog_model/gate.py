"""The promotion gate: may a retrained version replace production without a person deciding?

Both versions are judged on a trusted, fixed set of held-out photos (never on the uploads a candidate was
trained from, which a user could have labelled wrongly on purpose)."""

from __future__ import annotations

import dataclasses

@dataclasses.dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def promotion_gate(candidate_accuracy: float | None, production_accuracy: float | None, trusted_images: int,
                   min_images: int, tolerance: float, min_accuracy: float,
                   candidate_log_loss: float | None = None, production_log_loss: float | None = None,
                   log_loss_margin: float = float("inf")) -> GateDecision:
    """Pass when the candidate is at least as accurate as production (less tolerance) on at least min_images
    trusted photos, at least min_accuracy (so that a first model trained on poisoned uploads, with no
    production to compare against, never goes live by itself), and its log loss there is at most production's
    plus log_loss_margin: on a small trusted set accuracy ties easily, and a candidate trained on swapped labels
    can give the same answers far less surely. candidate_accuracy is None when there is no trusted set;
    production_accuracy is None when there is no production version."""
    if candidate_accuracy is None or trusted_images < min_images:
        return GateDecision(False, f"not promoted automatically: the trusted held-out set has {trusted_images} "
                                   f"images and at least {min_images} are needed (CATDOG_BASE_DATA_DIR or "
                                   "CATDOG_TRUSTED_DATA_DIR); check the candidate and promote it by hand")
    judged = f"on {trusted_images} trusted held-out images"
    if candidate_accuracy < min_accuracy:
        return GateDecision(False, f"accuracy {candidate_accuracy:.2%} {judged} is under the minimum of "
                                   f"{min_accuracy:.2%} (CATDOG_GATE_MIN_ACCURACY)")
    if production_accuracy is None:
        return GateDecision(True, f"accuracy {candidate_accuracy:.2%} {judged}; there is no production model")
    passed = candidate_accuracy >= production_accuracy - tolerance
    compared = "at least production's" if passed else "below production's"
    allowed = f" less the tolerance of {tolerance:.2%} (CATDOG_PROMOTION_TOLERANCE)" if tolerance else ""
    reason = (f"accuracy {candidate_accuracy:.2%} vs production's {production_accuracy:.2%} {judged}: "
              f"{compared}{allowed}")
    if passed and None not in (candidate_log_loss, production_log_loss) and (
            candidate_log_loss > production_log_loss + log_loss_margin):
        return GateDecision(False, f"{reason}, but log loss {candidate_log_loss:.3f} vs production's "
                                   f"{production_log_loss:.3f}: more than {log_loss_margin:g} worse "
                                   "(CATDOG_GATE_LOG_LOSS_MARGIN), the same answers given far less surely")
    return GateDecision(passed, reason)
