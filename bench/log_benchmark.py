"""How long a Metrics refresh takes on a big prediction log: N rows spread over 30 days from two replicas, then
what the refresh reads for each window (hour, day, all): the statistics computed by the database and the
drift test's recent values, best of three.

    python -m bench.log_benchmark --rows 1000000                  # SQLite in a temporary folder
    python -m bench.log_benchmark --rows 1000000 --postgres       # a throwaway PostgreSQL, started as the tests do
    python -m bench.log_benchmark --rows 1000000 --database-url postgresql+psycopg://user@host/db
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from catdog_model.log_database import predictions
from catdog_model.monitoring import WINDOWS, PredictionLog

DAYS = 30
CHUNK = 50_000


def fill(log: PredictionLog, rows: int, now: float, seed: int = 0) -> float:
    """Insert `rows` synthetic predictions in chunks; seconds taken."""
    random = np.random.default_rng(seed)
    started = time.perf_counter()
    for start in range(0, rows, CHUNK):
        size = min(CHUNK, rows - start)
        times = np.sort(now - random.uniform(0, DAYS * 86400, size))
        p_dog = random.beta(0.3, 0.3, size)
        chunk = [{"time": float(times[i]), "version": "v4", "label": "dog" if p_dog[i] >= 0.5 else "cat",
                  "p_dog": float(p_dog[i]), "latency_ms": float(random.gamma(4, 3)), "sha256": None,
                  "source": "rest", "flagged": int(random.random() < 0.03), "novelty": float(random.beta(2, 8)),
                  "replica": f"replica-{i % 2}"} for i in range(size)]
        with log.engine.begin() as connection:
            connection.execute(predictions.insert(), chunk)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.log_benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database-url", help="an empty database to fill (default: SQLite in a temporary folder)")
    where.add_argument("--postgres", action="store_true", help="start a throwaway PostgreSQL on loopback")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)

    server = None
    with tempfile.TemporaryDirectory() as folder:
        url = arguments.database_url or f"sqlite:///{Path(folder) / 'predictions.sqlite'}"
        if arguments.postgres:
            from bench.servers import Postgres, ServerUnavailable

            try:
                server = Postgres()
            except ServerUnavailable as missing:
                raise SystemExit(str(missing)) from None
            url = server.new_database()
        try:
            log = PredictionLog(url, replica="benchmark")
            now = time.time()
            fill_seconds = fill(log, arguments.rows, now)
            refresh = {}
            for window in WINDOWS:
                timings = []
                for _ in range(3):  # what a Metrics refresh reads: the statistics, and the drift test's values
                    started = time.perf_counter()
                    statistics = log.statistics(window, now=now)
                    log.recent_values("v4", statistics["since"])
                    timings.append(time.perf_counter() - started)
                refresh[window] = {"rows": statistics["count"], "seconds": round(min(timings), 3)}
            result = {"database": log.engine.dialect.name, "rows": arguments.rows,
                      "fill_seconds": round(fill_seconds, 1), "refresh": refresh}
            log.engine.dispose()
        finally:
            if server:
                server.close()
    if arguments.json:
        print(json.dumps(result))
        return
    print(f"{result['database']}: {arguments.rows:,} rows written in {result['fill_seconds']} s")
    for window, timing in refresh.items():
        print(f"  window {window:>4}: {timing['rows']:>9,} rows aggregated in {timing['seconds']:.3f} s")


if __name__ == "__main__":
    main()
