"""Compression of the migration streams (zstd), negotiated between the two agents.

Who compresses: rsync itself (``--compress-choice=zstd``: only the literal data of its delta travels
compressed); the other streaming methods' streams (tar, btrfs send) pass through a ``zstd`` process on
each side, between the local process and the relay. The manifests are computed on the volumes' files,
so compression changes nothing of what is verified.

When (the job's wish, ``--compress``; the target decides, as it does the method):

- ``none``: never;
- ``zstd``: whenever both agents have it; otherwise the transfer runs uncompressed and says so;
- ``auto`` (the default): when a bandwidth limit applies to the transfer (the job's, or the source's or
  the target's total): on a LAN at full speed, compressing costs more CPU than it saves.

The peer is not trusted to compress honestly: what the target decompresses is bounded like what it
receives uncompressed (tar's allowance counts decompressed data in safetar; a btrfs stream is counted
against its allowance as it leaves ``zstd -d``), and ``zstd -d`` is kept to a 64 MiB window whatever a
frame asks for, so a small hostile stream can neither fill the disk nor the memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import IO, Any

from hostagent.transfer import features
from hostagent.transfer.base import Child, grow_pipe
from orchapi.errors import BadRequest

ZSTD = FEATURE = features.ZSTD
#: what a job may ask for
WISHES = ("auto", "zstd", "none")
#: zstd's level: ~300 MB/s per core here, a third of the size for text-heavy trees
LEVEL = 3
#: the largest window ``zstd -d`` accepts (LEVEL uses 2 MiB; a hostile frame may ask for 2 GiB)
MAX_WINDOW = "64MB"


def check_wish(wish: Any) -> str:
    """A job's ``compression`` as given (absent: ``auto``); :class:`BadRequest` for anything else."""
    if wish is None or wish == "":
        return "auto"
    if wish not in WISHES:
        raise BadRequest(f"unknown compression {wish!r}", "use one of " + ", ".join(WISHES))
    return str(wish)


def choose(wish: str, shared_features: frozenset[str], limited: bool) -> str:
    """The compression of one transfer: ``"zstd"`` or ``""`` (none). ``shared_features`` are the ones
    both agents have; ``limited``: whether a bandwidth limit applies."""
    if wish == "none" or FEATURE not in shared_features:
        return ""
    if wish == ZSTD or limited:
        return ZSTD
    return ""


def compress_argv() -> list[str]:
    return ["zstd", "-q", "-c", f"-{LEVEL}"]


def decompress_argv() -> list[str]:
    return ["zstd", "-q", "-d", "-c", f"--memory={MAX_WINDOW}"]


def rsync_options(compression: str) -> list[str]:
    """The rsync client's compression options (the server learns them from its command line)."""
    return ["--compress", "--compress-choice=zstd"] if compression == ZSTD else []


class Compressed:
    """A sending process whose output passes through ``zstd``: used where a :class:`Child` is (its
    ``proc.stdout``, ``wait``, ``kill``, messages), the producer's failure reported first."""

    def __init__(self, producer: Child, zstd: Child) -> None:
        self.producer, self.zstd = producer, zstd
        self.proc = zstd.proc
        self._failed: Child = producer

    @classmethod
    async def spawn(
        cls, argv: list[str], what: str, *, stdout: Any = asyncio.subprocess.DEVNULL
    ) -> Compressed:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        grow_pipe(write_fd)
        try:
            producer = await Child.spawn(argv, what, stdout=write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        try:
            zstd = await Child.spawn(
                compress_argv(), f"zstd (compressing for {what})", stdin=read_fd, stdout=stdout
            )
        except BaseException:
            await producer.kill()
            raise
        finally:
            os.close(read_fd)
        return cls(producer, zstd)

    async def wait(self) -> int:
        code, zcode = await asyncio.gather(self.producer.wait(), self.zstd.wait())
        self._failed = self.producer if code or not zcode else self.zstd
        return code or zcode

    async def kill(self) -> None:
        await self.producer.kill()
        await self.zstd.kill()

    def stderr(self) -> str:
        return self._failed.stderr()

    def last_error_line(self) -> str:
        return self._failed.last_error_line()

    def failure(self, code: int, where: str) -> Exception:
        return self._failed.failure(code, where)


async def spawn_sender(compression: str, argv: list[str], what: str, *, stdout: Any) -> Child | Compressed:
    """The sending process of a stream method, compressed or not."""
    if compression == ZSTD:
        return await Compressed.spawn(argv, what, stdout=stdout)
    return await Child.spawn(argv, what, stdout=stdout)


class Decompressor:
    """``zstd -d`` between what arrives (``sink_stdin``: written by the channel's sink, or the write end
    :attr:`in_fd` a data-link relay fills) and ``stdout`` (a pipe the local consumer reads, or PIPE)."""

    def __init__(self, child: Child, in_fd: int | None) -> None:
        self.child = child
        self.in_fd = in_fd

    @classmethod
    async def start(cls, what: str, *, stdout: Any, from_link: bool) -> Decompressor:
        """``from_link``: the input is a pipe whose write end (:attr:`in_fd`, the caller's to hand on)
        a relay writes; otherwise ``child.proc.stdin`` is the input."""
        read_fd = write_fd = None
        if from_link:
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            grow_pipe(write_fd)
        try:
            child = await Child.spawn(
                decompress_argv(),
                f"zstd (decompressing {what})",
                stdin=read_fd if read_fd is not None else asyncio.subprocess.PIPE,
                stdout=stdout,
            )
        except BaseException:
            for fd in (read_fd, write_fd):
                if fd is not None:
                    os.close(fd)
            raise
        if read_fd is not None:
            os.close(read_fd)
        return cls(child, write_fd)

    async def finish(self, what: str) -> None:
        """Wait for the end; a stream zstd could not decode is the peer's fault."""
        code = await self.child.wait()
        if code != 0:
            raise BadRequest(
                f"the source's compressed stream of {what} is corrupt: "
                f"{self.child.last_error_line() or f'zstd exit status {code}'}"
            )

    async def kill(self) -> None:
        await self.child.kill()
        if self.in_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.in_fd)
            self.in_fd = None


class CountingReader:
    """A binary stream's ``readinto``/``read`` with the bytes read counted (a decompressed stream's
    payload bytes, for the job's wire-versus-payload report)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def readinto(self, view: Any) -> int:
        n = self.raw.readinto(view) or 0  # type: ignore[attr-defined]
        self.count += n
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def close(self) -> None:
        self.raw.close()
