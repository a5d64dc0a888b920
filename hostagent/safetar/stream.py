"""The decoded byte stream of one archive: exact reads, what can still remain, and no reading past the end.

Python's ``tarfile`` in stream mode skips a member's data by reading ``bufsize`` chunks in a loop that
goes on after the end of its input, where every read returns ``b""``: a 10 KiB archive declaring a 1 TiB
member kept a core busy for minutes, and nothing could stop it. Here every read is exact: a read that
the input cannot fill is a truncation error at once. And the reader can ask how much can still remain
(:meth:`Input.remaining`), so that a member declaring more data than that is refused at its header:

- a plain file: its size minus what was read;
- a gzip file: deflate expands at most about 1032 times (a stream of maximal-length back references),
  so at most ``1032 * compressed size`` decoded bytes in all;
- a pipe: unknown (None); the policy's budget and the disk bound it instead.

gzip is decoded with :mod:`gzip`, which checks the CRC and the end of the stream (``tarfile``'s own
reader checks neither). Every chunk read first looks at the cancel flag.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path
from typing import IO, BinaryIO

from hostagent.safetar.cancel import checker
from hostagent.safetar.policy import Policy
from orchapi.errors import BadRequest, TruncatedInput

#: deflate's maximum expansion (zlib's technical details: 1032:1), and room for gzip's own framing
GZIP_MAX_RATIO = 1032
_GZIP_SLACK = 64 * 1024
CHUNK = 1024 * 1024
_READ_ERRORS = (EOFError, zlib.error, OSError)
_OTHER_MAGIC = {
    b"\xfd7zXZ\x00": "xz",
    b"BZh": "bzip2",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x5d\x00\x00": "lzma",
}


class Input:
    """Reads from ``raw`` (decoded bytes), at most ``limit`` of them in all (None: unknown)."""

    def __init__(self, raw: IO[bytes], policy: Policy, limit: int | None, cancel: object = None) -> None:
        self._raw = raw
        self._policy = policy
        self.limit = limit
        self.check_cancel = checker(cancel)  # type: ignore[arg-type]
        self.position = 0
        self.compressed = False
        #: a plain regular file can skip data by seeking (validation then reads headers only)
        self._seekable = False
        #: the member being read, for error messages (set by the reader)
        self.context: str | None = None

    # -------------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: Path, policy: Policy, cancel: object = None) -> Input:
        """An archive file: gzip-compressed or plain (other compressions are named and refused)."""
        fh: BinaryIO = open(path, "rb")  # noqa: SIM115 - owned by the Input, closed by close()
        try:
            size = os.fstat(fh.fileno()).st_size
            magic = fh.read(6)
            fh.seek(0)
            for prefix, name in _OTHER_MAGIC.items():
                if magic.startswith(prefix):
                    raise BadRequest(
                        f"{policy.archive} is {name}-compressed, which is not supported",
                        "use a gzip-compressed or plain tar",
                    )
            if magic[:2] == b"\x1f\x8b":
                stream = cls(_GzipOwner(fh), policy, GZIP_MAX_RATIO * size + _GZIP_SLACK, cancel)
                stream.compressed = True
                return stream
            stream = cls(fh, policy, size, cancel)
            stream._seekable = True
            return stream
        except BaseException:
            fh.close()
            raise

    @classmethod
    def wrap(cls, raw: IO[bytes], policy: Policy, cancel: object = None) -> Input:
        """A plain tar stream of unknown length (a pipe)."""
        return cls(raw, policy, None, cancel)

    def close(self) -> None:
        self._raw.close()

    # -------------------------------------------------------------------------------------- reading

    def remaining(self) -> int | None:
        """The most decoded bytes that can still follow (None: unknown)."""
        return None if self.limit is None else max(0, self.limit - self.position)

    def error(self, detail: str) -> BadRequest:
        """A truncated or corrupt input, naming the member where it happened."""
        if self.context is None:
            return BadRequest(
                f"{self._policy.archive} is not a valid tar or gzip-compressed tar archive: {detail}"
            )
        return TruncatedInput(
            f"{self._policy.archive} is truncated or corrupt at or after member {self.context!r}: {detail}"
        )

    def _readinto(self, view: memoryview) -> int:
        try:
            n = self._raw.readinto(view)  # type: ignore[attr-defined]
        except _READ_ERRORS as exc:
            raise self.error(str(exc) or type(exc).__name__) from None
        return n or 0

    def fill(self, view: memoryview) -> int:
        """Fill ``view`` as far as the input goes; returns the bytes read (less only at the end)."""
        self.check_cancel()
        got = 0
        while got < len(view):
            n = self._readinto(view[got:])
            if n == 0:
                break
            got += n
        self.position += got
        return got

    def exact(self, view: memoryview, what: str) -> None:
        """Fill ``view`` completely, or fail as truncated."""
        if self.fill(view) != len(view):
            raise self.error(f"the input ends in the middle of {what}")

    def read_exact(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        self.exact(memoryview(buf), what)
        return bytes(buf)

    def skip(self, n: int, buffer: memoryview) -> None:
        """Pass over ``n`` bytes (seeking where the input is a plain file)."""
        if n <= 0:
            return
        if self._seekable:
            self.check_cancel()
            if self.limit is not None and self.position + n > self.limit:
                raise self.error("the input ends in the middle of a member's data")
            self._raw.seek(n, io.SEEK_CUR)
            self.position += n
            return
        while n > 0:
            step = min(n, len(buffer))
            self.exact(buffer[:step], "a member's data")
            n -= step

    def drain(self, buffer: memoryview, most: int | None = None) -> int:
        """Read to the end (gzip then checks its CRC and length); returns the bytes read. With ``most``,
        an input that goes on beyond ``most`` bytes is refused (a stream must end after its archive)."""
        total = 0
        if self._seekable:
            self.check_cancel()
            assert self.limit is not None
            total = max(0, self.limit - self.position)
            self._raw.seek(0, io.SEEK_END)
            self.position += total
            return total
        while n := self.fill(buffer):
            total += n
            if most is not None and total > most:
                raise BadRequest(f"{self._policy.archive} goes on after its end-of-archive marker")
        return total


class _GzipOwner(io.RawIOBase):
    """gzip decoding of a file, closing the file with it (GzipFile leaves a given fileobj open)."""

    def __init__(self, fh: BinaryIO) -> None:
        super().__init__()
        self._fh = fh
        self._gz = gzip.GzipFile(fileobj=fh, mode="rb")

    def readable(self) -> bool:
        return True

    def readinto(self, view: memoryview) -> int:  # type: ignore[override]
        return self._gz.readinto(view)

    def close(self) -> None:
        try:
            self._gz.close()
        finally:
            self._fh.close()
            super().close()
