"""Cancelling work that runs in a thread: a flag the work checks between chunks and members.

A thread cannot be interrupted from outside, so an extraction that must stop when its operation is
cancelled (``DELETE /1.0/operations/<id>``) looks at a flag at every member and every chunk it reads
(at most one chunk, a MiB, between two looks) and raises :class:`Cancelled`; its caller then removes what
it made, as for any other failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

#: what callers pass: an event that is set on cancellation, or a function that says so
CancelFlag = threading.Event | Callable[[], bool]


class Cancelled(Exception):
    """The work was cancelled; nothing it made should be kept."""

    def __init__(self) -> None:
        super().__init__("cancelled")


def checker(cancel: CancelFlag | None) -> Callable[[], None]:
    """A function that raises :class:`Cancelled` once ``cancel`` says so (a no-op without a flag)."""
    if cancel is None:
        return _never
    is_set = cancel.is_set if isinstance(cancel, threading.Event) else cancel

    def check() -> None:
        if is_set():
            raise Cancelled()

    return check


def _never() -> None:
    return None
