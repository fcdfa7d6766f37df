"""The prediction log: every prediction in SQLite, written off the request path, and its statistics."""

from __future__ import annotations

import dataclasses
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from .sqlite import connect

logger = logging.getLogger(__name__)

SCHEMA = """CREATE TABLE IF NOT EXISTS predictions (
    time REAL NOT NULL, version TEXT, label TEXT NOT NULL, p_dog REAL NOT NULL, latency_ms REAL NOT NULL,
    sha256 TEXT, source TEXT NOT NULL, flagged INTEGER NOT NULL DEFAULT 0)"""


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


class PredictionLog:
    """Rows go into a queue; one writer thread inserts them in batches. A failing write is logged and dropped:
    it never fails the prediction that produced it."""

    def __init__(self, path: Path, batch_seconds: float = 0.2):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.batch_seconds = batch_seconds
        self._queue: queue.Queue = queue.Queue()
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(SCHEMA)
        self._writer = threading.Thread(target=self._write_forever, name="prediction-log", daemon=True)
        self._writer.start()

    def _connect(self):
        return connect(self.path)

    def record(self, prediction: LoggedPrediction) -> None:
        self._queue.put(prediction)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every recorded row is written (or given up on)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            time.sleep(self.batch_seconds)
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows = [dataclasses.astuple(item) for item in batch if isinstance(item, LoggedPrediction)]
            try:
                if rows:
                    with self._connect() as connection:
                        connection.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as error:
                logger.warning("could not write %d prediction log rows: %s", len(rows), error)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()

    def rows(self, since: float = 0.0) -> list[LoggedPrediction]:
        with self._connect() as connection:
            found = connection.execute("SELECT * FROM predictions WHERE time >= ? ORDER BY time", [since])
            return [LoggedPrediction(*row[:7], flagged=bool(row[7])) for row in found]

    def statistics(self, since: float = 0.0) -> dict:
        """Counts, latency percentiles, label mix, confidence histogram and share flagged."""
        rows = self.rows(since)
        if not rows:
            return {"count": 0}
        latencies = np.array([row.latency_ms for row in rows])
        confidence = np.array([max(row.p_dog, 1 - row.p_dog) for row in rows])
        histogram, edges = np.histogram(confidence, bins=10, range=(0.5, 1.0))
        return {
            "count": len(rows),
            "latency_p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "latency_p95_ms": round(float(np.percentile(latencies, 95)), 2),
            "labels": {label: sum(row.label == label for row in rows) for label in ("cat", "dog")},
            "sources": {source: sum(row.source == source for row in rows) for source in ("ui", "api", "rest")},
            "flagged_share": round(sum(row.flagged for row in rows) / len(rows), 4),
            "confidence_histogram": {"edges": [round(edge, 2) for edge in edges.tolist()],
                                     "counts": histogram.tolist()},
        }
