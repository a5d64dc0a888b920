"""A console log that never outgrows its limit: two files, the current one and the one before.

When ``console.log`` reaches half the limit it becomes ``console.log.1`` (replacing the older one) and a
new ``console.log`` starts, so the pair holds between half the limit and the limit of the most recent
output. Reading gives both, oldest first.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the default limit of a container's console log (both files together)
DEFAULT_LIMIT = 1 << 20


class RingLog:
    def __init__(self, path: Path, limit: int = DEFAULT_LIMIT) -> None:
        self.path, self.older, self.half = path, path.with_name(path.name + ".1"), max(limit // 2, 1)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, data: bytes) -> None:
        while data:
            room = self.half - self._size
            if room <= 0:
                self._rotate()
                continue
            chunk, data = data[:room], data[room:]
            os.write(self._fd, chunk)
            self._size += len(chunk)

    def _rotate(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.older)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self._size = 0

    def close(self) -> None:
        os.close(self._fd)


def read_log(path: Path) -> bytes:
    """The console's recent output (both files, oldest first); empty if it has none."""
    out = b""
    for part in (path.with_name(path.name + ".1"), path):
        try:
            out += part.read_bytes()
        except FileNotFoundError:
            pass
    return out
