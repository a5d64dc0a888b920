"""Reading and writing a non-blocking file descriptor (a pty master) from the event loop.

asyncio's pipe transports treat the EIO a pty master returns once its terminal has closed as a fatal
error, and offer no way to resize; these two helpers are all the terminal needs.
"""

from __future__ import annotations

import asyncio
import errno
import os

CHUNK = 1 << 16


async def _ready(fd: int, writing: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if writing else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if writing else loop.remove_reader)(fd)


async def read(fd: int) -> bytes:
    """Up to :data:`CHUNK` bytes, ``b""`` once the other side is gone (EOF, or EIO on a pty)."""
    while True:
        try:
            return os.read(fd, CHUNK)
        except BlockingIOError:
            await _ready(fd, writing=False)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


async def write(fd: int, data: bytes) -> None:
    """All of ``data``; raises :class:`OSError` if the other side is gone."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _ready(fd, writing=True)
