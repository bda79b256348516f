"""Domain errors of the inference server; each carries the ``outcome`` it is counted as.

Raised by the data plane (admission, scheduler, runtimes) and the wire parser; only
``app`` turns them into HTTP status codes, so nothing below it knows about HTTP.
"""
from __future__ import annotations


class ServeError(Exception):
    """Base: a request could not be served. ``outcome`` labels the requests metric."""

    outcome = "error"


class BadRequest(ServeError):
    """The request is malformed or does not fit the model (names, shapes, dtypes)."""

    outcome = "bad_request"


class ModelNotFound(ServeError):
    """The URL names a model or version this server does not serve."""

    outcome = "not_found"


class PayloadTooLarge(ServeError):
    """The body is larger than the configured limit."""

    outcome = "too_large"


class NotReady(ServeError):
    """The model is still loading/warming up, or the server is draining."""

    outcome = "not_ready"


class Overloaded(ServeError):
    """The queue is full: the client should retry after ``retry_after_s``."""

    outcome = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TimedOut(ServeError):
    """The request did not finish within its deadline."""

    outcome = "timeout"


class InferenceFailed(ServeError):
    """The backend raised while running a batch (a server-side fault, not the client's)."""

    outcome = "error"


class StartupError(Exception):
    """The server cannot start (no matching engine, unreadable model): the message says what to do."""
