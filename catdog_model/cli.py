"""What the command-line programs share: a tqdm progress bar per stage, errors as one sentence, the hub and
version they work on, and options generated from config dataclasses."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys

from tqdm import tqdm

from .config import Settings
from .errors import CatdogError
from .hub import ModelHub, open_hub


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
    except CatdogError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def open_version(revision: str) -> tuple[Settings, ModelHub, str]:
    """This environment's settings, its model hub, and the version that revision (production, v3) names there."""
    settings = Settings.from_env()
    hub = open_hub(settings)
    return settings, hub, hub.resolve(revision)


def add_config_options(parser: argparse.ArgumentParser, config_class, prefix: str = "") -> None:
    """One --option per field of a config dataclass, with the field's default, and its help and choices from
    the field's metadata: each option is written once, in the dataclass."""
    types = {"int": int, "float": float, "str": str}
    for field in dataclasses.fields(config_class):
        name = f"--{prefix}{field.name}".replace("_", "-")
        help_text = field.metadata.get("help")
        if field.type in ("bool", bool):
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        else:
            parser.add_argument(name, type=types.get(field.type, field.type), default=field.default,
                                choices=field.metadata.get("choices"), help=help_text)


def config_from_options(arguments: argparse.Namespace, config_class, prefix: str = ""):
    """The config dataclass that add_config_options' options describe."""
    prefix = prefix.replace("-", "_")
    return config_class(**{field.name: getattr(arguments, prefix + field.name)
                           for field in dataclasses.fields(config_class)})
