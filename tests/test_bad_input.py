"""Bad and unusual input through the public API (gradio_client and plain HTTP) of a real app: a right answer
or a sentence that says what is wrong — never a crash, a stack trace, or a file outside the data folder."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from catdog_model import LABELS
from tests.conftest import PHOTOS_DIR, patient_client, requires_photos, requires_weights
from tests.test_images import encode, half_red_half_blue, png_header_only

pytestmark = [requires_weights]

BAD = {
    "empty.jpg": (b"", "empty"),
    "notes.jpg": (b"minutes of the meeting, not a photo\n" * 20, "not an image"),
    "random.jpg": (bytes(np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8)), "not an image"),
    "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="50" height="50"/>', "not an image"),
    "truncated.jpg": (encode(half_red_half_blue(400, 300), "JPEG")[:2500], "truncated or corrupt"),
    "bomb.png": (png_header_only(20000, 20000), "pixels"),
    "tiny.png": (encode(Image.new("RGB", (1, 1)), "PNG"), "at least 16 pixels"),
}


def unusual_images() -> dict[str, bytes]:
    frames = [Image.new("RGB", (64, 64), color) for color in ("orange", "blue")]
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "animated.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "cmyk.jpg": encode(half_red_half_blue().convert("CMYK"), "JPEG"),
        "sixteen-bit.png": encode(Image.fromarray(np.full((40, 40), 30000, np.uint16)), "PNG"),
        "transparent.png": encode(Image.new("RGBA", (40, 40), (10, 200, 10, 120)), "PNG"),
        "rotated.jpg": encode(half_red_half_blue(), "JPEG", exif=exif.tobytes()),
    }


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_get_a_sentence_through_gradio_client(server, tmp_path, name):
    url, _ = server
    data, message = BAD[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(Exception, match=message) as raised:
        patient_client(url).predict(handle_file(str(path)), api_name="/predict")
    assert "Traceback" not in str(raised.value)


def test_bad_files_over_plain_http_end_in_an_error_event_with_the_sentence(server):
    url, _ = server
    with httpx.Client(base_url=url, timeout=60) as http:
        for name, (data, message) in BAD.items():
            path = http.post("gradio_api/upload", files={"files": (name, data)}).json()[0]
            event = http.post("gradio_api/call/predict", json={"data": [{"path": path, "meta": {
                "_type": "gradio.FileData"}}]}).json()["event_id"]
            stream = http.get(f"gradio_api/call/predict/{event}").text
            assert "event: error" in stream and message in stream and "Traceback" not in stream, (name, stream)
        assert http.get("health").json()["model_loaded"] is True


def test_unusual_but_valid_images_are_classified(server, tmp_path):
    url, _ = server
    client = patient_client(url)
    for name, data in unusual_images().items():
        path = tmp_path / name
        path.write_bytes(data)
        result = client.predict(handle_file(str(path)), api_name="/predict")
        assert result["label"] in LABELS, name


@requires_photos
def test_a_30_megapixel_photo_is_classified(server, tmp_path):
    url, _ = server
    photo = Image.open(sorted((PHOTOS_DIR / "dogs").glob("*.jpg"))[0]).convert("RGB").resize((6400, 4800))
    path = tmp_path / "big.jpg"
    photo.save(path, "JPEG", quality=85)
    assert patient_client(url).predict(handle_file(str(path)), api_name="/predict")["label"] == "dog"


def test_training_uploads_refuse_bad_files_and_hostile_names_stay_inside(server, tmp_path):
    url, service = server
    client = patient_client(url)
    hostile = tmp_path / "..%2F..%2Fescape.jpg"
    hostile.write_bytes(encode(half_red_half_blue(), "JPEG"))
    odd = tmp_path / "caf\udce9.jpg".encode("utf-8", "surrogateescape").decode("latin-1")
    odd.write_bytes(encode(half_red_half_blue(50, 40), "PNG"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(BAD["truncated.jpg"][0])
    # Gradio keeps each upload, under its own name, in a folder named by the content's hash inside its cache.
    gradio_cache = Path(os.environ["GRADIO_TEMP_DIR"])

    def outside_gradios_hash_folders():
        return {path for path in tmp_path.parent.rglob("*escape*") if path.parent.parent != gradio_cache}

    before = outside_gradios_hash_folders()
    results, *_ = client.predict("dog", [handle_file(str(path)) for path in (hostile, odd, broken)], "s3cret",
                                api_name="/upload_training_data")
    assert [row[1] for row in results["data"]] == ["added", "added", "rejected"]
    assert "truncated or corrupt" in results["data"][2][2]
    stored = [path for path in (service.settings.data_dir / "uploads").rglob("*") if path.is_file()]
    assert all(path.parent.parent == service.settings.data_dir / "uploads" for path in stored)
    assert outside_gradios_hash_folders() == before
    with pytest.raises(Exception, match="Unknown class|horse"):
        client.predict("horse", [handle_file(str(hostile))], "s3cret", api_name="/upload_training_data")
    with pytest.raises(Exception, match="No files were uploaded"):
        client.predict("cat", [], "s3cret", api_name="/upload_training_data")


def test_too_many_files_in_one_request_is_refused(server, tmp_path, monkeypatch):
    import dataclasses

    url, service = server
    monkeypatch.setattr(service, "settings", dataclasses.replace(service.settings, max_files=3))
    paths = []
    for index in range(4):
        path = tmp_path / f"{index}.png"
        path.write_bytes(encode(half_red_half_blue(20 + index, 20), "PNG"))
        paths.append(handle_file(str(path)))
    with pytest.raises(Exception, match="4 files in one request; the limit is 3"):
        patient_client(url).predict(paths, api_name="/predict_batch")
