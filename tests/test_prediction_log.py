"""The prediction log on a real SQLite file and a real PostgreSQL server: no row lost, statistics computed by
the database over a window, a database that goes down costs no prediction, an older log is upgraded."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from catdog_model.config import PROJECT_ROOT, Settings
from catdog_model.errors import LogUnavailable, ServiceError
from catdog_model.log_database import SCHEMA_VERSION, predictions
from catdog_model.monitoring import LoggedPrediction, PredictionLog
from bench.servers import wait_for
from tests.conftest import random_jpeg, start_postgres


@pytest.fixture(scope="module")
def postgres():
    server = start_postgres()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.heavy)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'predictions.sqlite'}"
    return request.getfixturevalue("postgres").new_database()


def row(index: int, at: float | None = None, replica: str = "") -> LoggedPrediction:
    return LoggedPrediction(time.time() if at is None else at, "v1", "dog" if index % 2 else "cat",
                            0.9 if index % 2 else 0.3, float(index % 100), f"sha{index}", "api",
                            flagged=index % 10 == 0, novelty=0.1, replica=replica)


def test_twenty_concurrent_writers_lose_no_rows(database_url):
    log = PredictionLog(database_url, replica="a").start()
    writers = [threading.Thread(target=lambda start=start: [log.record(row(start * 50 + n)) for n in range(50)])
               for start in range(20)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert log.flush()
    statistics = log.statistics()
    assert statistics["count"] == 1000
    assert statistics["labels"] == {"cat": 500, "dog": 500}
    assert statistics["flagged_share"] == 0.1
    assert statistics["replicas"] == {"a": 1000}
    assert statistics["confidence_histogram"]["counts"] == [0, 0, 0, 0, 500, 0, 0, 0, 500, 0]  # 0.7 and 0.9
    assert statistics["latency_p50_ms"] == pytest.approx(49, abs=0.1)  # latencies 0 … 99, ten times each
    assert statistics["latency_p95_ms"] == pytest.approx(94, abs=0.1)
    assert PredictionLog(database_url).statistics()["count"] == 1000  # survives a reopen


def test_statistics_cover_only_the_window_and_every_replica(database_url):
    now = time.time()
    first, second = (PredictionLog(database_url, replica="one").start(),
                     PredictionLog(database_url, replica="two").start())
    for index in range(30):
        first.record(row(index, at=now - 2 * 86400))  # two days ago
    for index in range(20):
        first.record(row(index, at=now - 600))
        second.record(row(index, at=now - 60))
    assert first.flush() and second.flush()
    assert second.statistics("hour", now=now)["replicas"] == {"one": 20, "two": 20}
    assert first.statistics("day", now=now)["count"] == 40
    everything = first.statistics("all", now=now)
    assert everything["count"] == 70
    assert sum(everything["series"]["requests_per_minute"]) * everything["series"]["step_seconds"] / 60 == 70
    assert first.statistics("hour", now=now + 86400) == {"window": "hour", "since": now + 82800, "count": 0, **first.health()}
    with pytest.raises(ValueError, match="Unknown window 'week': use one of hour, day, all"):
        first.statistics("week")


def test_every_row_is_counted_once_however_the_window_is_split_for_reading(database_url):
    log, start = PredictionLog(database_url, replica="a").start(), time.time() - 4 * 3600
    times = [start + minute * 60 for minute in range(241)]  # four hours, the middle minute included
    times += [start + 2 * 3600] * 5  # rows exactly at the window's middle, where the parallel reads meet
    for index, at in enumerate(times):
        log.record(row(index, at=at))
    assert log.flush()

    statistics = log.statistics("all")
    assert statistics["count"] == len(times) == 246
    assert sum(statistics["labels"].values()) == sum(statistics["confidence_histogram"]["counts"]) == 246
    assert statistics["labels"] == {"cat": 123, "dog": 123} and statistics["replicas"] == {"a": 246}
    assert sum(statistics["sources"].values()) == 246 and statistics["flagged_share"] == round(25 / 246, 4)


def test_each_point_of_the_series_starts_at_the_minute_its_predictions_were_made(database_url):
    log = PredictionLog(database_url, replica="a").start()
    minute = (time.time() // 60 - 30) * 60  # the start of a whole minute, half an hour ago
    for index, seconds in enumerate((5, 20, 50, 70, 210)):  # three in the first minute, one in the next, one later
        log.record(row(index, at=minute + seconds))
    assert log.flush()
    series = log.statistics("hour")["series"]
    assert series["step_seconds"] == 60
    assert series["start"] == [minute, minute + 60, minute + 180]
    assert series["requests_per_minute"] == [3, 1, 1]


@pytest.mark.heavy
def test_a_database_that_goes_down_costs_no_prediction_and_loses_no_row(tmp_path):
    server = start_postgres()
    try:
        log = PredictionLog(server.new_database(), buffer_rows=50, retry_seconds=0.2, batch_rows=10).start()
        for index in range(5):
            log.record(row(index))
        assert log.flush()
        server.stop()
        for index in range(5, 45):
            log.record(row(index))
        assert log.pending_rows == 40  # recorded without the database: held, none written, none lost
        with pytest.raises(LogUnavailable, match="cannot be reached .* Predictions go on"):
            log.statistics()
        wait_for(lambda: log.last_error)
        assert "catdog@127.0.0.1" in log.last_error and "password" not in log.last_error
        server.start()
        assert log.flush(timeout=30)
        assert log.statistics()["count"] == 45 and log.dropped_rows == 0
    finally:
        server.close()


def test_a_full_buffer_drops_rows_and_counts_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.sqlite'}"
    log = PredictionLog(url, buffer_rows=20, retry_seconds=0.2, batch_rows=10).start()
    (tmp_path / "predictions.sqlite").mkdir()  # the database file cannot be opened
    for index in range(100):
        log.record(row(index))
    wait_for(lambda: log.last_error)
    health = log.health()
    assert 70 <= health["dropped_rows"] <= 80  # only the buffer (20) and one batch (10) wait
    assert health["pending_rows"] <= 30 and "cannot be reached" in health["write_error"]
    with pytest.raises(LogUnavailable):
        log.statistics()


def test_a_log_written_by_an_older_catdog_is_upgraded_in_place(tmp_path):
    path = tmp_path / "predictions.sqlite"
    with sqlite3.connect(path) as connection:  # the schema of catdog ≤ 0.9
        connection.execute("CREATE TABLE predictions (time REAL NOT NULL, version TEXT, label TEXT NOT NULL, "
                           "p_dog REAL NOT NULL, latency_ms REAL NOT NULL, sha256 TEXT, source TEXT NOT NULL, "
                           "flagged INTEGER NOT NULL DEFAULT 0)")
        connection.execute("INSERT INTO predictions VALUES (?, 'v1', 'cat', 0.2, 12.0, 'abc', 'ui', 0)", [time.time()])
    connection.close()
    log = PredictionLog(f"sqlite:///{path}", replica="new").start()
    log.record(row(1))
    assert log.flush()
    assert log.statistics()["replicas"] == {"(unnamed)": 1, "new": 1}
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM catdog_schema").fetchall() == [(SCHEMA_VERSION,)]
        indexes = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    connection.close()
    assert {index.name for index in predictions.indexes} <= indexes


def test_a_log_of_schema_2_gets_the_covering_index_in_place_of_its_time_index(tmp_path):
    path = tmp_path / "predictions.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE predictions (time REAL NOT NULL, version TEXT, label TEXT NOT NULL, "
                           "p_dog REAL NOT NULL, latency_ms REAL NOT NULL, sha256 TEXT, source TEXT NOT NULL, "
                           "flagged INTEGER NOT NULL DEFAULT 0, novelty REAL, replica TEXT NOT NULL DEFAULT '')")
        connection.execute("CREATE INDEX predictions_by_time ON predictions (time)")
        connection.execute("CREATE TABLE catdog_schema (version INTEGER NOT NULL)")
        connection.execute("INSERT INTO catdog_schema VALUES (2)")
        connection.execute("INSERT INTO predictions VALUES (?, 'v1', 'dog', 0.9, 12.0, 'abc', 'rest', 0, 0.1, 'a')",
                           [time.time()])
    connection.close()
    log = PredictionLog(f"sqlite:///{path}", replica="b").start()
    log.record(row(1))
    assert log.flush()
    assert log.statistics()["replicas"] == {"a": 1, "b": 1}
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT version FROM catdog_schema").fetchall() == [(SCHEMA_VERSION,)]
        indexes = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    connection.close()
    assert "predictions_for_statistics" in indexes and "predictions_by_time" not in indexes


def test_a_log_from_a_newer_catdog_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "predictions.sqlite"
    PredictionLog(f"sqlite:///{path}").statistics()  # a read opens the database, making its tables
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE catdog_schema SET version = ?", [SCHEMA_VERSION + 1])
    connection.close()
    log = PredictionLog(f"sqlite:///{path}", retry_seconds=0.2)
    with pytest.raises(LogUnavailable, match="written by a newer catdog .* upgrade catdog on this replica"):
        log.statistics()


def test_a_server_serves_before_sqlalchemy_is_imported_and_the_first_row_opens_the_log(tmp_path):
    # SQLAlchemy is half a second of a server's start: the log's database waits for its first row or read.
    shutil.copytree(PROJECT_ROOT / "models", tmp_path / "models", ignore=shutil.ignore_patterns(".lock"))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(random_jpeg(1, side=64))
    program = f"""
import sys
from catdog_model.config import Settings
from catdog_model.service import Service
service = Service(Settings.from_env()).start()
assert service.health()["model_loaded"], service.load_error
print("serving, SQLAlchemy imported:", "sqlalchemy" in sys.modules)
service.predict(open({str(photo)!r}, 'rb').read())
assert service.log.flush()
print("logged", service.log.statistics()["count"], "SQLAlchemy imported:", "sqlalchemy" in sys.modules)
service.close()
"""
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "CATDOG_MODELS_DIR": str(tmp_path / "models"),
                   "CATDOG_DATA_DIR": str(tmp_path / "data"), "CATDOG_PREPARE_EMBEDDINGS": "0"}
    ran = subprocess.run([sys.executable, "-c", program], env=environment, capture_output=True, text=True,
                         timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.splitlines() == ["serving, SQLAlchemy imported: False", "logged 1 SQLAlchemy imported: True"]
    assert (tmp_path / "data" / "predictions.sqlite").is_file()


@pytest.mark.parametrize("url", ["no database", "mysql://catdog@db/log", "sqlite:/predictions.sqlite", "sqlite://",
                                 "postgres://catdog:s3cret@db/log"])
def test_a_database_url_the_log_cannot_use_is_refused_when_the_settings_are_read(monkeypatch, url):
    monkeypatch.setenv("CATDOG_DATABASE_URL", url)
    with pytest.raises(ServiceError, match="CATDOG_DATABASE_URL is not a database URL for SQLite or PostgreSQL "
                                           ".* use sqlite:///") as refused:
        Settings.from_env()
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize("url", ["postgresql+pg8000://catdog:s3cret@127.0.0.1/log",  # a driver not installed
                                 "postgresql://catdog:s3cret@127.0.0.1:port/log"])
def test_a_database_that_cannot_even_be_opened_is_a_sentence_and_the_writer_keeps_its_rows(url):
    log = PredictionLog(url, retry_seconds=0.2).start()
    log.record(row(1))
    wait_for(lambda: log.last_error)
    assert "cannot be opened" in log.last_error and "s3cret" not in log.last_error
    assert log._writer.is_alive() and log.pending_rows == 1
    with pytest.raises(LogUnavailable, match="Predictions go on"):
        log.statistics()
    log.close(timeout=1)
    assert not log._writer.is_alive()


def test_a_log_closed_without_being_started_writes_what_it_was_given(database_url):
    log = PredictionLog(database_url)
    log.record(row(1))
    log.close()
    assert PredictionLog(database_url).statistics()["count"] == 1


def test_a_log_whose_folder_cannot_be_made_says_so_and_keeps_its_rows(tmp_path):
    (tmp_path / "a-file").write_text("")  # a folder inside a file cannot be made, even by root
    log = PredictionLog(f"sqlite:///{tmp_path / 'a-file' / 'log' / 'predictions.sqlite'}", retry_seconds=0.2).start()
    log.record(row(1))
    wait_for(lambda: log.last_error)
    assert "folder cannot be made" in log.last_error and log.pending_rows == 1
    with pytest.raises(LogUnavailable, match="folder cannot be made .* Predictions go on"):
        log.statistics()
