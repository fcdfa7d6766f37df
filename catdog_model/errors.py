"""The error a user is told about: something asked of the app that cannot be done."""


class ServiceError(ValueError):
    """Something the user asked that cannot be done; the message says what to do instead."""
