"""All settings in one dataclass, read from environment variables (documented in docs/configuration.md)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import socket
from pathlib import Path

import platformdirs

from .errors import ServiceError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# A checkout keeps models/ and data/ beside the code; an installed package keeps them in the user's data folder
# (~/.local/share/catdog on Linux), its models/ copied there from the wheel on first use (hub.open_hub).
IN_CHECKOUT = not (Path(__file__).parent / "shipped_models").is_dir()  # a folder the wheel alone carries
DEFAULT_ROOT = PROJECT_ROOT if IN_CHECKOUT else platformdirs.user_data_path("catdog")
HUB_PREFIX = "hf:"  # a setting's value naming a Hugging Face Hub repo rather than a folder
# The defaults other modules share (ImageLimits, RequestLimits, the serving model) — written here, once.
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 16
DEFAULT_DECODE_MEMORY_MB = 256
DEFAULT_REQUEST_MB = 200
DEFAULT_REQUEST_MEGAPIXELS = 6000  # 500 files (CATDOG_MAX_FILES) of 12-megapixel photos
DEFAULT_FILE_MB = 50
DEFAULT_LOW_CONFIDENCE = 0.8  # below this p(label), a prediction is flagged low_confidence


def _path(name: str, default: str | None) -> Path | None:
    value = os.environ.get(name)
    if value:
        return Path(value).expanduser().resolve()
    # Defaults are absolute, so the programs work from any working directory.
    return None if default is None else DEFAULT_ROOT / default


def _number(name: str, default: float, kind: type = float, least: float | None = None, most: float | None = None,
            unit: str = "", unbounded: str = ""):
    """A finite number from least to most (either bound may be open), or a sentence saying what to give.
    unbounded: what `inf` means where it is allowed (a check turned off); elsewhere it is refused, as nan is."""
    value = os.environ.get(name)
    if value in (None, ""):
        return kind(default)
    try:
        number = kind(value)
    except ValueError:
        raise ServiceError(f"{name}={value!r} is not {'a whole number' if kind is int else 'a number'}.") from None
    if number == math.inf and unbounded:
        return number
    if not math.isfinite(number) or (least is not None and number < least) or (most is not None and number > most):
        what = ("a whole number" if kind is int else "a finite number") + (f" of {unit}" if unit else "")
        bounds = (f"from {least:g} to {most:g}" if least is not None and most is not None
                  else f"{least:g} or more" if least is not None else f"{most:g} or less")
        also = f" (or inf: {unbounded})" if unbounded else ""
        raise ServiceError(f"{name}={value!r} is out of range: give {what}, {bounds}{also}.")
    return number


DATABASE_URL_EXAMPLES = "sqlite:///path/to/file.sqlite or postgresql+psycopg://user:password@host/database"


def _database_url() -> str | None:
    # Only its form is checked here: the database is opened on the prediction log's first use (monitoring).
    value = os.environ.get("CATDOG_DATABASE_URL") or None
    if value is not None and not re.fullmatch(r"sqlite(\+\w+)?:///\S+|postgresql(\+\w+)?://\S+", value):
        without_password = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", value)
        raise ServiceError(f"CATDOG_DATABASE_URL is not a database URL for SQLite or PostgreSQL "
                           f"({without_password!r}); use {DATABASE_URL_EXAMPLES}.")
    return value


def _choice(name: str, choices: tuple[str, ...]) -> str:
    """One of choices (the first by default)."""
    value = os.environ.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ServiceError(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return value


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return default if value == "" else value in ("1", "true", "yes", "on")


@dataclasses.dataclass(frozen=True)
class Settings:
    weights_dir: Path | None
    offline: bool  # never download the ImageNet weights
    models_dir: Path
    model_name: str
    data_dir: Path
    cache_dir: Path
    max_pixels: int
    max_upload_mb: int
    max_files: int
    max_request_mb: int  # images one upload call may store, across its files and archives
    max_request_megapixels: int  # pixels of the images one upload call may decode
    min_side: int
    decode_memory_mb: int
    backbone_batch_size: int  # images per backbone call (the head and fine-tuning have their own)
    low_confidence: float
    base_data_dir: Path | None
    base_data_hub: str | None  # CATDOG_BASE_DATA_DIR=hf:<dataset repo>: the base data is a Hub dataset
    prepare_embeddings: bool  # in the background: embed the base data with production's backbone, score versions
    examples_dir: Path | None
    admin_token: str | None
    auto_promote: bool
    hub_repo: str | None
    hub_dataset: str | None
    hub_endpoint: str | None  # None: huggingface_hub's own default
    reload_seconds: float
    noop_model: bool
    serving_threads: int
    serving_precision: str  # "fp32": model.onnx; "int8": model.int8.onnx where the version has one
    promotion_tolerance: float
    trusted_data_dir: Path | None
    gate_min_images: int
    gate_min_accuracy: float
    gate_log_loss_margin: float
    retrain_recipe: str | None  # JSON over RetrainConfig's defaults: {"training": {...}, "fine_tuning": {...}}
    suspect_confidence: float
    review_queue: bool  # keep low-confidence and unfamiliar photos for a person to label
    server_name: str
    server_port: int
    shutdown_grace_seconds: float  # on SIGTERM, how long open requests (and clients' open streams) may go on
    file_cache_minutes: float
    database_url: str | None  # None: SQLite in data_dir
    replica: str
    log_buffer_rows: int

    @classmethod
    def from_env(cls) -> "Settings":
        data_dir = _path("CATDOG_DATA_DIR", "data")
        server_port = _number("GRADIO_SERVER_PORT", 7860, int, least=1, most=65535)
        base = os.environ.get("CATDOG_BASE_DATA_DIR", "")
        base_data_hub = base.removeprefix(HUB_PREFIX).strip() if base.startswith(HUB_PREFIX) else None
        if base_data_hub == "":
            raise ServiceError("CATDOG_BASE_DATA_DIR=hf: names no dataset; write hf:<user>/<dataset>.")
        return cls(
            weights_dir=_path("CATDOG_WEIGHTS_DIR", None),
            offline=any(_flag(name, False) for name in ("CATDOG_OFFLINE", "HF_HUB_OFFLINE")),
            models_dir=_path("CATDOG_MODELS_DIR", "models"),
            model_name=os.environ.get("CATDOG_MODEL_NAME", "catdog-mobilenetv2"),
            data_dir=data_dir,
            cache_dir=_path("CATDOG_CACHE_DIR", None) or data_dir / "cache",
            max_pixels=_number("CATDOG_MAX_PIXELS", DEFAULT_MAX_PIXELS, int, least=1),
            max_upload_mb=_number("CATDOG_MAX_UPLOAD_MB", DEFAULT_FILE_MB, int, least=1),
            max_files=_number("CATDOG_MAX_FILES", 500, int, least=1),
            max_request_mb=_number("CATDOG_MAX_REQUEST_MB", DEFAULT_REQUEST_MB, int, least=1),
            max_request_megapixels=_number("CATDOG_MAX_REQUEST_MEGAPIXELS", DEFAULT_REQUEST_MEGAPIXELS, int,
                                           least=1),
            min_side=_number("CATDOG_MIN_SIDE", DEFAULT_MIN_SIDE, int, least=1),
            decode_memory_mb=_number("CATDOG_DECODE_MEMORY_MB", DEFAULT_DECODE_MEMORY_MB, int, least=1),
            backbone_batch_size=_number("CATDOG_BACKBONE_BATCH_SIZE", 32, int, least=1),
            low_confidence=_number("CATDOG_LOW_CONFIDENCE", DEFAULT_LOW_CONFIDENCE, least=0, most=1),
            base_data_dir=None if base_data_hub else _path("CATDOG_BASE_DATA_DIR", None),
            base_data_hub=base_data_hub,
            prepare_embeddings=_flag("CATDOG_PREPARE_EMBEDDINGS", True),
            examples_dir=_path("CATDOG_EXAMPLES_DIR", None) or (
                None if base_data_hub else _path("CATDOG_BASE_DATA_DIR", None)),
            admin_token=os.environ.get("CATDOG_ADMIN_TOKEN") or None,
            auto_promote=_flag("CATDOG_AUTO_PROMOTE", True),
            promotion_tolerance=_number("CATDOG_PROMOTION_TOLERANCE", 0.0, least=-1, most=1),
            hub_repo=os.environ.get("CATDOG_HUB_REPO") or None,
            hub_dataset=os.environ.get("CATDOG_HUB_DATASET") or None,
            # Read here rather than once at import, as huggingface_hub does, so one process can change it.
            hub_endpoint=os.environ.get("HF_ENDPOINT") or None,
            reload_seconds=_number("CATDOG_RELOAD_SECONDS", 60.0, least=0, unit="seconds"),
            noop_model=_flag("CATDOG_NOOP_MODEL", False),
            serving_threads=_number("CATDOG_SERVING_THREADS", 1, int, least=0),
            serving_precision=_choice("CATDOG_SERVING_PRECISION", ("fp32", "int8")),
            trusted_data_dir=_path("CATDOG_TRUSTED_DATA_DIR", None),
            gate_min_images=_number("CATDOG_GATE_MIN_IMAGES", 100, int, least=1),
            gate_min_accuracy=_number("CATDOG_GATE_MIN_ACCURACY", 0.9, least=0, most=1),
            gate_log_loss_margin=_number("CATDOG_GATE_LOG_LOSS_MARGIN", 0.05, least=0,
                                         unbounded="no log-loss check"),
            retrain_recipe=os.environ.get("CATDOG_RETRAIN_RECIPE") or None,
            suspect_confidence=_number("CATDOG_SUSPECT_CONFIDENCE", 0.9, least=0, most=1),
            review_queue=_flag("CATDOG_REVIEW_QUEUE", False),
            server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
            server_port=server_port,
            shutdown_grace_seconds=_number("CATDOG_SHUTDOWN_GRACE_SECONDS", 10.0, least=0, unit="seconds"),
            file_cache_minutes=_number("CATDOG_FILE_CACHE_MINUTES", 5.0, least=0, unit="minutes"),
            database_url=_database_url(),
            replica=os.environ.get("CATDOG_REPLICA")
            or f"{socket.gethostname()}:{server_port}",
            log_buffer_rows=_number("CATDOG_LOG_BUFFER_ROWS", 100_000, int, least=1),
        )

    def to_json(self) -> str:
        """The settings for a child process (retraining), which may not share this process's environment."""
        return json.dumps({key: str(value) if isinstance(value, Path) else value
                           for key, value in dataclasses.asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        values = json.loads(text)
        paths = {field.name for field in dataclasses.fields(cls) if "Path" in str(field.type)}
        return cls(**{key: Path(value) if key in paths and value is not None else value
                      for key, value in values.items()})

    @property
    def prediction_log_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'predictions.sqlite'}"

    @property
    def on_loopback(self) -> bool:
        """Only this machine can reach the server."""
        return is_loopback_name(self.server_name)

    @property
    def open_on_loopback(self) -> bool:
        """Mutations need no token: the server listens on loopback and CATDOG_ADMIN_TOKEN is not set."""
        return self.on_loopback and not self.admin_token


def is_loopback_name(name: str) -> bool:
    """localhost or a loopback address; a host name other than localhost may resolve to any interface."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_authority(authority: str) -> bool:
    """Whether a Host header or an origin's host[:port] names this machine: `localhost:7860`, `[::1]`, ..."""
    match = re.fullmatch(r"\[([0-9a-f:.]+)\](?::\d+)?|([^:\[\]]+)(?::\d+)?", authority.lower())
    return bool(match) and is_loopback_name(match.group(1) or match.group(2))


def option(default, help_text: str | None = None, choices: list | None = None):
    """A config field whose command-line option (catdog_model.cli.add_config_options) has this help."""
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    seed: int = option(42, "seeds the split, the head's initial weights and shuffling")
    epochs: int = option(60, "upper bound; early stopping ends sooner")
    batch_size: int = option(64, "embeddings per step of the head's training")
    learning_rate: float = option(1e-3, "the head's Adam learning rate")
    warm_start: bool = option(True, "a head on a version's backbone starts from that version's head")
    warm_learning_rate: float = option(1e-4, "the learning rate of a head that starts from a version's head")
    dropout_rate: float = option(0.3)
    hidden_units: int = option(128, "0: a linear head")
    patience: int = option(6, "epochs without a lower validation loss before stopping")
    augment: bool = option(True, "also train on mirror images")
    tta: str = option("auto", "average with the mirror image at prediction time (auto: if validation loss says so)",
                      ["auto", "on", "off"])
    validation_fraction: float = option(0.1)
    test_fraction: float = option(0.2)
    alpha: float = option(0.5, "MobileNetV2 width", [0.35, 0.5])
    # 288 rather than the weights' native 224: more detail, chosen on validation loss (docs/experiments.md).
    image_size: int = option(288, "input side in pixels")

    @property
    def views(self) -> tuple[str, ...]:
        """The views of each photo a head trained with this config needs embedded."""
        return ("original", "flipped") if self.augment or self.tta != "off" else ("original",)

    def __post_init__(self):
        if self.tta not in ("auto", "on", "off"):
            raise ServiceError(f"tta must be 'auto', 'on' or 'off', not {self.tta!r}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ServiceError("epochs and batch_size must be at least 1.")
