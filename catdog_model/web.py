"""What the web layer enforces around Gradio: file inputs must be files this app received through its upload
route, and every refusal reaches the user as catdog's own sentence (logged as one line, no traceback)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import os
import stat
import time
import traceback
import urllib.parse
from pathlib import Path

import anyio.to_thread
from fastapi.responses import JSONResponse

from .config import is_loopback_authority
from .errors import CatdogError, ServiceError, public_message, shown
from .images import MemoryBudget, ServerBusy, wait_deadline

logger = logging.getLogger(__name__)

UPLOADED_FILES_ONLY = ("Only files uploaded to this app can be used as input: upload the file first (gradio_client's "
                       "handle_file, or POST /gradio_api/upload) and send the path that the upload returns.")
GRADIO_API = "/gradio_api/"
MAX_CALL_BYTES = 2**20  # a call's JSON names files and short texts; anything larger is refused unread
UPLOAD_ROUTE = "/gradio_api/upload"
JOIN_ROUTE = "/gradio_api/queue/join"
NO_IMAGE = "No image was given: upload, drop or paste a photo."
NO_LONGER_UPLOADED = ("This file is no longer on the server (uploads are kept for CATDOG_FILE_CACHE_MINUTES): "
                      "upload it again.")
UNREADABLE_CALL = ('This call\'s fields are not what Gradio expects: send {"data": [inputs]} as JSON (its API page '
                   "shows each endpoint's inputs), or use gradio_client.")
MAX_PATH_CHARACTERS = 4096  # resolving a longer one, `..` by `..`, would stall the event loop
BUSY_POLL_SECONDS = 0.05  # how often a request waiting for decode memory looks again


def is_uploaded_file(path, upload_folder: str) -> bool:
    """True for a regular file inside the upload folder, after symlinks and `..` are resolved."""
    if not isinstance(path, str) or not path or "\0" in path or len(path) > MAX_PATH_CHARACTERS:
        return False
    root = os.path.realpath(upload_folder)
    real = os.path.realpath(path)
    if os.path.commonpath([real, root]) != root or real == root:
        return False
    try:
        return stat.S_ISREG(os.stat(real).st_mode)  # not a FIFO, a device or a folder
    except OSError:
        return False


def was_uploaded(path, upload_folder: str) -> bool:
    """A path of the kind Gradio's upload route returns (a plain name inside the upload folder) whose file is
    gone: kept CATDOG_FILE_CACHE_MINUTES, then deleted. Says nothing of any path outside the folder."""
    if not isinstance(path, str) or len(path) > MAX_PATH_CHARACTERS or "\0" in path:
        return False
    root = os.path.realpath(upload_folder)
    return (os.path.isabs(path) and ".." not in path.split(os.sep) and os.path.commonpath([path, root]) == root
            and path != root and not os.path.lexists(path))


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


class CheckedCalls:
    """ASGI middleware in front of Gradio's routes that run events: a call is refused with one sentence (400,
    logged as one line) before Gradio reads, hashes or copies anything when its inputs do not fit the event —
    how many there are, a file given as anything but a file uploaded to this app (Gradio 6 skips its own check
    in apps mounted with mount_gradio_app), a choice that is not offered. Gradio would refuse most of these
    itself, but with a traceback in the log and no sentence for the caller."""

    def __init__(self, app, blocks, upload_folder=None):
        from gradio.utils import get_upload_folder

        self.app = app
        self.blocks = blocks
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
            call = json.loads(body) if body else None
            problem = self._problem(path, call)
        except ValueError:
            problem = None  # not JSON: Gradio refuses it itself
        except Exception as error:  # nested too deep, say: whatever this is, it is not a call to run
            problem = f"This call could not be read ({type(error).__name__}); send {{\"data\": [inputs]}} as JSON."
        if problem:
            logger.info("refused a call to %s: %s", path, problem)
            await _send_refusal(send, path, problem)
            return

        async def replay():
            return messages.pop(0) if messages else await receive()

        refused = False

        async def sentence_for_invalid_fields(message):
            """FastAPI answers a body that Gradio's request model refuses with 422 and the input echoed whole."""
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 422:
                refused = True
                logger.info("refused a call to %s: %s", path, UNREADABLE_CALL)
                await _send_refusal(send, path, UNREADABLE_CALL)
            elif not refused:
                await send(message)

        await self.app(scope, replay, sentence_for_invalid_fields)

    def _problem(self, path: str, call) -> str | None:
        """Why the call cannot run, in a sentence; None when it can (or when Gradio will say so itself)."""
        upload_folder = self.upload_folder()
        candidates = {path if isinstance(path, str) else None for path in file_paths(call)}  # each checked once
        for candidate in candidates:
            if not is_uploaded_file(candidate, upload_folder):
                return NO_LONGER_UPLOADED if was_uploaded(candidate, upload_folder) else UPLOADED_FILES_ONLY
        route = path[path.index(GRADIO_API) + len(GRADIO_API):].strip("/").split("/")
        if route[:2] == ["call", "v2"] and len(route) > 2:
            return self._keywords_problem(route[2], call)
        if not isinstance(call, dict):
            return 'A call is a JSON object: send {"data": [inputs]}.'
        if "data" not in call:
            return None
        try:
            event = self._event(route, call)
        except LookupError:
            return f"This app has no event number {shown(call['fn_index'])}; see its API page for the endpoints."
        return event and inputs_problem(event, call["data"])

    def _keywords_problem(self, api_name: str, call) -> str | None:
        """/call/v2/<name> takes the inputs by parameter name, as an object; Gradio would echo an unknown name
        whole in a traceback."""
        event = next((fn for fn in self.blocks.fns.values() if fn.api_name == api_name), None)
        endpoint = self._api_info()["named_endpoints"].get(f"/{api_name}")
        if event is None or endpoint is None:
            return f"This app has no endpoint /{shown(api_name, 100)}; see its API page for the endpoints."
        parameters = {parameter["parameter_name"]: parameter for parameter in endpoint["parameters"]}
        if not isinstance(call, dict):
            return f"/call/v2/{api_name} takes its inputs by name, as a JSON object with keys {', '.join(parameters)}."
        unknown = [key for key in call if key not in parameters and key != "oauth_token"]
        if unknown:
            return (f"/{api_name} has no input {shown(unknown[0], 100)}; its inputs are "
                    f"{', '.join(parameters) or 'none'}.")
        missing = [name for name, parameter in parameters.items()
                   if name not in call and not parameter["parameter_has_default"]]
        if missing:
            return f"/{api_name} needs a value for {', '.join(missing)}."
        given = iter([call.get(name, parameter["parameter_default"]) for name, parameter in parameters.items()])
        return inputs_problem(event, [None if component.skip_api else next(given) for component in event.inputs])

    @functools.cache
    def _api_info(self) -> dict:
        return self.blocks.get_api_info(all_endpoints=True)

    def _event(self, route: list[str], call: dict):
        if "fn_index" in call:  # queue/join; and /run/ and /api/, where Gradio runs this event, not the URL's
            try:
                return self.blocks.fns[int(call["fn_index"])]
            except (KeyError, TypeError, ValueError, OverflowError):
                raise LookupError(call["fn_index"]) from None
        if len(route) >= 2 and route[0] in ("call", "run", "api"):
            return next((fn for fn in self.blocks.fns.values() if fn.api_name == route[1]), None)
        return None


FILE_DATA = "gradio.FileData"


def inputs_problem(event, data) -> str | None:
    """Why data cannot be the inputs of a Gradio event (a BlockFunction), in a sentence naming the fix."""
    import gradio as gr

    name = f"/{event.api_name}"
    if not isinstance(data, list) or len(data) != len(event.inputs):
        given = len(data) if isinstance(data, list) else "not a list"
        return (f"{name} takes {len(event.inputs)} input(s) ({', '.join(_input_names(event)) or 'none'}) as a "
                f"list; this call gave {given}.")
    for index, (component, value) in enumerate(zip(event.inputs, data)):
        if isinstance(component, (gr.File, gr.Image)):
            many = getattr(component, "file_count", "single") != "single"
            values = value if many and isinstance(value, list) else [value]
            if (many and not isinstance(value, (list, type(None)))) or not all(
                    item is None or _is_file_data(item) for item in values):
                kind = "a list of files" if many else "a file"
                return (f"{name}: {_input_names(event)[index]!r} must be {kind} uploaded to this app: with "
                        "gradio_client, pass handle_file(path) rather than the path itself.")
        elif not event.preprocess:
            continue  # the event reads its other inputs itself, and says what is wrong in its own sentence
        elif isinstance(component, gr.Radio):
            choices = [choice[1] if isinstance(choice, (list, tuple)) else choice for choice in component.choices]
            if value not in choices:
                return (f"{name}: {_input_names(event)[index]!r} must be one of {', '.join(map(str, choices))}, "
                        f"not {shown(value)}.")
        elif isinstance(component, gr.Textbox) and not isinstance(value, (str, type(None))):
            return f"{name}: {_input_names(event)[index]!r} must be text, not {shown(value)}."
    return None


def _input_names(event) -> list[str]:
    """The names a caller knows the inputs by: the function's parameters, else the components' labels."""
    try:
        parameters = list(inspect.signature(event.fn).parameters)
    except (TypeError, ValueError):
        parameters = []
    return [parameters[index] if index < len(parameters) else getattr(component, "label", None) or f"input {index + 1}"
            for index, component in enumerate(event.inputs)]


def _is_file_data(value) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("path"), str)
            and isinstance(value.get("meta"), dict) and value["meta"].get("_type") == FILE_DATA)


class LoopbackHostOnly:
    """ASGI middleware for a server open without a token because only this machine can reach it. A request
    addressed to another name (or to none) was relayed — by a web page whose name was rebound to 127.0.0.1 (DNS
    rebinding), or by a proxy that keeps the client's Host — and a POST from a page of any other origin, another
    local web app's on another port included, comes from a browser that someone else steers: both are refused
    before any endpoint sees them. A POST with no Origin comes from a program, not a page."""

    def __init__(self, app, port: int, server_name: str = "127.0.0.1"):
        self.app = app
        self.port = port
        self.own_names = {"localhost", server_name.lower()}
        self.message = loopback_only_message(port)
        self.logged: set[str] = set()

    def _own_origin(self, origin: str) -> bool:
        parts = urllib.parse.urlsplit(origin)
        try:
            port = parts.port or 80
        except ValueError:
            return False
        # The name this server listens on (or localhost), exactly: another loopback address (127.0.0.2, [::1])
        # on the same port is another server, whose pages are not this app's.
        return (parts.scheme == "http" and port == self.port and is_loopback_authority(parts.netloc)
                and (parts.hostname or "") in self.own_names)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        origin = headers.get(b"origin")
        unsafe = scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS")
        if not is_loopback_authority(host):
            refused = f"addressed to {shown(host, 100)}"
        elif origin is not None and unsafe and not self._own_origin(origin.decode("latin-1")):
            refused = f"from a page of {shown(origin.decode('latin-1'), 100)}"
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
            "another name, behind a proxy or to pages of other origins.")


async def _send_json(send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _send_refusal(send, path: str, sentence: str) -> None:
    """400 with {"error": sentence}; on the queue's join route (gradio_client's and the browser's), 422 in the
    form of Gradio's own input validation as well, the one refusal gradio_client shows its caller in words
    (ValidationError) rather than as a bare HTTP status."""
    if path.rstrip("/").endswith(JOIN_ROUTE):
        await _send_json(send, 422, {"error": sentence, "detail": [
            {"__type__": "validate", "is_valid": False, "parameter_name": "call", "message": sentence}]})
    else:
        await _send_json(send, 400, {"error": sentence})


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


def as_gradio_errors(function):
    """Every refusal reaches the caller as a gr.Error sentence, logged as one line, not a stack trace: catdog's
    own (CatdogError) as they are, anything else — inputs of a kind the endpoint does not take, say — as a
    sentence naming the endpoint, with the place it failed in the log line. Works for plain functions,
    coroutines and generators (events that stream progress)."""
    import gradio as gr

    def refusal(error: Exception) -> Exception:
        if isinstance(error, CatdogError):
            message = public_message(error)
            logger.info("refused %s: %s", function.__name__, message)
        else:
            where = traceback.extract_tb(error.__traceback__)[-1]
            message = (f"{function.__name__} could not use the inputs it was given; see this app's API page "
                       "(\"Use via API\") for the parameters it takes.")
            logger.warning("%s failed: %s: %s (%s:%d)", function.__name__, type(error).__name__,
                           shown(str(error), 200), Path(where.filename).name, where.lineno)
        return gr.Error(message, print_exception=False)

    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def stream(*arguments, **keywords):
            try:
                yield from function(*arguments, **keywords)
            except Exception as error:
                raise refusal(error) from None
        return stream

    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def call_async(*arguments, **keywords):
            try:
                return await function(*arguments, **keywords)
            except Exception as error:
                raise refusal(error) from None
        return call_async

    @functools.wraps(function)
    def call(*arguments, **keywords):
        try:
            return function(*arguments, **keywords)
        except Exception as error:
            raise refusal(error) from None
    return call


async def admitted(call, budget: MemoryBudget):
    """Run call, which decodes an image, in a worker thread that never waits there for decode memory: while
    other decodes hold it, the wait happens here, on the event loop, so the threads that every other request
    shares stay free. ServerBusy after the budget's wait_seconds."""
    deadline = time.monotonic() + budget.wait_seconds
    while True:
        context = wait_deadline.set(-math.inf)
        try:
            return await anyio.to_thread.run_sync(call)
        except ServerBusy as busy:
            while not budget.has_room(busy.amount):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(BUSY_POLL_SECONDS)
        finally:
            wait_deadline.reset(context)


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


async def rest_prediction(service, upload) -> JSONResponse:
    """POST /api/predict: the answer for one uploaded file, on the same path as Gradio's /predict (validation,
    limits, prediction log). 200 with label, p_cat, p_dog, flags and version; 400 for a file that is not a
    usable image; 413 over CATDOG_MAX_UPLOAD_MB; 503 while no model is loaded, and with Retry-After while other
    large images hold the decode memory."""
    limit = service.settings.max_upload_mb * 2**20
    if upload.size is not None and upload.size > limit:
        return _refusal(413, too_large_message(service.settings.max_upload_mb))
    if service.serving_model is None:
        return _refusal(503, f"No model is loaded: {service.load_error}")
    data = await upload.read(limit + 1)
    try:
        prediction, _ = await admitted(lambda: service.predict(data, origin="rest"), service.limits.budget)
    except ServerBusy as error:
        return _refusal(503, error, {"Retry-After": str(error.retry_after_seconds)})
    except CatdogError as error:
        return _refusal(400, error)
    return JSONResponse({"label": prediction.label, "p_cat": prediction.p_cat, "p_dog": prediction.p_dog,
                         "flags": list(prediction.flags), "version": prediction.version})


def _refusal(status: int, error, headers: dict | None = None) -> JSONResponse:
    message = public_message(error)
    logger.info("refused /api/predict (%d): %s", status, message)
    return JSONResponse({"error": message}, status_code=status, headers=headers)
