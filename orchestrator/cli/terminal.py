"""The local terminal during an interactive exec: raw mode, its size, and restoring it afterwards.

Raw mode hands every key to the container untouched: Ctrl-C, Ctrl-Z and Ctrl-D are bytes that the
container's own terminal turns into SIGINT, SIGTSTP and end of input for its foreground job, exactly as
over ssh. The previous settings come back however the exec ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import termios
import tty
from collections.abc import Iterator


def is_terminal(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def size(fd: int) -> tuple[int, int]:
    """(columns, rows) of the terminal on ``fd`` (80x24 if it has none)."""
    try:
        columns, rows = os.get_terminal_size(fd)
    except OSError:
        columns, rows = shutil.get_terminal_size((80, 24))
    return columns, rows


@contextlib.contextmanager
def raw(fd: int) -> Iterator[None]:
    """``fd``'s terminal in raw mode for the duration (no-op if it is not a terminal)."""
    if not is_terminal(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
