"""The upload store: real image bytes, real zip archives."""

from __future__ import annotations

import io
import struct
import zipfile
import tracemalloc

import pytest
import numpy as np
from PIL import Image

from catdog_model.images import image_size
from catdog_model.uploads import STORED_MAX_BYTES, STORED_MAX_SIDE, RequestLimits, UploadStore
from tests.conftest import random_jpeg


def bmp(side: int, seed: int) -> bytes:
    """A distinct, uncompressed side×side photo-like image (3 bytes a pixel on disk)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    small.resize((side, side), Image.Resampling.BILINEAR).save(buffer, "BMP")
    return buffer.getvalue()


def archive_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as writer:
        for name, data in files.items():
            writer.writestr(name, data)
    return buffer.getvalue()


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
    (long_name,) = store.add("cat", [("x" * 5000 + ".jpg", b"not an image")])
    assert len(long_name.file) <= 120  # a name is shown, not echoed back whole


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
        with writer.open("huge.jpg", "w", force_zip64=True) as member:  # written in pieces: 600 MB never in memory
            for _ in range(600):
                member.write(bytes(1024 * 1024))
    assert len(bomb.getvalue()) < 2_000_000
    (result,) = store.add("dog", [("bomb.zip", bomb.getvalue())])
    assert result.status == "rejected" and "more than 500 MB" in result.reason
    assert store.add("dog", [("broken.zip", b"PK\x03\x04 not really")])[0].reason == "This zip archive is corrupt."
    # A million entries in 50 MB, all directory: zipfile would spend seconds and 400 MB parsing it.
    entry = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0)
    directory = b"".join(entry + f"{index:05d}.jpg".encode() for index in range(100_000))
    listing = directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 65535, 65535, len(directory), 0, 0)
    (result,) = store.add("dog", [("listing.zip", listing)])
    assert result.status == "rejected" and "list of contents is over 4 MB" in result.reason


def test_an_image_larger_than_training_needs_is_kept_as_a_bounded_jpeg(tmp_path):
    store = UploadStore(tmp_path / "uploads")
    photo = random_jpeg(5, side=64)
    results = store.add("cat", [("huge.bmp", bmp(3000, seed=1)), ("photo.jpg", photo)])
    assert [result.status for result in results] == ["added", "added"]
    stored = sorted((tmp_path / "uploads" / "cat").iterdir(), key=lambda path: path.stat().st_size)
    assert stored[0].read_bytes() == photo  # a photo within the bounds is kept as it came
    with Image.open(stored[1]) as shrunk:
        assert shrunk.format == "JPEG" and max(shrunk.size) == STORED_MAX_SIDE
    assert stored[1].stat().st_size <= STORED_MAX_BYTES
    # It is still known by the hash of what was uploaded: the same file again is a duplicate.
    assert store.add("cat", [("again.bmp", bmp(3000, seed=1))])[0].status == "duplicate"
    strip = io.BytesIO()
    Image.new("RGB", (200_000, 16), "gray").save(strip, "PNG")
    (refused,) = store.add("cat", [("strip.png", strip.getvalue())])
    assert refused.status == "rejected" and "Crop it" in refused.reason  # it could not be kept at 1,024 px


def test_one_upload_call_is_bounded_across_all_its_files_and_archives(tmp_path):
    """Three small archives, each under the per-archive limits, used to store everything they unpacked."""
    store = UploadStore(tmp_path / "uploads", request_limits=RequestLimits(stored_bytes=2**20, pixels=10**9))
    archives = [(f"part{part}.zip", archive_of({f"{index}.bmp": bmp(1000, seed=10 * part + index)
                                                for index in range(10)})) for part in range(3)]
    results = store.add("dog", archives)
    added = [result for result in results if result.status == "added"]
    refused = [result for result in results if result.status == "rejected"]
    assert added and refused and len(added) + len(refused) == 30
    assert all("CATDOG_MAX_REQUEST_MB" in result.reason for result in refused)
    on_disk = sum(path.stat().st_size for path in (tmp_path / "uploads").rglob("*") if path.is_file())
    assert on_disk <= 2**20
    pixels = UploadStore(tmp_path / "other", request_limits=RequestLimits(pixels=2 * 1000 * 1000))
    results = pixels.add("dog", archives[:1])
    assert [result.status for result in results] == ["added"] * 2 + ["rejected"] * 8
    assert all("CATDOG_MAX_REQUEST_MEGAPIXELS" in result.reason for result in results[2:])


def test_a_file_sent_many_times_in_one_call_is_decoded_once(tmp_path, monkeypatch):
    """The same path a hundred times in one call (cheap to send, costly to decode) is hashed, not decoded,
    after its first time, and does not use up the call's pixel budget."""
    import catdog_model.uploads as uploads

    decoded = []
    monkeypatch.setattr(uploads, "image_size", lambda data, limits: decoded.append(1) or image_size(data, limits))
    path = tmp_path / "big.bmp"
    path.write_bytes(bmp(1000, seed=1))
    store = UploadStore(tmp_path / "uploads", request_limits=RequestLimits(pixels=2 * 1000 * 1000))
    results = store.add("dog", [("big.bmp", path)] * 100 + [("other.bmp", bmp(1000, seed=2))])
    assert [result.status for result in results] == ["added"] + ["duplicate"] * 99 + ["added"]
    assert len(decoded) == 2


def test_an_upload_call_reads_a_bounded_number_of_files_and_no_member_larger_than_an_upload(tmp_path):
    """From the second adversarial review: a 478 KB zip holding one 480 MB member (+974 MB while it was
    unpacked), and a zip of 5,000 empty files sent forty times in one call (133 s of work, 200,000 rows)."""
    big = io.BytesIO()
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as writer:
        with writer.open("a.jpg", "w", force_zip64=True) as member:
            for _ in range(60):
                member.write(bytes(2**20))
    store = UploadStore(tmp_path / "uploads", request_limits=RequestLimits(file_bytes=50 * 2**20, entries=220))
    tracemalloc.start()
    try:
        (result,) = store.add("cat", [("big.zip", big.getvalue())])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "rejected" and "unpacks to 60 MB; the limit for one image is 50 MB" in result.reason
    assert peak < 10 * 2**20
    empty = tmp_path / "empty.zip"
    empty.write_bytes(archive_of({f"{index}.jpg": b"" for index in range(200)}))
    results = store.add("cat", [("empty.zip", empty)] * 40 + [("photo.jpg", random_jpeg(1))])
    assert [result.status for result in results[:200]] == ["rejected"] + ["duplicate"] * 199  # each read once
    assert all("same archive comes earlier" in result.reason for result in results[200:220])
    assert len(results) == 221 and "limit of 220 files" in results[220].reason  # the rest were not read
    assert store.counts() == {"cat": 0, "dog": 0}


def test_an_upload_removes_what_writes_killed_mid_way_left_behind(tmp_path):
    """kill -9 between a write's temporary file and its rename leaves the file; the next upload to that class
    removes it once it is old enough that no running write can own it."""
    import os
    import time

    store = UploadStore(tmp_path / "uploads")
    store.add("cat", [("one.jpg", random_jpeg(1))])
    folder = tmp_path / "uploads" / "cat"
    abandoned, running = folder / ".abc.jpg-x1.tmp", folder / ".def.jpg-x2.tmp"
    abandoned.write_bytes(bytes(10_000))
    running.write_bytes(bytes(10_000))
    os.utime(abandoned, (time.time() - 2 * 3600,) * 2)
    assert store.add("cat", [("two.jpg", random_jpeg(2))])[0].status == "added"
    assert not abandoned.exists() and running.exists()
    assert store.counts() == {"cat": 2, "dog": 0}


@pytest.mark.heavy
def test_an_upload_call_holds_one_image_at_a_time_however_many_it_brings(tmp_path):
    """Each image is read, checked and stored before the next is read: 30 images of 4 MB in three archives
    never sit in memory together (they did: 1.5 GB for three 460 KB archives of 4000×4000 BMPs)."""
    archives = []
    for part in range(3):
        path = tmp_path / f"part{part}.zip"
        path.write_bytes(archive_of({f"{index}.bmp": bmp(1200, seed=10 * part + index) for index in range(10)}))
        archives.append((path.name, path))
    store = UploadStore(tmp_path / "uploads")
    tracemalloc.start()
    try:
        results = store.add("cat", archives)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [result.status for result in results] == ["added"] * 30
    assert peak < 4 * len(bmp(1200, seed=0))  # one image's bytes and its copies, not thirty


def test_training_reads_uploads_from_disk_only_when_it_uses_them(tmp_path):
    store = UploadStore(tmp_path / "uploads")
    store.add("cat", [(f"{seed}.jpg", random_jpeg(seed)) for seed in range(3)])
    examples = store.dataset().examples
    assert len(examples) == 3 and all(not isinstance(example.content, bytes) for example in examples)
    assert sorted(example.data for example in examples) == sorted(random_jpeg(seed) for seed in range(3))
