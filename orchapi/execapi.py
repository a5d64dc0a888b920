"""The exec protocol's shared vocabulary, used by the agent and the CLI (LXD's exec, same shapes).

``POST /1.0/containers/<name>/exec`` with ``wait-for-websocket: true`` answers an operation whose
metadata ``fds`` maps each stream to a one-time secret: ``"0"`` alone (both directions of the terminal)
when ``interactive``, else ``"0"`` (stdin), ``"1"`` (stdout) and ``"2"`` (stderr); plus ``"control"``.
Each is opened as ``/1.0/operations/<id>/websocket?secret=<secret>``. Data travels as binary frames; a
stream's end is the websocket's close (an empty binary frame means the same, as some LXD clients send
it). The control websocket carries JSON text frames, exactly LXD's::

    {"command": "window-resize", "args": {"width": "80", "height": "24"}}
    {"command": "signal", "signal": 15}

When the command has ended and its output is drained, the operation succeeds with metadata
``{"return": <exit status>}`` (128 + N when signal N ended it).
"""

from __future__ import annotations

import json
import signal as signals
from dataclasses import dataclass
from typing import Any

from orchapi.errors import BadRequest

STDIN, STDOUT, STDERR, CONTROL = "0", "1", "2", "control"
#: the largest terminal the control channel accepts (a bigger one is a mistake or an attack)
MAX_TERMINAL = 10_000


def fds_for(interactive: bool) -> tuple[str, ...]:
    """The websockets an exec waits for before it starts the command."""
    return (STDIN, CONTROL) if interactive else (STDIN, STDOUT, STDERR, CONTROL)


@dataclass(frozen=True)
class Resize:
    width: int
    height: int

    def to_json(self) -> str:
        args = {"width": str(self.width), "height": str(self.height)}
        return json.dumps({"command": "window-resize", "args": args})


@dataclass(frozen=True)
class Signal:
    signal: int

    def to_json(self) -> str:
        return json.dumps({"command": "signal", "signal": self.signal})


def terminal_size(width: Any, height: Any) -> tuple[int, int]:
    """Width and height as numbers a terminal can have (LXD sends them as strings)."""
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        raise BadRequest("terminal width and height must be numbers") from None
    if not (0 <= w <= MAX_TERMINAL and 0 <= h <= MAX_TERMINAL):
        raise BadRequest(f"terminal width and height must be between 0 and {MAX_TERMINAL}")
    return w, h


def parse_control(text: str) -> Resize | Signal:
    """One control message; :class:`BadRequest` for anything else."""
    try:
        msg = json.loads(text)
    except ValueError:
        raise BadRequest("control messages are JSON") from None
    if not isinstance(msg, dict):
        raise BadRequest("a control message is a JSON object")
    command = msg.get("command")
    if command == "window-resize":
        args = msg.get("args")
        if not isinstance(args, dict):
            raise BadRequest("window-resize needs args with width and height")
        return Resize(*terminal_size(args.get("width"), args.get("height")))
    if command == "signal":
        number = msg.get("signal")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= signals.SIGRTMAX:
            raise BadRequest(f"signal must be a signal number between 1 and {int(signals.SIGRTMAX)}")
        return Signal(number)
    raise BadRequest(f"unknown control command {str(command)[:40]!r}", "use window-resize or signal")
