"""The prediction log: every prediction in one database (SQLite by default, PostgreSQL for replicas), written
off the request path, and its statistics computed by the database over a window.

A database that is down or slow never fails or slows a prediction: rows wait in a bounded buffer, the writer
retries, and rows that did not fit are counted (`dropped_rows`) and shown."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time
import zlib
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction

from . import LABELS
from .errors import ServiceError, shown

logger = logging.getLogger(__name__)

# 1: the first SQLite log (no replica, no novelty score, no index); 2: replica, novelty, time index;
# 3: the time index covers every column the statistics read, so a window is aggregated from the index alone;
# 4: corrections (a user saying a prediction was wrong) and review decisions.
SCHEMA_VERSION = 4
OLD_INDEXES = ("predictions_by_time",)
WINDOWS = {"hour": 3600.0, "day": 86400.0, "all": None}
SOURCES = ("ui", "api", "rest")
CONFIDENCE_BINS = 10
CONFIDENCE_EDGES = [round(0.5 + index * 0.5 / CONFIDENCE_BINS, 2) for index in range(CONFIDENCE_BINS + 1)]
MAX_SERIES_POINTS = 300
LATENCY_RESOLUTION_MS = 0.1

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
# What people said of predictions and uploads: a correction ("it's a cat", from the Predict tab) stored as an
# upload ("added", or "suspect" when production was sure of the other class), and each suspect an admin
# "confirmed" or "discarded".
corrections = sa.Table(
    "corrections", metadata,
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("sha256", sa.String(64)),
    sa.Column("label", sa.String(8), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("replica", sa.String(128), nullable=False, server_default=""),
    sa.Index("corrections_by_time", "time", "status"),
)
CORRECTION_STATUSES = ("added", "suspect", "confirmed", "labelled", "discarded")
schema_versions = sa.Table("catdog_schema", metadata, sa.Column("version", sa.Integer, nullable=False))


class floor(GenericFunction):  # noqa: N801 — SQL's own name
    type = sa.Integer()
    inherit_cache = True


@compiles(floor, "sqlite")
def _floor_on_sqlite(element, compiler, **kw):
    # SQLite may lack FLOOR(); every value floored here is non-negative, where CAST truncates the same way.
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"


class LogUnavailable(ServiceError):
    """The prediction log's database cannot be reached or read."""


@dataclasses.dataclass(frozen=True)
class LoggedPrediction:
    time: float
    version: str | None
    label: str
    p_dog: float
    latency_ms: float
    sha256: str | None
    source: str  # "ui", "api" (Gradio) or "rest" (/api/predict)
    flagged: bool = False
    novelty: float | None = None
    replica: str = ""


def describe_url(url: str) -> str:
    """The database URL with its password hidden, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "an invalid database URL"


def open_engine(url: str) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ServiceError(f"CATDOG_DATABASE_URL is not a database URL ({url!r}); use sqlite:///path/to/file.sqlite "
                           "or postgresql+psycopg://user:password@host/database.") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # A connection per use: one kept open would go on writing to a log file that was moved or deleted.
        engine = sa.create_engine(parsed, connect_args={"timeout": 30}, poolclass=sa.pool.NullPool)

        @sa.event.listens_for(engine, "connect")
        def _write_ahead_log(connection, _record):
            connection.execute("PRAGMA journal_mode=WAL")

        return engine
    # A database that is down answers within seconds, not the operating system's TCP time-out. The pool holds
    # the writer's connection and two refreshes at once (three connections each), without waiting.
    return sa.create_engine(parsed, pool_pre_ping=True, pool_size=4, max_overflow=4, pool_timeout=10,
                            connect_args={"connect_timeout": 3})


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


_CLOSE = object()  # put in the buffer by close(): the writer wakes, and stops once its rows are written


class PredictionLog:
    """Rows go into a bounded buffer; one writer thread inserts them in batches, and keeps a failed batch to
    retry while the database is unreachable. Reading happens in the database, over a window of time."""

    def __init__(self, url: str, replica: str = "", buffer_rows: int = 100_000, batch_seconds: float = 0.2,
                 retry_seconds: float = 2.0, batch_rows: int = 1000):
        self.url = url
        self.replica = replica
        self.batch_seconds = batch_seconds
        self.retry_seconds = retry_seconds
        self.batch_rows = batch_rows
        self.engine = open_engine(url)
        self._buffer: queue.Queue = queue.Queue(maxsize=buffer_rows)
        self._queued_rows = 0  # rows in the buffer (which holds flush and close markers too)
        self._held_rows = 0  # taken from the buffer by the writer, not yet written
        self.dropped_rows = 0
        self.last_error: str | None = None
        self.schema_ready = threading.Event()
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._write_forever, name="prediction-log", daemon=True)
        self._writer.start()
        # A replica starts and serves even while the database is down; the writer keeps trying.
        self.schema_ready.wait(5)

    def _unreachable(self, error: Exception) -> str:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        return f"The prediction log's database {describe_url(self.url)} cannot be reached ({reason})."

    def record(self, prediction: LoggedPrediction) -> None:
        """Never blocks: a full buffer (the database has been down a while), or a closed log, drops the row and
        counts it."""
        if self._closing.is_set():
            self.dropped_rows += 1
            return
        try:
            self._buffer.put_nowait(dataclasses.replace(prediction, replica=prediction.replica or self.replica))
            self._queued_rows += 1
        except queue.Full:
            self.dropped_rows += 1

    @property
    def pending_rows(self) -> int:
        """Rows waiting to be written: in the buffer, and the batch the writer holds (kept while the database is
        down)."""
        return self._queued_rows + self._held_rows

    def health(self) -> dict:
        """What the writer knows, even while the database is down: rows waiting, rows lost, the last error."""
        return {"pending_rows": self.pending_rows, "dropped_rows": self.dropped_rows, "write_error": self.last_error}

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row recorded so far is written; False if the database did not take them in time (or
        the log is closed)."""
        if not self._writer.is_alive():
            return self.pending_rows == 0
        done = threading.Event()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._buffer.put(done, timeout=0.1)
                break
            except queue.Full:
                continue
        return done.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 10.0) -> None:
        """Write the rows recorded so far (for at most timeout seconds), then stop the writer thread. Rows recorded
        afterwards are dropped and counted."""
        if self._closing.is_set():
            return
        if not self.flush(timeout):
            logger.warning("%d prediction-log rows could not be written before closing: %s", self.pending_rows,
                           self.last_error)
        self._closing.set()
        try:
            self._buffer.put_nowait(_CLOSE)  # wakes a writer waiting for rows
        except queue.Full:
            pass  # a writer with a full buffer is retrying, and sees _closing after the attempt
        self._writer.join(timeout)
        self.engine.dispose()

    def _write_forever(self) -> None:
        while not self.schema_ready.is_set():
            if self._closing.is_set():
                return
            try:
                upgrade_schema(self.engine)
                self.schema_ready.set()
            except (SQLAlchemyError, LogUnavailable) as error:
                self._failed(error)
        rows: list[dict] = []
        events: list[threading.Event] = []
        while not (self._closing.is_set() and not rows):
            if not rows and not events:
                self._take(rows, events, self._buffer.get())
                time.sleep(self.batch_seconds)
            while len(rows) < self.batch_rows:  # the rows held here stay bounded while the database is down
                try:
                    self._take(rows, events, self._buffer.get_nowait())
                except queue.Empty:
                    break
            try:
                if rows:
                    with self.engine.begin() as connection:
                        connection.execute(predictions.insert(), rows)
                self.last_error = None
            except SQLAlchemyError as error:
                self._failed(error)
                if self._closing.is_set():
                    return  # close() has waited its time; these rows are counted in its warning
                continue
            rows, self._held_rows = [], 0
            for event in events:
                event.set()
            events = []

    def _failed(self, error: Exception) -> None:
        message = str(error) if isinstance(error, LogUnavailable) else self._unreachable(error)
        if message != self.last_error:
            logger.warning("%s %d rows wait in the buffer.", message, self.pending_rows)
        self.last_error = message
        time.sleep(self.retry_seconds)

    def _take(self, rows: list, events: list, item) -> None:
        if item is _CLOSE:
            return
        if isinstance(item, threading.Event):
            events.append(item)
        else:
            rows.append({**dataclasses.asdict(item), "flagged": int(item.flagged)})
            self._held_rows += 1  # before it leaves the count of queued rows: pending_rows never misses it
            self._queued_rows -= 1

    # Reading: aggregates over a window, computed by the database; and the few rows people write (decisions).

    def _connected(self, work):
        """work(connection) on a connection of its own; LogUnavailable, a sentence, when the database is not there."""
        if not self.schema_ready.is_set():
            raise LogUnavailable((self.last_error or "The prediction log's database is not ready yet.")
                                 + " Predictions go on; their rows wait in a buffer.")
        try:
            with self.engine.connect() as connection:
                return work(connection)
        except SQLAlchemyError as error:
            raise LogUnavailable(self._unreachable(error) + " Predictions go on; their rows wait in a buffer "
                                 "and are written when it is back.") from None

    def rows(self, since: float = 0.0, limit: int = 10_000) -> list[LoggedPrediction]:
        """The most recent rows (at most `limit`), oldest first."""
        query = (sa.select(*[predictions.c[field.name] for field in dataclasses.fields(LoggedPrediction)])
                 .where(predictions.c.time >= since).order_by(predictions.c.time.desc()).limit(limit))
        found = self._connected(lambda connection: connection.execute(query).all())
        return [LoggedPrediction(**{**row._asdict(), "flagged": bool(row.flagged)}) for row in reversed(found)]

    def recent_values(self, version: str | None, since: float, limit: int = 5000) -> dict[str, list[float]]:
        """p(dog) and novelty scores of the most recent predictions of one version, for the drift test."""
        query = (sa.select(predictions.c.p_dog, predictions.c.novelty)
                 .where(predictions.c.time >= since, predictions.c.version == version)
                 .order_by(predictions.c.time.desc()).limit(limit))
        found = self._connected(lambda connection: connection.execute(query).all())
        return {"p_dog": [row.p_dog for row in found],
                "novelty": [row.novelty for row in found if row.novelty is not None]}

    def record_decision(self, sha256: str, label: str, status: str) -> None:
        """Keep a correction or a review decision (CORRECTION_STATUSES); written at once, as people make few."""
        row = {"time": time.time(), "sha256": sha256, "label": label, "status": status, "replica": self.replica}
        self._connected(lambda connection: (connection.execute(corrections.insert().values(**row)),
                                            connection.commit()))

    def decisions(self, window: str = "all", now: float | None = None) -> dict[str, int]:
        """How many corrections and review decisions of each status the window holds, across replicas."""
        since = window_start(window, now)
        counted = dict(self._connected(lambda connection: connection.execute(
            sa.select(corrections.c.status, sa.func.count()).where(corrections.c.time >= since)
            .group_by(corrections.c.status)).all()))
        return {status: counted.get(status, 0) for status in CORRECTION_STATUSES}

    def statistics(self, window: str = "all", now: float | None = None) -> dict:
        """Counts, latency percentiles, label and source mix, confidence histogram, share flagged, per-replica
        counts and a time series — all aggregated by the database, across every replica."""
        since = window_start(window, now)
        first, last = self._connected(lambda connection: _window_bounds(connection, since))
        if first is None:
            return {"window": window, "since": since, "count": 0, **self.health()}
        step = max(60.0, float(round((last - first) / MAX_SERIES_POINTS / 60) * 60 or 60))
        middle = (first + last) / 2
        # Three passes over the window at once, each on its own connection: a refresh over a million rows
        # uses every core (SQLite's reads run in parallel; so do PostgreSQL's backends).
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            halves = [pool.submit(self._connected, lambda connection, start=start, end=end:
                                  _group_sums(connection, start, end, step))
                      for start, end in ((since, middle), (middle, None))]
            latency = pool.submit(self._connected, lambda connection: _latency_histogram(connection, since))
            groups = [row for half in halves for row in half.result()]
            statistics = _summarize(first, last, step, groups, latency.result())
        return {"window": window, "since": since, **statistics, **self.health()}


def window_start(window: str, now: float | None = None) -> float:
    """The earliest time in the window ("hour", "day" or "all") that ends `now`."""
    if not isinstance(window, str) or window not in WINDOWS:
        raise ServiceError(f"Unknown window {shown(window)}: use one of {', '.join(WINDOWS)}.")
    now = time.time() if now is None else now
    return now - WINDOWS[window] if WINDOWS[window] else 0.0


def _confidence():
    return sa.case((predictions.c.p_dog >= 0.5, predictions.c.p_dog), else_=1.0 - predictions.c.p_dog)


def _window_bounds(connection, since: float) -> tuple[float | None, float | None]:
    """The first and last time in the window, each read from an end of the time index."""
    table, in_window = predictions, predictions.c.time >= since
    return tuple(connection.execute(sa.select(
        sa.select(sa.func.min(table.c.time)).where(in_window).scalar_subquery(),
        sa.select(sa.func.max(table.c.time)).where(in_window).scalar_subquery())).one())


def _group_sums(connection, start: float, end: float | None, step: float) -> list[tuple]:
    """Sums per (period, confidence bin, replica, source) of the rows in [start, end) (no end: to the last):
    what every count, mix and series of the statistics is added up from."""
    table = predictions
    confidence_bin = sa.case(*[(_confidence() < CONFIDENCE_EDGES[index + 1], index)
                               for index in range(CONFIDENCE_BINS - 1)], else_=CONFIDENCE_BINS - 1)
    keys = (floor(table.c.time / step), confidence_bin, table.c.replica, table.c.source)
    sums = (sa.func.count(), sa.func.sum(table.c.flagged), sa.func.sum(table.c.latency_ms),
            sa.func.sum(_confidence()), sa.func.sum(table.c.novelty), sa.func.count(table.c.novelty),
            sa.func.sum(sa.case((table.c.label == LABELS[1], 1), else_=0)))
    in_range = table.c.time >= start if end is None else sa.and_(table.c.time >= start, table.c.time < end)
    return connection.execute(sa.select(*keys, *sums).where(in_range).group_by(*keys)).all()


def _latency_histogram(connection, since: float) -> dict[int, int]:
    bucket = floor(predictions.c.latency_ms / LATENCY_RESOLUTION_MS)
    return dict(connection.execute(sa.select(bucket, sa.func.count()).where(predictions.c.time >= since)
                                   .group_by(bucket)).all())


def _summarize(first: float, last: float, step: float, groups: list[tuple], latency: dict[int, int]) -> dict:
    columns = ("count", "flagged", "latency", "confidence", "novelty", "novelty_count", LABELS[1])
    by_period: dict[int, dict[str, float]] = {}
    totals = dict.fromkeys(columns, 0.0)
    confidence_counts, replicas, sources = [0] * CONFIDENCE_BINS, {}, dict.fromkeys(SOURCES, 0)
    for period, bin_index, replica, source, *values in groups:
        row = dict(zip(columns, (value or 0 for value in values)))
        summed = by_period.setdefault(period, dict.fromkeys(columns, 0.0))
        for name, value in row.items():
            summed[name] += value
            totals[name] += value
        confidence_counts[bin_index] += row["count"]
        replicas[replica or "(unnamed)"] = replicas.get(replica or "(unnamed)", 0) + row["count"]
        sources[source] = sources.get(source, 0) + row["count"]
    count, dogs = int(totals["count"]), int(totals[LABELS[1]])
    periods = [by_period[period] for period in sorted(by_period)]
    return {
        "count": count,
        # The histogram was read on its own connection: rank within its own rows.
        "latency_p50_ms": _percentile(latency, sum(latency.values()), 0.50),
        "latency_p95_ms": _percentile(latency, sum(latency.values()), 0.95),
        "labels": {LABELS[0]: count - dogs, LABELS[1]: dogs},
        "sources": sources,
        "replicas": dict(sorted(replicas.items())),
        "flagged_share": round(totals["flagged"] / count, 4),
        "confidence_histogram": {"edges": CONFIDENCE_EDGES, "counts": confidence_counts},
        "first_time": first, "last_time": last,
        "series": {"step_seconds": step, "start": [period * step for period in sorted(by_period)],
                   "requests_per_minute": [round(row["count"] * 60 / step, 2) for row in periods],
                   "latency_ms": [round(row["latency"] / row["count"], 2) for row in periods],
                   "confidence": [round(row["confidence"] / row["count"], 4) for row in periods],
                   "novelty": [round(row["novelty"] / row["novelty_count"], 4) if row["novelty_count"] else None
                               for row in periods],
                   "flagged_share": [round(row["flagged"] / row["count"], 4) for row in periods]},
    }


def _percentile(histogram: dict[int, int], count: int, fraction: float) -> float:
    """The value below which `fraction` of the rows fall, from buckets of LATENCY_RESOLUTION_MS."""
    rank, seen = fraction * count, 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return round((bucket + 0.5) * LATENCY_RESOLUTION_MS, 2)
    return round((max(histogram) + 0.5) * LATENCY_RESOLUTION_MS, 2)
