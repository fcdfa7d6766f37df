"""The `catdog` command (also `python -m catdog`), one subcommand a job, each in its own cli_* module; and what
they share: a tqdm progress bar per stage, errors as one sentence, the hub and version they work on, and options
generated from config dataclasses."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import sys

from tqdm import tqdm

from .config import Settings
from .errors import CatdogError
from .hub import ModelHub, open_hub


# subcommand: (module, what it does). Imported when run, so `catdog predict` never loads TensorFlow.
COMMANDS = {
    "serve": ("catdog_model.app", "the Gradio app and REST API on the production model"),
    "predict": ("catdog_model.cli_predict", "classify photos with the production model, one JSON line each"),
    "bulk": ("catdog_model.bulk", "classify a folder or a dataset on Ray Data into a Parquet file"),
    "train": ("catdog_model.cli_train", "train on folders of cats/ and dogs/ and publish a new version"),
    "evaluate": ("catdog_model.cli_evaluate", "a version's metrics on folders of cats/ and dogs/"),
    "export": ("catdog_model.cli_export", "publish a version again with its ONNX serving export"),
    "explain": ("catdog_model.cli_explain", "how often the heat map points at the animal"),
    "novelty": ("catdog_model.cli_novelty", "how well the unfamiliar flag separates other pictures"),
    "data-issues": ("catdog_model.cli_data_issues", "likely label errors, near duplicates and outliers in the data"),
    "bench": ("bench", "the benchmarks and load tests of a checkout: catdog bench NAME [options]"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:11} {summary}" for name, (_, summary) in COMMANDS.items())
        usage = f"usage: catdog COMMAND [options]   (catdog COMMAND --help for its options)\n\n{lines}"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: catdog has no command {argv[0]!r}.\n\n{usage}", file=sys.stderr)
            sys.exit(2)
        print(usage)
        return
    command, arguments = argv[0], argv[1:]
    if command == "bench":
        return run_benchmark(arguments)
    if command == "serve" and not {"-h", "--help"} & set(arguments):
        with user_errors():  # what cannot work is refused before Gradio's seconds of import (Service checks again)
            from .atomic import writable_folder
            from .retrain_job import RetrainConfig

            settings = Settings.from_env()
            RetrainConfig.from_settings(settings)
            writable_folder(settings.data_dir, "CATDOG_DATA_DIR")
    importlib.import_module(COMMANDS[command][0]).main(arguments)


def run_benchmark(arguments: list[str]) -> None:
    """bench/NAME.py's main, from a checkout (the package does not carry the benchmarks)."""
    import runpy

    if not arguments or arguments[0].startswith("-"):
        sys.exit("usage: catdog bench NAME [options], NAME one of bench/*.py in a checkout (loadtest, retrain, …)")
    from .config import IN_CHECKOUT, PROJECT_ROOT

    if not IN_CHECKOUT or not (PROJECT_ROOT / "bench").is_dir():
        sys.exit("catdog bench runs the benchmarks of a checkout of the repository: run it from the checkout.")
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))  # the console script of an editable install, from anywhere
    if importlib.util.find_spec(f"bench.{arguments[0]}") is None:
        sys.exit(f"catdog bench: no benchmark {arguments[0]!r} in bench/.")
    sys.argv = [f"catdog bench {arguments[0]}", *arguments[1:]]
    runpy.run_module(f"bench.{arguments[0]}", run_name="__main__")


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
