"""The prediction log's database, in SQLAlchemy: its tables, opening and upgrading it, and the queries the log
runs. monitoring.PredictionLog imports this on its first use, so a server starts serving without SQLAlchemy.
Every database error leaves here as LogUnavailable, a sentence that names the database (password hidden)."""

from __future__ import annotations

import contextlib
import logging
import zlib
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction

from . import LABELS
from .config import DATABASE_URL_EXAMPLES
from .errors import LogUnavailable

logger = logging.getLogger(__name__)

# 1: the first SQLite log (no replica, no novelty score, no index); 2: replica, novelty, time index;
# 3: the time index covers every column the statistics read, so a window is aggregated from the index alone;
# 4: corrections (a user saying a prediction was wrong) and review decisions.
SCHEMA_VERSION = 4
OLD_INDEXES = ("predictions_by_time",)

metadata = sa.MetaData()
predictions = sa.Table(
    "predictions", metadata,
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("version", sa.String(64)),
    sa.Column("label", sa.String(8), nullable=False),
    sa.Column("p_dog", sa.Float, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("sha256", sa.String(64)),
    sa.Column("source", sa.String(8), nullable=False),
    sa.Column("flagged", sa.Integer, nullable=False, server_default="0"),
    sa.Column("novelty", sa.Float),
    sa.Column("replica", sa.String(128), nullable=False, server_default=""),
    sa.Index("predictions_for_statistics", "time", "p_dog", "latency_ms", "label", "source", "flagged", "novelty",
             "replica"),
    sa.Index("predictions_by_version_time", "version", "time"),
)
# What people said of predictions and uploads: monitoring.CORRECTION_STATUSES.
corrections = sa.Table(
    "corrections", metadata,
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("sha256", sa.String(64)),
    sa.Column("label", sa.String(8), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("replica", sa.String(128), nullable=False, server_default=""),
    sa.Index("corrections_by_time", "time", "status"),
)
schema_versions = sa.Table("catdog_schema", metadata, sa.Column("version", sa.Integer, nullable=False))


class floor(GenericFunction):  # noqa: N801 — SQL's own name
    type = sa.Integer()
    inherit_cache = True


@compiles(floor, "sqlite")
def _floor_on_sqlite(element, compiler, **kw):
    # SQLite may lack FLOOR(); every value floored here is non-negative, where CAST truncates the same way.
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"




def describe_url(url: str) -> str:
    """The database URL with its password hidden, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):  # not a URL; a port that is not a number
        return "an invalid database URL"


@contextlib.contextmanager
def reaching(url: str):
    """Turns a database error inside into LogUnavailable: the database, and the first line of its reason."""
    try:
        yield
    except SQLAlchemyError as error:
        raise LogUnavailable(f"The prediction log's database {describe_url(url)} cannot be reached "
                             f"({first_line(getattr(error, 'orig', None) or error)}).") from None


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def open_database(url: str) -> sa.Engine:
    """An engine on the database, its tables created or upgraded to SCHEMA_VERSION. Whatever stops it — the
    database, a driver that is not installed, a URL SQLAlchemy cannot read — is a LogUnavailable."""
    engine = None
    try:
        engine = open_engine(url)
        with reaching(url):
            upgrade_schema(engine)
        return engine
    except LogUnavailable:
        if engine is not None:
            engine.dispose()
        raise
    except Exception as error:  # ImportError of a driver, ValueError of a port: a sentence, not a dead writer
        if engine is not None:
            engine.dispose()
        raise LogUnavailable(f"The prediction log's database {describe_url(url)} cannot be opened "
                             f"({type(error).__name__}: {first_line(error)}).") from None


def open_engine(url: str) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        if not sqlite:
            # A database that is down answers within seconds, not the operating system's TCP time-out. The pool
            # holds the writer's connection and two refreshes at once (three connections each), without waiting.
            return sa.create_engine(parsed, pool_pre_ping=True, pool_size=4, max_overflow=4, pool_timeout=10,
                                    connect_args={"connect_timeout": 3})
    except sa.exc.ArgumentError as error:  # not a URL, or no driver for it here
        raise LogUnavailable(f"CATDOG_DATABASE_URL cannot be opened ({error}); use {DATABASE_URL_EXAMPLES}.") \
            from None
    if parsed.database:
        try:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise LogUnavailable(f"The prediction log's folder cannot be made ({error.strerror}): point "
                                 "CATDOG_DATA_DIR or CATDOG_DATABASE_URL at a folder this user can write.") from None
    # A connection per use: one kept open would go on writing to a log file that was moved or deleted.
    engine = sa.create_engine(parsed, connect_args={"timeout": 30}, poolclass=sa.pool.NullPool)

    @sa.event.listens_for(engine, "connect")
    def _write_ahead_log(connection, _record):
        connection.execute("PRAGMA journal_mode=WAL")

    return engine

def upgrade_schema(engine: sa.Engine) -> None:
    """Create the tables, or bring an older catdog's log up to SCHEMA_VERSION; replicas may start at once."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # One replica at a time creates or upgrades; the others wait, then find it done.
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(zlib.crc32(b"catdog schema"))))
        inspector = sa.inspect(connection)
        tables = set(inspector.get_table_names())
        if "catdog_schema" in tables:
            found = connection.execute(sa.select(sa.func.max(schema_versions.c.version))).scalar() or 0
        else:
            found = 1 if "predictions" in tables else 0
        if found > SCHEMA_VERSION:
            raise LogUnavailable(f"The prediction log was written by a newer catdog (schema {found}; this one "
                                 f"knows {SCHEMA_VERSION}): upgrade catdog on this replica.")
        if found == 1:
            present = {column["name"] for column in inspector.get_columns("predictions")}
            for column in ("novelty", "replica"):
                if column not in present:
                    definition = predictions.c[column]
                    ddl = sa.schema.CreateColumn(definition).compile(dialect=connection.dialect)
                    connection.execute(sa.text(f"ALTER TABLE predictions ADD COLUMN {ddl}"))
        metadata.create_all(connection, checkfirst=True)
        for index in predictions.indexes:  # create_all leaves an older table's indexes out
            index.create(connection, checkfirst=True)
        for name in OLD_INDEXES:  # what a newer index replaced only slows writes down
            connection.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))
        if found != SCHEMA_VERSION:
            connection.execute(schema_versions.delete())
            connection.execute(schema_versions.insert().values(version=SCHEMA_VERSION))
            logger.info("prediction log schema %d → %d", found, SCHEMA_VERSION)


def insert_predictions(engine: sa.Engine, rows: list[dict]) -> None:
    with engine.begin() as connection:
        connection.execute(predictions.insert(), rows)


def latest_scores(connection, version: str | None, since: float, limit: int) -> list[tuple[float, float | None]]:
    """(p_dog, novelty) of the most recent predictions of one version, newest first."""
    query = (sa.select(predictions.c.p_dog, predictions.c.novelty)
             .where(predictions.c.time >= since, predictions.c.version == version)
             .order_by(predictions.c.time.desc()).limit(limit))
    return [tuple(row) for row in connection.execute(query)]


def insert_decision(connection, row: dict) -> None:
    connection.execute(corrections.insert().values(**row))
    connection.commit()


def decision_counts(connection, since: float) -> dict[str, int]:
    return dict(connection.execute(sa.select(corrections.c.status, sa.func.count())
                                   .where(corrections.c.time >= since).group_by(corrections.c.status)).all())


def _confidence():
    return sa.case((predictions.c.p_dog >= 0.5, predictions.c.p_dog), else_=1.0 - predictions.c.p_dog)


def window_bounds(connection, since: float) -> tuple[float | None, float | None]:
    """The first and last time in the window, each read from an end of the time index."""
    table, in_window = predictions, predictions.c.time >= since
    return tuple(connection.execute(sa.select(
        sa.select(sa.func.min(table.c.time)).where(in_window).scalar_subquery(),
        sa.select(sa.func.max(table.c.time)).where(in_window).scalar_subquery())).one())


def group_sums(connection, start: float, end: float | None, step: float, confidence_edges: list[float]) -> list[tuple]:
    """Sums per (period, confidence bin, replica, source) of the rows in [start, end) (no end: to the last):
    what every count, mix and series of the statistics is added up from. Bin i holds confidences from edge i."""
    table, bins = predictions, len(confidence_edges) - 1
    confidence_bin = sa.case(*[(_confidence() < confidence_edges[index + 1], index) for index in range(bins - 1)],
                             else_=bins - 1)
    keys = (floor(table.c.time / step), confidence_bin, table.c.replica, table.c.source)
    sums = (sa.func.count(), sa.func.sum(table.c.flagged), sa.func.sum(table.c.latency_ms),
            sa.func.sum(_confidence()), sa.func.sum(table.c.novelty), sa.func.count(table.c.novelty),
            sa.func.sum(sa.case((table.c.label == LABELS[1], 1), else_=0)))
    in_range = table.c.time >= start if end is None else sa.and_(table.c.time >= start, table.c.time < end)
    return connection.execute(sa.select(*keys, *sums).where(in_range).group_by(*keys)).all()


def latency_histogram(connection, since: float, resolution_ms: float) -> dict[int, int]:
    """Rows per latency bucket of resolution_ms."""
    bucket = floor(predictions.c.latency_ms / resolution_ms)
    return dict(connection.execute(sa.select(bucket, sa.func.count()).where(predictions.c.time >= since)
                                   .group_by(bucket)).all())
