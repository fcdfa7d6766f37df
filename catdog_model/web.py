"""What the web layer enforces around Gradio: file inputs must be files this app received through its upload
route, and every refusal reaches the user as catdog's own sentence (logged as one line, no traceback)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import re
import stat
import urllib.parse

from .config import is_loopback_authority
from .errors import CatdogError, ServiceError

logger = logging.getLogger(__name__)

UPLOADED_FILES_ONLY = ("Only files uploaded to this app can be used as input: upload the file first (gradio_client's "
                       "handle_file, or POST /gradio_api/upload) and send the path that the upload returns.")
GRADIO_API = "/gradio_api/"
MAX_CALL_BYTES = 2**20  # a call's JSON names files and short texts; anything larger is refused unread
UPLOAD_ROUTE = "/gradio_api/upload"
# An absolute path in a message tells a caller how the server's disk is laid out: only its last part is kept.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/'\"()]+/)+([^\s/'\"()]*)")
NO_IMAGE = "No image was given: upload, drop or paste a photo."


def public_message(text: str) -> str:
    """The message as a user may see it: absolute paths reduced to their last part."""
    return ABSOLUTE_PATH.sub(r"\1", str(text))


def is_uploaded_file(path, upload_folder: str) -> bool:
    """True for a regular file inside the upload folder, after symlinks and `..` are resolved."""
    if not isinstance(path, str) or not path or "\0" in path:
        return False
    root = os.path.realpath(upload_folder)
    real = os.path.realpath(path)
    if os.path.commonpath([real, root]) != root or real == root:
        return False
    try:
        return stat.S_ISREG(os.stat(real).st_mode)  # not a FIFO, a device or a folder
    except OSError:
        return False


def file_paths(value) -> list:
    """Every "path" of every file object in a request's JSON, however deeply nested."""
    if isinstance(value, dict):
        found = [value["path"]] if "path" in value else []
        return found + [path for item in value.values() for path in file_paths(item)]
    if isinstance(value, list):
        return [path for item in value for path in file_paths(item)]
    return []


def input_paths(value) -> list[str]:
    """The server paths of the files given to an event registered with preprocess=False (a file object, a list
    of them, or nothing). Events take files this way because gr.File's own preprocessing leaves an empty
    temporary file behind for every file (Gradio 6.31), and gr.Image's decodes the picture before catdog's
    limits apply."""
    return [path for path in file_paths(value or []) if isinstance(path, str)]


def input_path(value) -> str:
    """The one photo an event was given; a sentence saying so when there is none."""
    paths = input_paths(value)
    if not paths:
        raise ServiceError(NO_IMAGE)
    return paths[0]


class UploadedFilesOnly:
    """ASGI middleware: a call whose inputs name a file that was not uploaded is refused before Gradio reads,
    hashes or copies anything (Gradio 6 skips its own check in apps mounted with mount_gradio_app)."""

    def __init__(self, app, upload_folder=None):
        from gradio.utils import get_upload_folder

        self.app = app
        self.upload_folder = upload_folder or get_upload_folder

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or GRADIO_API not in path or path.endswith(
                UPLOAD_ROUTE):
            return await self.app(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > MAX_CALL_BYTES:
                await _send_json(send, 413, {"error": f"A call may hold at most {MAX_CALL_BYTES // 1024} KB of "
                                                      "JSON; upload files first and send their paths."})
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        body = b"".join(message.get("body", b"") for message in messages)
        try:
            paths = file_paths(json.loads(body)) if body else []
        except ValueError:
            paths = []  # not JSON: Gradio refuses it itself
        upload_folder = self.upload_folder()
        candidates = {path if isinstance(path, str) else None for path in paths}  # each distinct path checked once
        if not all(is_uploaded_file(candidate, upload_folder) for candidate in candidates):
            logger.warning("refused a request to %s naming a file that was not uploaded", path)
            await _send_json(send, 400, {"error": UPLOADED_FILES_ONLY})
            return

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class LoopbackHostOnly:
    """ASGI middleware for a server open without a token because only this machine can reach it. A request
    addressed to another name was relayed (by a web page whose name was rebound to 127.0.0.1 — DNS rebinding —
    or by a proxy that keeps the client's Host), and a POST from another site's page comes from a browser that
    someone else steers: both are refused before any endpoint sees them."""

    def __init__(self, app, port: int):
        self.app = app
        self.message = loopback_only_message(port)
        self.logged: set[str] = set()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin", b"").decode("latin-1")
        unsafe = scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS")
        if host and not is_loopback_authority(host):
            refused = f"addressed to {host[:100]!r}"
        elif origin and unsafe and not is_loopback_authority(urllib.parse.urlsplit(origin).netloc):
            refused = f"from a page of {origin[:100]!r}"
        else:
            return await self.app(scope, receive, send)
        if len(self.logged) < 100 and refused not in self.logged:  # once each: a looping page cannot flood the log
            self.logged.add(refused)
            logger.warning("refused requests %s: this server has no admin token", refused)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await _send_json(send, 403, {"error": self.message})


def loopback_only_message(port: int) -> str:
    return (f"This server has no admin token, so it answers only this machine's own requests: open "
            f"http://127.0.0.1:{port}/ or http://localhost:{port}/, or set CATDOG_ADMIN_TOKEN to serve it under "
            "another name, behind a proxy or to other sites' pages.")


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def forget_finished_sessions(blocks, every_seconds: float = 30.0) -> None:
    """Gradio 6.31 keeps an empty entry in its queue's pending_event_ids_session for every session whose events
    all finished, and every API call is a new session: under load the dict grows by tens of thousands of
    entries (about 3 MB a minute here), and each event-stream request scans it. Empty entries are dropped
    here, on the event loop, where Gradio changes the dict too, so no change of Gradio's interleaves."""
    while True:
        await asyncio.sleep(every_seconds)
        sessions = blocks._queue.pending_event_ids_session
        for session_hash in [session_hash for session_hash, events in sessions.items() if not events]:
            sessions.pop(session_hash, None)


def user_errors(function):
    """Mistakes a user can fix reach them as a gr.Error sentence, logged as one line, not a stack trace.
    Works for plain functions and for generators (events that stream progress)."""
    import gradio as gr

    def refusal(error: Exception) -> Exception:
        message = public_message(error)
        logger.info("refused %s: %s", function.__name__, message)
        return gr.Error(message, print_exception=False)

    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def stream(*arguments, **keywords):
            try:
                yield from function(*arguments, **keywords)
            except CatdogError as error:
                raise refusal(error) from None
        return stream

    @functools.wraps(function)
    def call(*arguments, **keywords):
        try:
            return function(*arguments, **keywords)
        except CatdogError as error:
            raise refusal(error) from None
    return call


class _BodyTooLarge(Exception):
    pass


class RequestBodyLimit:
    """ASGI middleware: a request to `path` whose body passes max_bytes is refused with 413 as soon as it does,
    before the multipart parser has spooled it to disk (Gradio's upload route stops at its limit the same way)."""

    def __init__(self, app, path: str, max_bytes: int, message: str):
        self.app, self.path, self.max_bytes, self.message = app, path, max_bytes, message

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != self.path:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, 413, {"error": self.message})
        received, refused = 0, False

        async def limited():
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes and not refused:
                refused = True  # answered here, at once; what the app answers after that is dropped
                await _send_json(send, 413, {"error": self.message})
                raise _BodyTooLarge
            return message

        async def unless_refused(message):
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited, unless_refused)
        except _BodyTooLarge:
            pass


def too_large_message(max_upload_mb: int) -> str:
    return f"The file is larger than {max_upload_mb} MB (CATDOG_MAX_UPLOAD_MB)."


def rest_prediction(service, file, size: int | None) -> tuple[int, dict]:
    """POST /api/predict: the HTTP status and JSON for one uploaded file, on the same path as Gradio's
    /predict (validation, limits, prediction log). 200 with label, p_cat, p_dog, flags and version; 400 for a
    file that is not a usable image; 413 over CATDOG_MAX_UPLOAD_MB; 503 while no model is loaded."""
    limit = service.settings.max_upload_mb * 2**20
    if size is not None and size > limit:
        return 413, {"error": too_large_message(service.settings.max_upload_mb)}
    if service.classifier is None:
        return 503, {"error": public_message(f"No model is loaded: {service.load_error}")}
    try:
        prediction, _ = service.predict(file.read(limit + 1), origin="rest")
    except CatdogError as error:
        logger.info("refused /api/predict: %s", public_message(error))
        return 400, {"error": public_message(error)}
    return 200, {"label": prediction.label, "p_cat": prediction.p_cat, "p_dog": prediction.p_dog,
                 "flags": list(prediction.flags), "version": prediction.version}
