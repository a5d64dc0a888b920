"""Error types that cross the API boundary.

Every failure a user can cause is an :class:`OrchError` with an HTTP status, a one-line message and,
where it helps, a hint saying what to do. The agent turns them into LXD-shaped JSON error responses; the
client turns those back into the same classes, and the CLI prints them as one line without a traceback.
"""

from __future__ import annotations


class OrchError(Exception):
    """Base class: a failure with a user-facing one-line message."""

    status = 500

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class BadRequest(OrchError):
    """The request is malformed or names something invalid."""

    status = 400


class TruncatedInput(BadRequest):
    """An input (a stream, an upload) ended before it was complete: a cut connection looks like this too,
    so a receiver that knows its connection dropped treats it as the drop (hostagent/migration/target/
    resume.py), not as bad content."""


class Forbidden(OrchError):
    """The caller is not trusted or gave a wrong password."""

    status = 403


class NotFound(OrchError):
    """The named object does not exist."""

    status = 404


class Conflict(OrchError):
    """The object exists already or is in the wrong state for this request."""

    status = 409


class TooManyRequests(OrchError):
    """The caller is being slowed down (e.g. after wrong passwords)."""

    status = 429


class InsufficientStorage(OrchError):
    """The target has not enough free space."""

    status = 507


class Unavailable(OrchError):
    """A transient condition: the agent is busy, starting or unreachable; retrying may help."""

    status = 503


class PeerUnreachable(Unavailable):
    """One agent could not connect to the other (no route, refused, no answer): the transfer may get
    through the other way round (push) or through the worker (relay). An operation that failed so says
    it in its ``err_class``; TLS or token refusals are never this."""


class InternalError(OrchError):
    """A bug or an unexpected host failure (never used for bad input)."""

    status = 500


_BY_STATUS: dict[int, type[OrchError]] = {
    cls.status: cls
    for cls in (BadRequest, Forbidden, NotFound, Conflict, TooManyRequests, InsufficientStorage, Unavailable)
}


def error_for_status(status: int, message: str) -> OrchError:
    """Rebuild the error class a server meant from its HTTP status."""
    return _BY_STATUS.get(status, InternalError)(message)
