"""The upload store: real image bytes, real zip archives."""

from __future__ import annotations

import io
import zipfile


from catdog_model.uploads import UploadStore
from tests.conftest import random_jpeg


def test_uploads_are_validated_deduplicated_and_named_by_content(tmp_path):
    store = UploadStore(tmp_path / "uploads")
    results = store.add("Cats", [("../../etc/evil.jpg", random_jpeg(1)), ("same.jpg", random_jpeg(1)), ("empty.jpg", b""),
                                 ("notes.jpg", b"hello")])
    assert [result.status for result in results] == ["added", "duplicate", "rejected", "rejected"]
    assert "empty" in results[2].reason
    stored = [path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file()]
    assert [path.parts[:2] for path in stored] == [("uploads", "cat")] and stored[0].suffix == ".jpg"
    assert store.add("dog", [("again.jpg", random_jpeg(1))])[0].reason == "the same image is already stored as a cat"
    assert store.counts() == {"cat": 1, "dog": 0}
    assert len(store.dataset().examples) == 1


def test_zip_archives_with_nested_folders_and_refused_bombs(tmp_path):
    store = UploadStore(tmp_path / "uploads")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as writer:
        writer.writestr("a/b/one.jpg", random_jpeg(2))
        writer.writestr("two.png", random_jpeg(3))
        writer.writestr("readme.txt", "skipped")
    results = store.add("dog", [("photos.zip", archive.getvalue())])
    assert [(result.file, result.status) for result in results] == [("photos.zip/a/b/one.jpg", "added"),
                                                                     ("photos.zip/two.png", "added")]
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as writer:
        writer.writestr("huge.jpg", b"\0" * (600 * 1024 * 1024))
    assert len(bomb.getvalue()) < 2_000_000
    (result,) = store.add("dog", [("bomb.zip", bomb.getvalue())])
    assert result.status == "rejected" and "more than 500 MB" in result.reason
    assert store.add("dog", [("broken.zip", b"PK\x03\x04 not really")])[0].reason == "This zip archive is corrupt."
