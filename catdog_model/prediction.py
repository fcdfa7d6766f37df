"""What one prediction says: the label, both probabilities, the version, and its flags."""

from __future__ import annotations

import dataclasses

from . import LABELS


@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str
    p_cat: float
    p_dog: float
    version: str | None
    flags: tuple[str, ...] = ()  # "low_confidence", "unfamiliar"
    novelty: float | None = None  # distance from the training photos; above the version's threshold: unfamiliar

    @property
    def confidence(self) -> float:
        return max(self.p_cat, self.p_dog)

    def as_label_dict(self) -> dict[str, float]:
        """The {label: probability} mapping that gr.Label shows."""
        return {"cat": self.p_cat, "dog": self.p_dog}


def make_prediction(p_dog: float, novelty: float | None, threshold: float | None, low_confidence: float,
                    version: str | None) -> Prediction:
    p_dog = min(max(float(p_dog), 0.0), 1.0)
    flags = []
    if max(p_dog, 1 - p_dog) < low_confidence:
        flags.append("low_confidence")
    if novelty is not None and threshold is not None and novelty > threshold:
        flags.append("unfamiliar")
    return Prediction(label=LABELS[int(p_dog >= 0.5)], p_cat=1.0 - p_dog, p_dog=p_dog, version=version,
                      flags=tuple(flags), novelty=None if novelty is None else round(float(novelty), 4))
