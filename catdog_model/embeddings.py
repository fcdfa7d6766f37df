"""The on-disk embedding cache: each image is embedded once per backbone, so retraining embeds only new images."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .backbone import Backbone, flip_horizontal
from .images import InvalidImage, load_image
from .sqlite import connect

ProgressCallback = Callable[[str, int, int], None]


@contextlib.contextmanager
def ticking(progress: ProgressCallback | None, stage: str, every: float = 1.0):
    """A stage with no steps of its own to count (reading a folder, importing Keras, an export): its seconds
    so far as progress(stage, seconds, 0), every `every` seconds, so that a status never stands still."""
    if progress is None:
        yield
        return
    started, stop = time.monotonic(), threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            progress(stage, round(time.monotonic() - started), 0)

    progress(stage, 0, 0)
    thread = threading.Thread(target=tick, name="ticking", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class EmbeddingCache:
    """SQLite table of float32 vectors keyed by (backbone id, image sha256, view)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("CREATE TABLE IF NOT EXISTS embeddings (backbone TEXT, sha256 TEXT, view TEXT, "
                               "vector BLOB, PRIMARY KEY (backbone, sha256, view))")

    @classmethod
    def in_folder(cls, folder: Path) -> "EmbeddingCache":
        """The cache of CATDOG_CACHE_DIR: one file, for training and the server's background embedding alike."""
        return cls(Path(folder) / "embeddings.sqlite")

    def _connect(self):
        return connect(self.path)

    def get_many(self, backbone_id: str, view: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        hashes = list(hashes)
        found: dict[str, np.ndarray] = {}
        with self._connect() as connection:
            for start in range(0, len(hashes), 500):
                chunk = hashes[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = connection.execute(
                    f"SELECT sha256, vector FROM embeddings WHERE backbone=? AND view=? AND sha256 IN ({marks})",
                    [backbone_id, view, *chunk])
                found.update((sha, np.frombuffer(blob, dtype=np.float32)) for sha, blob in rows)
        return found

    def put_many(self, backbone_id: str, view: str, vectors: dict[str, np.ndarray]) -> None:
        with self._connect() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                [(backbone_id, sha, view, np.asarray(vector, dtype=np.float32).tobytes())
                 for sha, vector in vectors.items()])

    def count(self, backbone_id: str) -> int:
        with self._connect() as connection:
            return connection.execute("SELECT COUNT(*) FROM embeddings WHERE backbone=?", [backbone_id]).fetchone()[0]


def embed_images(backbone: Backbone, images: list[tuple[str, bytes | Path]], cache: EmbeddingCache | None,
                 views: tuple[str, ...] = ("original",), progress: ProgressCallback | None = None,
                 ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Embeddings of (sha256, image bytes or file) pairs for each view ("original", "flipped"); a file is read
    only when its embedding is not cached.

    Returns ({view: array (N, dim)} for the images that decoded, {sha256: reason} for those that did not);
    the arrays follow the order of the input, skipping the rejected.
    """
    hashes = [sha for sha, _ in images]
    cached = {view: cache.get_many(backbone.spec.id, view, hashes) if cache else {} for view in views}
    missing = [(sha, data) for sha, data in images if any(sha not in cached[view] for view in views)]
    rejected: dict[str, str] = {}
    step = backbone.batch_size  # a batch at a time: progress every second or so, never a silent stretch
    for start in range(0, len(missing), step):
        if progress:
            progress("embedding", start, len(missing))
        decoded, decoded_hashes = [], []
        for sha, data in missing[start:start + step]:
            try:
                decoded.append(load_image(data, size=backbone.spec.image_size))
                decoded_hashes.append(sha)
            except InvalidImage as error:
                rejected[sha] = str(error)
        if not decoded:
            continue
        batch = np.stack(decoded)
        for view in views:
            vectors = backbone.embed(flip_horizontal(batch) if view == "flipped" else batch)
            fresh = dict(zip(decoded_hashes, vectors))
            cached[view].update(fresh)
            if cache:
                cache.put_many(backbone.spec.id, view, fresh)
    if progress:
        progress("embedding", len(missing), len(missing))
    kept = [sha for sha in hashes if sha not in rejected]
    arrays = {view: np.stack([cached[view][sha] for sha in kept]) if kept
              else np.zeros((0, backbone.dim), np.float32) for view in views}
    return arrays, rejected
