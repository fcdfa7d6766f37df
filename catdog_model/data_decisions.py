"""What people decided about photos in the training data — leave one out, or give it the other label — kept in
one small JSON file (CATDOG_DATA_DIR/data_decisions.json) keyed by each photo's content hash, so a decision
holds whichever folder, dataset or upload the photo comes from. Every change makes a new numbered revision of
the file (written atomically, under a lock: two admins at once both land); training applies the decisions and
records what they changed. No photo is ever deleted or edited."""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from pathlib import Path

from filelock import FileLock, Timeout

from . import LABELS
from .atomic import write_atomically
from .data import Dataset
from .errors import ServiceError, shown

DECISIONS_FILE = "data_decisions.json"
ACTIONS = ("exclude", "relabel")
MAX_REASON_CHARACTERS = 200
LOCK_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Decision:
    sha256: str
    action: str  # "exclude": never trained or judged on; "relabel": trained and judged on with `label`
    label: str | None  # the label a relabelled photo gets
    reason: str  # why: the data-issues finding ("label error") or a person's words
    source: str  # where the photo was seen when decided (a file name), for people reading the file
    time: float


class DataDecisions:
    """The decisions file of a data folder. Reading a missing file gives no decisions."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / DECISIONS_FILE

    def _read(self) -> dict:
        try:
            stored = json.loads(self.path.read_text())
            if not (isinstance(stored, dict) and isinstance(stored.get("revision"), int)
                    and isinstance(stored.get("decisions"), dict)):
                raise ValueError("not a decisions file")
            for sha256, fields in stored["decisions"].items():
                decision = Decision(sha256=sha256, **fields)
                if decision.action not in ACTIONS or (decision.action == "relabel" and decision.label not in LABELS):
                    raise ValueError(f"the decision about {sha256[:12]}… is not one of {', '.join(ACTIONS)} "
                                     f"with a label of {', '.join(LABELS)}")
        except FileNotFoundError:
            return {"revision": 0, "decisions": {}}
        except (OSError, ValueError, TypeError) as error:
            raise ServiceError(f"{self.path.name} cannot be read ({error}): restore it from a backup, or move it "
                               "away to start without decisions.") from None
        return stored

    def revision(self) -> int:
        return self._read()["revision"]

    def all(self) -> dict[str, Decision]:
        return {sha256: Decision(sha256=sha256, **fields) for sha256, fields in self._read()["decisions"].items()}

    def decide(self, sha256: str, action: str, label: str | None = None, reason: str = "", source: str = ""
               ) -> Decision:
        """Keep a decision about one photo (replacing an earlier one about it); a new revision of the file."""
        if action not in ACTIONS:
            raise ServiceError(f"Unknown decision {shown(action)}: use one of {', '.join(ACTIONS)}.")
        if action == "relabel" and label not in LABELS:
            raise ServiceError(f"A relabelled photo needs a label, one of {', '.join(LABELS)}; got {shown(label)}.")
        decision = Decision(sha256=sha256, action=action, label=label if action == "relabel" else None,
                            reason=str(reason)[:MAX_REASON_CHARACTERS], source=str(source)[-MAX_REASON_CHARACTERS:],
                            time=round(time.time(), 3))
        fields = {key: value for key, value in dataclasses.asdict(decision).items() if key != "sha256"}
        self._change(lambda decisions: decisions.__setitem__(sha256, fields))
        return decision

    def undo(self, sha256: str) -> bool:
        """Forget the decision about one photo; False if there was none."""
        found = []
        self._change(lambda decisions: found.append(decisions.pop(sha256, None)) or found[0] is not None)
        return found[0] is not None

    def _change(self, edit) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(self.path) + ".lock", timeout=LOCK_SECONDS):
                stored = self._read()
                decisions = stored["decisions"]
                if edit(decisions) is False:  # nothing changed: no new revision
                    return
                write_atomically(self.path, json.dumps({"revision": stored["revision"] + 1, "decisions": decisions},
                                                       indent=1, sort_keys=True).encode())
        except Timeout:
            raise ServiceError(f"{self.path.name} has been locked by another change for {LOCK_SECONDS} s: try again; "
                               f"if it stays so, remove {self.path.name}.lock (no process holds it).") from None

    def apply(self, dataset: Dataset) -> Dataset:
        """The dataset as training sees it: excluded photos left out, relabelled ones with their new label; its
        `decisions` say how many of each, by reason, and the file's revision."""
        stored = self._read()
        decisions = {sha256: Decision(sha256=sha256, **fields) for sha256, fields in stored["decisions"].items()}
        examples, excluded, relabelled = [], collections.Counter(), collections.Counter()
        for example in dataset.examples:
            decision = decisions.get(example.sha256)
            if decision is None:
                examples.append(example)
            elif decision.action == "exclude":
                excluded[decision.reason or "no reason given"] += 1
            else:
                if decision.label != example.label:
                    relabelled[decision.reason or "no reason given"] += 1
                examples.append(dataclasses.replace(example, label=decision.label))
        applied = {"revision": stored["revision"], "excluded": dict(excluded), "relabelled": dict(relabelled)}
        return dataclasses.replace(dataset, examples=examples, decisions=applied if decisions else {})


def decided(applied: dict) -> str:
    """What Dataset.decisions says, as words after a dataset's counts: "; 3 excluded, 1 relabelled (data
    decisions, revision 4)"; nothing when no decision applied."""
    if not applied:
        return ""
    excluded, relabelled = sum(applied["excluded"].values()), sum(applied["relabelled"].values())
    return f"; {excluded} excluded, {relabelled} relabelled (data decisions, revision {applied['revision']})"
