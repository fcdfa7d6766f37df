"""The Retrain tab's review of the labelled photos — the base data, the confirmed uploads and the trusted photos
the gate judges on — embedded by production's backbone (through the embedding cache the server's background
job fills) and ranked by data_issues. What an admin decides about a photo — leave it out, give it the other
label, or take that back — is kept by data_decisions, which the next retraining, its gate and `catdog train`
apply. Photos already decided are listed after the suspects, so a decision can always be taken back here."""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
import time
from typing import Callable

import numpy as np

from . import LABELS
from .config import Settings
from .data import Example, deduplicate
from .data_decisions import Decision, DataDecisions
from .data_issues import ISSUE_NAMES, Suspect, find_data_issues, refuse_too_few_photos, summary
from .embeddings import ProgressCallback
from .errors import CatdogError, ServiceError, shown
from .images import ImageLimits, load_image
from .retrain_data import labelled_examples
from .uploads import UploadStore

THUMBNAIL_SIDE = 160
DEFAULT_TOP = 20
MAX_TOP = 100
MAX_DECIDED_SHOWN = 50
THUMBNAILS_KEPT = 400  # about 30 MB
BLANK_TILE = np.full((THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3), 255, np.uint8)
# More photos than this without an embedding, and the server's background job embeds them rather than a request.
IN_REQUEST_EMBEDDINGS = 100
DECISION_ACTIONS = ("exclude", "relabel", "undo")
APP_REASON = "the app's data review"


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Every labelled photo as one data-issues run ranked it (decisions applied), what the run covered, and the
    photos that may be shown — the first MAX_TOP and those decided — as given in their folders and uploads."""
    suspects: list[Suspect]
    report: dict
    examples: dict[str, Example]


@dataclasses.dataclass(frozen=True)
class Shown:
    """One photo in the list: its hash, and its caption before the decision about it, read when it is drawn."""
    sha256: str
    caption: str


def other_label(label: str) -> str:
    return next(other for other in LABELS if other != label)


class DataReview:
    """find() ranks the labelled photos, one ranking at a time; the last is kept and reused while production,
    the photos and the decisions are the same. decide() keeps an admin's decision about one photo.
    embed_in_background has the photos embedded outside requests and says how, in a sentence."""

    def __init__(self, settings: Settings, limits: ImageLimits, uploads: UploadStore,
                 embed_in_background: Callable[[], str]):
        self.settings = settings
        self.limits = limits
        self.uploads = uploads
        self.embed_in_background = embed_in_background
        self.decisions = DataDecisions(settings.data_dir)
        self._running = threading.Lock()
        self._last: tuple[tuple, Ranking] | None = None
        self._thumbnails: dict[str, np.ndarray] = {}

    def find(self, version: str, folder, top: int = DEFAULT_TOP, progress: ProgressCallback | None = None
             ) -> tuple[Ranking, list[Shown]]:
        """The ranking of the labelled photos as `version`'s export (in `folder`) embeds them; and what to show:
        the top suspects, then the photos decided earlier."""
        if isinstance(top, bool) or not isinstance(top, (int, float)) or top != int(top) or not 1 <= top <= MAX_TOP:
            raise ServiceError(f"Ask for a whole number of suspects between 1 and {MAX_TOP}, not {shown(top)}.")
        if importlib.util.find_spec("cleanlab") is None:
            raise ServiceError("Finding data issues needs cleanlab, which this server does not have (it was "
                               "installed with the serving requirements only): install requirements-train.txt.")
        if not self._running.acquire(blocking=False):
            raise ServiceError("Data issues are being found for another request: try again when it is done.")
        try:
            ranking = self._rank(version, folder, progress)
        finally:
            self._running.release()
        listed = ranking.suspects[:int(top)]
        in_list = {suspect.sha256 for suspect in listed}
        earlier = [sha256 for sha256 in self.decisions.all()
                   if sha256 in ranking.examples and sha256 not in in_list][:MAX_DECIDED_SHOWN]
        shown_photos = ([Shown(suspect.sha256, suspect_caption(suspect, ranking.examples[suspect.sha256].label))
                         for suspect in listed]
                        + [Shown(sha256, f"decided earlier · given {ranking.examples[sha256].label}")
                           for sha256 in earlier])
        self._keep_thumbnails(ranking, [photo.sha256 for photo in shown_photos])
        return ranking, shown_photos

    def _rank(self, version: str, folder, progress: ProgressCallback | None) -> Ranking:
        from .served_backbone import ServedBackbone
        from .training import embed_examples, embedding_cache

        started = time.perf_counter()
        originals = deduplicate(labelled_examples(self.settings, self.uploads))
        if not originals.examples:
            raise ServiceError("There are no labelled photos to review: set CATDOG_BASE_DATA_DIR, or upload "
                               "photos of each class above.")
        dataset = self.decisions.apply(originals)
        refuse_too_few_photos(dataset.examples)
        key = (version, dataset.decisions.get("revision", 0), dataset.content_hash())
        if self._last and self._last[0] == key:
            return self._last[1]
        backbone = ServedBackbone(folder, self.settings.backbone_batch_size)
        cache = embedding_cache(self.settings)
        hashes = [example.sha256 for example in dataset.examples]
        missing = len(hashes) - len(cache.get_many(backbone.spec.id, "original", hashes))
        if missing > IN_REQUEST_EMBEDDINGS:
            raise ServiceError(f"{missing:,} of the {len(hashes):,} labelled photos are not embedded by {version}'s "
                               f"backbone yet. {self.embed_in_background()}")
        embeddings, kept, rejected = embed_examples(backbone, dataset.examples, cache, ("original",), progress)
        ranked = find_data_issues(kept, embeddings["original"])
        decided = self.decisions.all()
        showable = {suspect.sha256 for suspect in ranked[:MAX_TOP]} | set(decided)
        report = {"version": version, **summary(ranked), "rejected": len(rejected),
                  "decisions_applied": dataset.decisions, "seconds": round(time.perf_counter() - started, 1)}
        ranking = Ranking(ranked, report, {example.sha256: example for example in originals.examples
                                           if example.sha256 in showable})
        self._last = (key, ranking)
        return ranking

    def _keep_thumbnails(self, ranking: Ranking, hashes: list[str]) -> None:
        if len(self._thumbnails) + len(hashes) > THUMBNAILS_KEPT:
            self._thumbnails.clear()
        for sha256 in hashes:
            if sha256 in self._thumbnails or sha256 not in ranking.examples:
                continue
            try:
                self._thumbnails[sha256] = load_image(ranking.examples[sha256].content, size=THUMBNAIL_SIDE,
                                                      limits=self.limits, fit=True)
            except CatdogError:  # a file that no longer decodes: a blank tile, still listed and decidable
                self._thumbnails[sha256] = BLANK_TILE

    def gallery(self, listed: list[Shown]) -> list[tuple[np.ndarray, str]]:
        """Each listed photo's thumbnail and caption, with what was decided about it since."""
        decided = self.decisions.all()
        return [(self._thumbnails.get(photo.sha256, BLANK_TILE), photo.caption + decision_mark(decided.get(photo.sha256)))
                for photo in listed]

    def rows(self, ranking: Ranking, listed: list[Shown]) -> list[dict]:
        """The listed photos for programs: each suspect's findings, the label as given, and the decision."""
        decided = self.decisions.all()
        position = {suspect.sha256: suspect for suspect in ranking.suspects}
        rows, columns = [], list(ranking.suspects[0].as_row()) if ranking.suspects else []
        for photo in listed:
            example, suspect = ranking.examples[photo.sha256], position.get(photo.sha256)
            # A photo left out has no findings, but the same keys: None where a suspect has a finding.
            row = suspect.as_row() if suspect else {**dict.fromkeys(columns), "sha256": photo.sha256,
                                                    "source": example.source}
            decision = decided.get(photo.sha256)
            row.update(given_label=example.label, trained_as=None if decision and decision.action == "exclude"
                       else decision.label if decision else example.label,
                       decision=decision.action if decision else None)
            rows.append(row)
        return rows

    def decide(self, sha256: str, action: str) -> str:
        """Keep (or, with "undo", forget) an admin's decision about one photo; the sentence saying what it does.
        The photo must be one of the labelled photos, so a hash no one can see is refused."""
        if action not in DECISION_ACTIONS:
            raise ServiceError(f"Unknown decision {shown(action)}: use one of {', '.join(DECISION_ACTIONS)}.")
        sha256 = sha256.strip().lower() if isinstance(sha256, str) else sha256
        ranking = self._last[1] if self._last else None
        example = ranking.examples.get(sha256) if ranking else None
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
        finding = next((suspect for suspect in ranking.suspects[:MAX_TOP] if suspect.sha256 == sha256),
                       None) if ranking else None
        reason = f"{ISSUE_NAMES[finding.issue]} ({APP_REASON})" if finding and finding.flagged else APP_REASON
        if action == "exclude":
            self.decisions.decide(sha256, "exclude", reason=reason, source=example.source)
            return (f"Left {example.source} out: the next retraining neither trains nor is judged on it "
                    f"(revision {self.decisions.revision()}). Nothing is deleted.")
        self.decisions.decide(sha256, "relabel", other_label(current), reason=reason, source=example.source)
        return (f"{example.source} counts as a {other_label(current)} from now on: the next retraining trains "
                f"and is judged on it so (revision {self.decisions.revision()}). The file is unchanged.")


def suspect_caption(suspect: Suspect, given: str) -> str:
    """"#6 label error? (not flagged) · given cat · model says dog 79%": the issue it ranks on, flagged or not,
    and the view of models fitted without it."""
    model = f"model says {suspect.model_label} {max(suspect.p_given, 1 - suspect.p_given):.0%}"
    finding = ISSUE_NAMES[suspect.issue] + ("" if suspect.flagged else "? (not flagged)")
    return f"#{suspect.rank} {finding} · given {given} · {model}"


def decision_mark(decision: Decision | None) -> str:
    if decision is None:
        return ""
    return " · LEFT OUT" if decision.action == "exclude" else f" · NOW A {decision.label.upper()}"


def review_sentence(ranking: Ranking, listed: list[Shown]) -> str:
    """What a ranking covered and found, for the Retrain tab."""
    report = ranking.report
    decisions = report["decisions_applied"]
    decided = (f" ({sum(decisions['excluded'].values())} left out and {sum(decisions['relabelled'].values())} "
               f"relabelled by earlier decisions)" if decisions else "")
    suspects = sum(photo.caption.startswith("#") for photo in listed)
    earlier = len(listed) - suspects
    return (f"{report['photos']:,} labelled photos{decided}, embedded by {report['version']}'s backbone: "
            f"{report['flagged']} flagged — {report['label']} label errors, {report['near_duplicate']} near "
            f"duplicates, {report['outlier']} outliers. The {suspects} likeliest are shown, the likeliest first"
            + (f", then {earlier} photo{'s' * (earlier != 1)} decided earlier" if earlier else "")
            + ": click one, then decide.")
