"""What the command-line programs share: a tqdm progress bar per stage, and errors as one sentence."""

from __future__ import annotations

import contextlib
import sys

from tqdm import tqdm

from .backbone import BackboneUnavailable
from .classifier import ModelLoadError
from .export import ExportError
from .hub import HubError

USER_ERRORS = (ValueError, HubError, BackboneUnavailable, ModelLoadError, ExportError, FileNotFoundError)


class ProgressBars:
    """A progress callback (stage, done, total) drawn as one tqdm bar per stage on stderr."""

    def __init__(self):
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if total == 0:
            return
        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="image" if stage == "embedding" else "epoch",
                                          file=sys.stderr, leave=True)
        bar.total = total
        bar.update(done - bar.n)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


@contextlib.contextmanager
def user_errors():
    """A mistake the user can fix ends the program with its sentence and exit status 2, not a traceback."""
    try:
        yield
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
