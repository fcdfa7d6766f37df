"""The errors catdog raises on purpose. Every one is a CatdogError whose message is a sentence for the user that
says what to do; each boundary (a Gradio event, the REST route, a command-line program) catches that one class."""

import re


class CatdogError(Exception):
    """Something went wrong that the user is told about, in a sentence that names the fix."""


class ServiceError(CatdogError, ValueError):
    """Something the user asked that cannot be done: a bad input, a wrong name, a missing token."""


class LogUnavailable(ServiceError):
    """The prediction log's database cannot be reached or read."""


# An absolute path in a message tells a caller how the server's disk is laid out: only its last part is kept. A
# path right after a URL's scheme (sqlite:////srv/data/log.sqlite) counts; a URL's host and path do not.
ABSOLUTE_PATH = re.compile(r"(?:(?<![\w.:/])|(?<=:///))/(?:[^\s/'\"()]+/)+([^\s/'\"()]*)")
SHOWN_CHARACTERS = 60


def public_message(text) -> str:
    """The message as a user may see it: absolute paths reduced to their last part."""
    return ABSOLUTE_PATH.sub(r"\1", str(text))


def shown(value, limit: int = SHOWN_CHARACTERS) -> str:
    """A caller's input quoted in a message, cut to limit characters: a refusal never echoes a page back."""
    return cut(repr(value), limit)


def cut(text: str, limit: int = SHOWN_CHARACTERS) -> str:
    """text, or its first limit - 1 characters and an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"
