"""The one way catdog opens its SQLite files: the embedding cache (the prediction log goes through SQLAlchemy)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path


@contextlib.contextmanager
def connect(path: Path):
    """A connection that commits on success, rolls back on error, and is always closed."""
    connection = sqlite3.connect(path, timeout=30)
    try:
        with connection:
            yield connection
    finally:
        connection.close()
