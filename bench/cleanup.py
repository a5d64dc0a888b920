"""What every benchmark does to leave nothing behind: one ExitStack, closed once, however the run ends."""

from __future__ import annotations

import atexit
import signal
from collections.abc import Callable
from contextlib import ExitStack


def exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally, like Ctrl-C does


def cleanup_at_exit() -> tuple[ExitStack, Callable[[], None]]:
    """An ExitStack for the run's processes, mounts and dirs, and the function that closes it: called
    by the run itself, at interpreter exit, or after SIGTERM/SIGHUP (turned into SystemExit), whichever
    comes first; Ctrl-C is ignored while it closes, so the cleanup itself is not cut short."""
    stack, closed = ExitStack(), []

    def close() -> None:
        if not closed:
            closed.append(True)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stack.close()

    atexit.register(close)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)
    return stack, close
