"""The Retrain tab's review of the training data: the base data and the confirmed uploads, embedded by
production's backbone (through the embedding cache retraining fills), ranked by data_issues; what an admin
decides about a photo — leave it out, give it the other label, or take that back — is kept by data_decisions,
which the next retraining, its gate and `catdog train` apply."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from . import LABELS
from .config import Settings
from .data import Example, deduplicate
from .data_decisions import DataDecisions
from .data_issues import ISSUE_NAMES, Suspect, find_data_issues, refuse_too_few_photos, summary
from .embeddings import ProgressCallback
from .errors import CatdogError, ServiceError, shown
from .images import ImageLimits, load_image
from .retrain_data import labelled_examples
from .uploads import UploadStore

THUMBNAIL_SIDE = 160
DEFAULT_TOP = 20
MAX_TOP = 100
DECISION_ACTIONS = ("exclude", "relabel", "undo")
APP_REASON = "the app's data review"


@dataclasses.dataclass(frozen=True)
class Review:
    """One ranking: its top suspects, what it covered, and the examples they are (for thumbnails)."""
    suspects: list[Suspect]
    report: dict
    examples: dict[str, Example]  # as ranked: decisions applied
    originals: dict[str, Example]  # as given in their folders and uploads


def other_label(label: str) -> str:
    return next(other for other in LABELS if other != label)


class DataReview:
    """find() ranks the labelled photos (one ranking at a time; the last one is kept, and reused while production,
    the photos and the decisions are the same); decide() keeps an admin's decision about one of them."""

    def __init__(self, settings: Settings, limits: ImageLimits, uploads: UploadStore):
        self.settings = settings
        self.limits = limits
        self.uploads = uploads
        self.decisions = DataDecisions(settings.data_dir)
        self._running = threading.Lock()
        self._last: tuple[tuple, Review] | None = None

    def find(self, version: str, folder, top: int = DEFAULT_TOP, progress: ProgressCallback | None = None
             ) -> Review:
        """The top suspects among the base data and confirmed uploads, as `version`'s export (in `folder`)
        embeds them."""
        if not 1 <= top <= MAX_TOP:
            raise ServiceError(f"Ask for between 1 and {MAX_TOP} suspects, not {shown(top)}.")
        if not self._running.acquire(blocking=False):
            raise ServiceError("Data issues are being found for another request: try again when it is done.")
        try:
            return self._find(version, folder, top, progress)
        finally:
            self._running.release()

    def _find(self, version: str, folder, top: int, progress: ProgressCallback | None) -> Review:
        from .served_backbone import ServedBackbone
        from .training import embed_examples, embedding_cache

        started = time.perf_counter()
        originals = deduplicate(labelled_examples(self.settings, self.uploads))
        dataset = self.decisions.apply(originals)
        if not dataset.examples:
            raise ServiceError("There are no labelled photos to review: set CATDOG_BASE_DATA_DIR, or upload "
                               "photos of each class above.")
        refuse_too_few_photos(dataset.examples)
        key = (version, dataset.decisions.get("revision", 0), dataset.content_hash(), top)
        if self._last and self._last[0] == key:
            return self._last[1]
        backbone = ServedBackbone(folder, self.settings.backbone_batch_size)
        embeddings, kept, rejected = embed_examples(backbone, dataset.examples, embedding_cache(self.settings),
                                                    ("original",), progress)
        ranked = find_data_issues(kept, embeddings["original"])
        report = {"version": version, **summary(ranked), "rejected": len(rejected),
                  "decisions_applied": dataset.decisions, "seconds": round(time.perf_counter() - started, 1)}
        review = Review(ranked[:top], report, {example.sha256: example for example in kept},
                        {example.sha256: example for example in originals.examples})
        self._last = (key, review)
        return review

    def last(self) -> Review | None:
        return self._last[1] if self._last else None

    def gallery(self, review: Review | None) -> list[tuple[np.ndarray, str]]:
        """A thumbnail of each suspect, captioned with its finding, its label, the heads' view, and what an
        admin decided about it since."""
        decided = self.decisions.all()
        shown_photos = []
        for suspect in review.suspects if review else []:
            try:
                thumbnail = load_image(review.examples[suspect.sha256].content, size=THUMBNAIL_SIDE,
                                       limits=self.limits, fit=True)
            except CatdogError:
                thumbnail = np.full((THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3), 255, np.uint8)
            decision = decided.get(suspect.sha256)
            now = "" if decision is None else (" · LEFT OUT" if decision.action == "exclude"
                                               else f" · NOW A {decision.label.upper()}")
            shown_photos.append((thumbnail, caption(suspect) + now))
        return shown_photos

    def decide(self, sha256: str, action: str) -> str:
        """Keep (or, with "undo", forget) an admin's decision about one photo; the sentence saying what it does.
        The photo must be one of the labelled photos, so a hash no one can see is refused."""
        if action not in DECISION_ACTIONS:
            raise ServiceError(f"Unknown decision {shown(action)}: use one of {', '.join(DECISION_ACTIONS)}.")
        review = self._last[1] if self._last else None
        example = review.originals.get(sha256) if review else None
        if example is None:
            example = next((example for example in labelled_examples(self.settings, self.uploads)
                            if example.sha256 == sha256), None)
        if example is None:
            raise ServiceError(f"No labelled photo has the sha256 {shown(sha256, 80)}: choose one from the list "
                               "of data issues (programs: a sha256 from /data_issues).")
        earlier = self.decisions.all().get(sha256)
        current = earlier.label if earlier and earlier.action == "relabel" else example.label
        if action == "undo" or (action == "relabel" and other_label(current) == example.label):
            if not self.decisions.undo(sha256):
                return f"There was no decision about {example.source} to take back."
            return (f"{example.source} is back as it was given, a {example.label} "
                    f"(revision {self.decisions.revision()}).")
        finding = next((suspect for suspect in review.suspects if suspect.sha256 == sha256), None) if review else None
        reason = f"{ISSUE_NAMES[finding.issue]} ({APP_REASON})" if finding and finding.flagged else APP_REASON
        if action == "exclude":
            self.decisions.decide(sha256, "exclude", reason=reason, source=example.source)
            return (f"Left {example.source} out: the next retraining neither trains nor is judged on it "
                    f"(revision {self.decisions.revision()}). Nothing is deleted.")
        self.decisions.decide(sha256, "relabel", other_label(current), reason=reason, source=example.source)
        return (f"{example.source} counts as a {other_label(current)} from now on: the next retraining trains "
                f"and is judged on it so (revision {self.decisions.revision()}). The file is unchanged.")


def caption(suspect: Suspect) -> str:
    heads = f"heads: {suspect.model_label} {max(suspect.p_given, 1 - suspect.p_given):.0%}"
    finding = ISSUE_NAMES[suspect.issue] if suspect.flagged else "not flagged"
    return f"#{suspect.rank} {finding} · given {suspect.given_label} · {heads}"


def review_sentence(review: Review) -> str:
    """What a ranking covered and found, for the Retrain tab."""
    report = review.report
    decisions = report["decisions_applied"]
    decided = (f" ({sum(decisions['excluded'].values())} left out and {sum(decisions['relabelled'].values())} "
               f"relabelled by earlier decisions)" if decisions else "")
    return (f"{report['photos']:,} labelled photos{decided}, embedded by {report['version']}'s backbone: "
            f"{report['flagged']} flagged — {report['label']} label errors, {report['near_duplicate']} near "
            f"duplicates, {report['outlier']} outliers. The {len(review.suspects)} likeliest are shown, the "
            "likeliest first: click one, then decide.")
