"""The errors catdog raises on purpose. Every one is a CatdogError whose message is a sentence for the user that
says what to do; each boundary (a Gradio event, the REST route, a command-line program) catches that one class."""


class CatdogError(Exception):
    """Something went wrong that the user is told about, in a sentence that names the fix."""


class ServiceError(CatdogError, ValueError):
    """Something the user asked that cannot be done: a bad input, a wrong name, a missing token."""
