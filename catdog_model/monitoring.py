"""The prediction log: every prediction in one database (SQLite by default, PostgreSQL for replicas), written
off the request path, and its statistics computed by the database over a window (the SQL: log_database).

A database that is down or slow never fails or slows a prediction: rows wait in a bounded buffer, the writer
retries, and rows that did not fit are counted (`dropped_rows`) and shown. The database is opened on first use
(the first row, or the first read), so a server is up before SQLAlchemy is imported."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
import time

from . import LABELS
from .errors import LogUnavailable, ServiceError, shown

logger = logging.getLogger(__name__)

WINDOWS = {"hour": 3600.0, "day": 86400.0, "all": None}
SOURCES = ("ui", "api", "rest")
CONFIDENCE_BINS = 10
CONFIDENCE_EDGES = [round(0.5 + index * 0.5 / CONFIDENCE_BINS, 2) for index in range(CONFIDENCE_BINS + 1)]
MAX_SERIES_POINTS = 300
LATENCY_RESOLUTION_MS = 0.1
# A correction ("it's a cat", from the Predict tab) is stored as an upload: "added", or "suspect" when production
# was sure of the other class; an admin "confirmed", "labelled" or "discarded" each suspect.
CORRECTION_STATUSES = ("added", "suspect", "confirmed", "labelled", "discarded")


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


_CLOSE = object()  # put in the buffer by close(): the writer wakes, and stops once its rows are written


class PredictionLog:
    """Rows go into a bounded buffer; one writer thread (start()) inserts them in batches, and keeps a failed batch
    to retry while the database is unreachable. Reading happens in the database, over a window of time. The
    database is opened, and its tables made or upgraded, by whichever comes first: a batch to write or a read."""

    def __init__(self, url: str, replica: str = "", buffer_rows: int = 100_000, batch_seconds: float = 0.2,
                 retry_seconds: float = 2.0, batch_rows: int = 1000):
        self.url = url
        self.replica = replica
        self.batch_seconds = batch_seconds
        self.retry_seconds = retry_seconds
        self.batch_rows = batch_rows
        self._buffer: queue.Queue = queue.Queue(maxsize=buffer_rows)
        self._queued_rows = 0  # rows in the buffer (which holds flush and close markers too)
        self._held_rows = 0  # taken from the buffer by the writer, not yet written
        self.dropped_rows = 0
        self.last_error: str | None = None
        self._engine = None
        self._opening = threading.Lock()
        self._starting = threading.Lock()
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._write_forever, name="prediction-log", daemon=True)

    def start(self) -> PredictionLog:
        """Start the writer thread (once). Rows recorded before wait in the buffer."""
        with self._starting:
            if self._writer.ident is None and not self._closing.is_set():
                self._writer.start()
        return self

    @property
    def engine(self):
        """The database's SQLAlchemy engine; the first use opens the database. LogUnavailable if it cannot, and
        at once while another thread is opening it: an open can wait seconds on a database that is down, or on
        another replica upgrading the schema, and no read or close() waits behind it. (The writer thread does
        wait, in _insert: its own error, not another thread's open, is what /api/status shows.)"""
        return self._open(wait=False)

    def _open(self, wait: bool):
        if self._engine is not None:
            return self._engine
        if not self._opening.acquire(blocking=wait):
            raise LogUnavailable(self.last_error or "The prediction log's database is being opened.")
        try:
            if self._engine is None:
                from . import log_database
                self._engine = log_database.open_database(self.url)
            return self._engine
        finally:
            self._opening.release()

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
        the writer is not running)."""
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
        if self.pending_rows:
            self.start()  # a log never started writes what it was given before it stops
        if not self.flush(timeout):
            logger.warning("%d prediction-log rows could not be written before closing: %s", self.pending_rows,
                           self.last_error)
        self._closing.set()
        try:
            self._buffer.put_nowait(_CLOSE)  # wakes a writer waiting for rows
        except queue.Full:
            pass  # a writer with a full buffer is retrying, and sees _closing after the attempt
        if self._writer.ident is not None:
            self._writer.join(timeout)
        if self._engine is not None:
            self._engine.dispose()

    def _write_forever(self) -> None:
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
                    self._insert(rows)
                self.last_error = None
            except LogUnavailable as error:
                self._failed(error)
                if self._closing.is_set():
                    return  # close() has waited its time; these rows are counted in its warning
                continue
            rows, self._held_rows = [], 0
            for event in events:
                event.set()
            events = []

    def _insert(self, rows: list[dict]) -> None:
        from . import log_database

        with log_database.reaching(self.url):
            log_database.insert_predictions(self._open(wait=True), rows)

    def _failed(self, error: LogUnavailable) -> None:
        if str(error) != self.last_error:
            logger.warning("%s %d rows wait in the buffer.", error, self.pending_rows)
        self.last_error = str(error)
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
        """work(log_database, connection) on a connection of its own; LogUnavailable, a sentence, when the
        database is not there."""
        from . import log_database

        try:
            with log_database.reaching(self.url), self.engine.connect() as connection:
                return work(log_database, connection)
        except LogUnavailable as error:
            raise LogUnavailable(f"{error} Predictions go on; their rows wait in a buffer and are written when it "
                                 "is back.") from None

    def recent_values(self, version: str | None, since: float, limit: int = 5000) -> dict[str, list[float]]:
        """p(dog) and novelty scores of the most recent predictions of one version, for the drift test."""
        found = self._connected(lambda sql, connection: sql.latest_scores(connection, version, since, limit))
        return {"p_dog": [p_dog for p_dog, _ in found],
                "novelty": [novelty for _, novelty in found if novelty is not None]}

    def record_decision(self, sha256: str, label: str, status: str) -> None:
        """Keep a correction or a review decision (CORRECTION_STATUSES); written at once, as people make few."""
        row = {"time": time.time(), "sha256": sha256, "label": label, "status": status, "replica": self.replica}
        self._connected(lambda sql, connection: sql.insert_decision(connection, row))

    def decisions(self, window: str = "all", now: float | None = None) -> dict[str, int]:
        """How many corrections and review decisions of each status the window holds, across replicas."""
        since = window_start(window, now)
        counted = self._connected(lambda sql, connection: sql.decision_counts(connection, since))
        return {status: counted.get(status, 0) for status in CORRECTION_STATUSES}

    def statistics(self, window: str = "all", now: float | None = None) -> dict:
        """Counts, latency percentiles, label and source mix, confidence histogram, share flagged, per-replica
        counts and a time series — all aggregated by the database, across every replica."""
        since = window_start(window, now)
        first, last = self._connected(lambda sql, connection: sql.window_bounds(connection, since))
        if first is None:
            return {"window": window, "since": since, "count": 0, **self.health()}
        step = max(60.0, float(round((last - first) / MAX_SERIES_POINTS / 60) * 60 or 60))
        middle = (first + last) / 2
        # Three passes over the window at once, each on its own connection: a refresh over a million rows
        # uses every core (SQLite's reads run in parallel; so do PostgreSQL's backends).
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            halves = [pool.submit(self._connected, lambda sql, connection, start=start, end=end:
                                  sql.group_sums(connection, start, end, step, CONFIDENCE_EDGES))
                      for start, end in ((since, middle), (middle, None))]
            latency = pool.submit(self._connected, lambda sql, connection:
                                  sql.latency_histogram(connection, since, LATENCY_RESOLUTION_MS))
            groups = [row for half in halves for row in half.result()]
            statistics = _summarize(first, last, step, groups, latency.result())
        return {"window": window, "since": since, **statistics, **self.health()}


def window_start(window: str, now: float | None = None) -> float:
    """The earliest time in the window ("hour", "day" or "all") that ends `now`."""
    if not isinstance(window, str) or window not in WINDOWS:
        raise ServiceError(f"Unknown window {shown(window)}: use one of {', '.join(WINDOWS)}.")
    now = time.time() if now is None else now
    return now - WINDOWS[window] if WINDOWS[window] else 0.0


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
