"""What a runtime hands the exec session: one running command and its streams.

The session (session.py) knows websockets; an :class:`ExecProcess` knows one runtime's way of running a
command (runc with pipes or a console socket; LXD's own exec websockets). Every method is async and
returns promptly, so one event loop serves any number of shells.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExecSpec:
    """One command to start, checked already (hostagent/api/exec.py)."""

    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    user: int | None = None
    group: int | None = None
    #: a terminal (one duplex stream "0") instead of three pipes
    interactive: bool = False
    width: int = 0
    height: int = 0


class ExecProcess(ABC):
    """A started command. Streams are named as on the wire: "0" in, "1" and "2" out; interactive: "0"
    both ways. :meth:`read` returns ``b""`` once a stream has ended."""

    @abstractmethod
    async def start(self) -> None:
        """Start the command (the client's websockets are all connected by now)."""

    @abstractmethod
    async def read(self, stream: str) -> bytes:
        """The next chunk of output of ``stream``, ``b""`` at its end."""

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Input for the command (waits while the command does not read)."""

    @abstractmethod
    async def close_stdin(self) -> None:
        """End of input (non-interactive; a terminal has no end of input but Ctrl-D)."""

    @abstractmethod
    async def resize(self, width: int, height: int) -> None:
        """The client's terminal changed size (the command gets SIGWINCH)."""

    @abstractmethod
    async def signal(self, number: int) -> None:
        """Deliver signal ``number`` to the command."""

    @abstractmethod
    async def wait(self) -> int:
        """The command's exit status (128 + N if signal N ended it), once it has exited."""

    @abstractmethod
    async def kill(self) -> None:
        """End the command and what it started (the client went away)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the process holds (called once, after everything else)."""
