"""Locust users that call /predict the way real API clients do.

    locust -f bench/locustfile.py --headless -u 10 -r 10 -t 60s --host http://127.0.0.1:7860 \
        --load-images ../shared/data/cats_vs_dogs PredictUser

PredictUser speaks plain HTTP: POST /gradio_api/upload, POST /gradio_api/call/predict, then reads the event
stream to its `complete` event. RestUser sends the photo in one multipart POST to /api/predict. Each step is
timed, and the whole round trip is reported as "predict (end to end)". GradioClientUser does the same through
gradio_client. Photos come from --load-images (or CATDOG_LOAD_IMAGES: a folder with cats/ and dogs/), else
generated JPEGs. A round trip that fails or ends in an `error` event is a failure of "predict (end to end)"; a
completed one whose label is wrong is a failure of "label check" (the model is right on about 98% of photos: a
wrong answer is not a serving failure, but it is counted). --no-label-check turns that check off (no-op model).
"""

from __future__ import annotations

import io
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from locust import HttpUser, User, events, task
from PIL import Image

END_TO_END = "predict (end to end)"
LABEL_CHECK = "label check"


@events.init_command_line_parser.add_listener
def add_options(parser) -> None:
    # Read once at start (events.init), so not offered in the web UI, where a change would do nothing.
    # Locust answers --help before it reads this file: these two are documented above, not there.
    parser.add_argument("--load-images", env_var="CATDOG_LOAD_IMAGES", default="", include_in_web_ui=False,
                        help="a folder with cats/ and dogs/ (default: generated JPEGs)")
    parser.add_argument("--no-label-check", action="store_true", include_in_web_ui=False,
                        help="do not count wrong labels (no-op model)")


def load_images(folder: str) -> list[tuple[str | None, str, bytes]]:
    """(label or None, file name, JPEG bytes)."""
    if folder:
        images = []
        for class_folder in sorted(Path(folder).iterdir()):
            label = {"cats": "cat", "cat": "cat", "dogs": "dog", "dog": "dog"}.get(class_folder.name.lower())
            if label:
                images += [(label, path.name, path.read_bytes()) for path in sorted(class_folder.glob("*.jp*g"))[:200]]
        if images:
            return images
    generator = np.random.default_rng(0)
    generated = []
    for index in range(20):
        buffer = io.BytesIO()
        Image.fromarray(generator.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buffer, "JPEG")
        generated.append((None, f"generated-{index}.jpg", buffer.getvalue()))
    return generated


IMAGES: list[tuple[str | None, str, bytes]] = []
CHECK_LABELS = True


@events.init.add_listener
def read_options(environment, **_) -> None:
    global CHECK_LABELS
    IMAGES[:] = load_images(environment.parsed_options.load_images)
    CHECK_LABELS = not environment.parsed_options.no_label_check


def report(started: float, error: Exception | None) -> None:
    events.request.fire(request_type="E2E", name=END_TO_END, response_time=(time.perf_counter() - started) * 1000,
                        response_length=0, exception=error, context={})


def check_label(expected: str | None, result: dict) -> None:
    if CHECK_LABELS and expected:
        wrong = None if result.get("label") == expected else AssertionError(
            f"expected {expected}, got {result.get('label')}")
        events.request.fire(request_type="CHECK", name=LABEL_CHECK, response_time=0, response_length=0,
                            exception=wrong, context={})


def round_trip(predict) -> None:
    """Time predict(name, data) → result on a random photo: one end-to-end request, and its label checked."""
    label, name, data = random.choice(IMAGES)
    started = time.perf_counter()
    try:
        check_label(label, predict(name, data))
    except Exception as error:  # every failure of the round trip is one failed request
        report(started, error)
        return
    report(started, None)


class PredictUser(HttpUser):
    @task
    def predict(self):
        round_trip(self.gradio_api)

    def gradio_api(self, name: str, data: bytes) -> dict:
        upload = self.client.post("/gradio_api/upload", files={"files": (name, data, "image/jpeg")}, name="1 upload")
        upload.raise_for_status()
        call = self.client.post("/gradio_api/call/predict", name="2 call",
                                json={"data": [{"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}]})
        call.raise_for_status()
        stream = self.client.get(f"/gradio_api/call/predict/{call.json()['event_id']}", name="3 event stream")
        stream.raise_for_status()
        lines = [line for line in stream.text.splitlines() if line]
        if "event: complete" not in lines:
            raise RuntimeError(f"the event stream ended without a result: {stream.text[-300:]}")
        return json.loads(lines[lines.index("event: complete") + 1].removeprefix("data: "))[0]


class RestUser(HttpUser):
    @task
    def predict(self):
        round_trip(self.rest)

    def rest(self, name: str, data: bytes) -> dict:
        answer = self.client.post("/api/predict", files={"file": (name, data, "image/jpeg")}, name="rest")
        answer.raise_for_status()
        return answer.json()


class GradioClientUser(User):
    def on_start(self):
        from gradio_client import Client

        self.gradio = Client(self.host, verbose=False)
        self.folder = Path(tempfile.mkdtemp(prefix="catdog-locust-"))

    @task
    def predict(self):
        round_trip(self.gradio_client)

    def gradio_client(self, name: str, data: bytes) -> dict:
        from gradio_client import handle_file

        path = self.folder / name
        path.write_bytes(data)
        return self.gradio.predict(handle_file(str(path)), api_name="/predict")
