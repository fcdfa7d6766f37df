"""Likely problems in a labelled photo set — a wrong label, a near duplicate, an outlier — found by cleanlab's
Datalab on out-of-sample predicted probabilities (k-fold logistic heads on the photos' embeddings: seconds once
the embeddings are cached) and on the embeddings themselves; every photo ranked, the likeliest problem first,
for a person to look at. Nothing here changes the data: what a person decides is kept by data_decisions."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from . import LABELS
from .data import Example
from .errors import ServiceError

ISSUE_TYPES = ("label", "near_duplicate", "outlier")
ISSUE_NAMES = {"label": "label error", "near_duplicate": "near duplicate", "outlier": "outlier"}
MIN_PHOTOS_PER_CLASS = 10  # k-fold heads need each class in every fold
DEFAULT_FOLDS = 5
HEAD_REGULARIZATION = 0.05  # logistic regression's C on standardized embeddings, chosen on this data's folds


@dataclasses.dataclass(frozen=True)
class Suspect:
    """One photo as the data-issues run saw it."""
    rank: int  # 1: the likeliest problem
    sha256: str
    source: str
    given_label: str
    p_given: float  # the probability of its own label, from heads that never saw it
    issue: str  # the issue type ranked on (its lowest score among those flagged; among all when none is)
    score: float  # cleanlab's quality score for that issue: near 0 a likely problem, near 1 none
    flagged: tuple[str, ...]  # every issue type cleanlab flagged for this photo
    near_duplicates: tuple[str, ...] = ()  # sources of the photos it nearly duplicates

    @property
    def model_label(self) -> str:
        return self.given_label if self.p_given >= 0.5 else next(label for label in LABELS
                                                                 if label != self.given_label)

    def as_row(self) -> dict:
        row = dataclasses.asdict(self)
        row.update(flagged=" ".join(self.flagged), near_duplicates=" ".join(self.near_duplicates),
                   model_label=self.model_label, p_given=round(self.p_given, 4), score=round(self.score, 6))
        return row


def out_of_sample_probabilities(embeddings: np.ndarray, labels: np.ndarray, folds: int = DEFAULT_FOLDS,
                                seed: int = 0) -> np.ndarray:
    """(N, 2) probabilities of cat and dog, each photo's from a head fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    head = make_pipeline(StandardScaler(), LogisticRegression(C=HEAD_REGULARIZATION, max_iter=2000))
    return cross_val_predict(head, embeddings, labels, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                             method="predict_proba")


def refuse_too_few_photos(examples: list[Example], folds: int = DEFAULT_FOLDS) -> None:
    counts = {label: sum(example.label == label for example in examples) for label in LABELS}
    if min(counts.values()) < max(MIN_PHOTOS_PER_CLASS, folds):
        raise ServiceError(f"Finding data issues needs at least {max(MIN_PHOTOS_PER_CLASS, folds)} photos of "
                           f"each class; these are {counts['cat']} cats and {counts['dog']} dogs.")


def find_data_issues(examples: list[Example], embeddings: np.ndarray, folds: int = DEFAULT_FOLDS,
                     seed: int = 0) -> list[Suspect]:
    """Every example, ranked: flagged photos first, by their most severe flagged issue; then the rest by their
    lowest score. embeddings: (N, dim), in the order of examples."""
    refuse_too_few_photos(examples, folds)
    if len(embeddings) != len(examples):
        raise ValueError(f"{len(embeddings)} embeddings for {len(examples)} examples")
    from cleanlab import Datalab

    labels = np.array([LABELS.index(example.label) for example in examples])
    probabilities = out_of_sample_probabilities(embeddings, labels, folds, seed)
    # cleanlab logs and prints its progress; the caller reports what matters.
    logging.getLogger("cleanlab").setLevel(logging.WARNING)
    lab = Datalab(data={"label": [example.label for example in examples]}, label_name="label", verbosity=0)
    # One process: cleanlab would otherwise fork a pool from whatever process calls it — the app's server,
    # with its threads, where a forked child can wait forever on a lock another thread held.
    lab.find_issues(features=np.asarray(embeddings, dtype=np.float32), pred_probs=probabilities,
                    issue_types={issue: {} for issue in ISSUE_TYPES} | {"label": {"clean_learning_kwargs": {
                        "find_label_issues_kwargs": {"n_jobs": 1}}}})
    found = lab.get_issues()
    duplicate_sets = lab.get_issues("near_duplicate")["near_duplicate_sets"]
    scores = np.stack([found[f"{issue}_score"].to_numpy() for issue in ISSUE_TYPES], axis=1)
    flags = np.stack([found[f"is_{issue}_issue"].to_numpy(dtype=bool) for issue in ISSUE_TYPES], axis=1)
    # A flagged issue counts first; an unflagged photo ranks after every flagged one by its lowest score.
    ranked_on = np.where(flags.any(axis=1, keepdims=True), np.where(flags, scores, np.inf), scores).argmin(axis=1)
    key = scores[np.arange(len(examples)), ranked_on] + np.where(flags.any(axis=1), 0.0, 2.0)
    suspects = []
    for rank, index in enumerate(np.argsort(key, kind="stable"), start=1):
        example = examples[index]
        twins = tuple(examples[other].source for other in duplicate_sets.iloc[index])
        suspects.append(Suspect(
            rank=rank, sha256=example.sha256, source=example.source, given_label=example.label,
            p_given=float(probabilities[index, labels[index]]), issue=ISSUE_TYPES[ranked_on[index]],
            score=float(scores[index, ranked_on[index]]),
            flagged=tuple(issue for issue, flagged in zip(ISSUE_TYPES, flags[index]) if flagged),
            near_duplicates=twins))
    return suspects


def summary(suspects: list[Suspect]) -> dict:
    """Photos, photos flagged, and how many of each issue type."""
    return {"photos": len(suspects), "flagged": sum(bool(suspect.flagged) for suspect in suspects),
            **{issue: sum(issue in suspect.flagged for suspect in suspects) for issue in ISSUE_TYPES}}


def contact_sheet(suspects: list[Suspect], examples: dict[str, Example], columns: int = 5, tile: int = 200):
    """A PIL image: each suspect's thumbnail over its rank, issue, given label and the heads' view."""
    from PIL import Image, ImageDraw

    from .images import InvalidImage, load_image

    caption = 52
    rows = max(1, -(-len(suspects) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for position, suspect in enumerate(suspects):
        left, top = (position % columns) * tile, (position // columns) * (tile + caption)
        try:
            thumbnail = Image.fromarray(load_image(examples[suspect.sha256].content, size=tile - 8, fit=True))
            sheet.paste(thumbnail, (left + (tile - thumbnail.width) // 2, top + (tile - thumbnail.height) // 2))
        except InvalidImage as error:
            draw.text((left + 6, top + tile // 2), str(error)[:40], fill="black")
        finding = (f"{ISSUE_NAMES[suspect.issue]} ({suspect.score:.3f})" if suspect.flagged
                   else f"not flagged; {suspect.issue} score {suspect.score:.3f}")
        lines = (f"#{suspect.rank} {finding}",
                 f"given {suspect.given_label}; heads: {suspect.model_label} {max(suspect.p_given, 1 - suspect.p_given):.0%}",
                 suspect.source[-34:])
        for line_number, line in enumerate(lines):
            draw.text((left + 6, top + tile + 2 + line_number * 16), line, fill="black")
    return sheet
