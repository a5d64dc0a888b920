"""Sparse members: the maps of GNU's four sparse formats, read and checked without expanding anything.

A sparse member stores only its data segments; the map says where each goes in a file of
``realsize`` bytes. ``tarfile`` produces the holes as zeros when it reads such a member (a 274-byte image
became a 300 MiB file, allocated), so the agent reads the map itself and writes each segment at its offset:
the holes stay holes, and only the segments count against the space allowed.

- old GNU (type ``S``): four ``(offset, numbytes)`` pairs in the header, then 512-byte extension blocks
  of 21 pairs while the "is extended" byte is set;
- pax 0.0: repeated ``GNU.sparse.offset`` / ``GNU.sparse.numbytes`` records; 0.1: ``GNU.sparse.map`` as
  ``offset,size,...``; both with ``GNU.sparse.size`` as the real size;
- pax 1.0 (GNU tar's default for ``--format=posix``): the map as decimal lines at the start of the
  member's data, padded to 512 bytes, the real size in ``GNU.sparse.realsize``.

Every map is refused unless its segments are in order, do not overlap, lie inside the real size and add
up to exactly the data the member stores; and it may have at most :data:`MAX_SEGMENTS` segments.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from hostagent.safetar.numbers import number

BLOCK = 512
#: a real sparse file has a few extents; a map this long is an attack on memory
MAX_SEGMENTS = 1 << 18
_DECIMAL = re.compile(rb"\d{1,20}")


class MapError(ValueError):
    """A sparse map that cannot be right (the message says why)."""


def old_gnu_pairs(area: bytes, count: int) -> tuple[list[tuple[int, int]], bool]:
    """``count`` (offset, numbytes) pairs of 24 bytes from ``area``, up to the first empty one, and
    whether the pairs ran to the end of the area (an empty pair ends the map)."""
    pairs = []
    for i in range(count):
        chunk = area[i * 24 : i * 24 + 24]
        if chunk[0] == 0:
            return pairs, False
        try:
            pairs.append((number(chunk[:12]), number(chunk[12:24])))
        except ValueError as exc:
            raise MapError(f"invalid sparse map entry: {exc}") from None
    return pairs, True


def pax_00(records: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """The pairs of the repeated ``GNU.sparse.offset``/``GNU.sparse.numbytes`` records, in order."""
    pairs: list[tuple[int, int]] = []
    offset: int | None = None
    for key, value in records:
        if key == "GNU.sparse.offset":
            if offset is not None:
                raise MapError("GNU.sparse.offset without its GNU.sparse.numbytes")
            offset = _decimal(value)
        elif key == "GNU.sparse.numbytes":
            if offset is None:
                raise MapError("GNU.sparse.numbytes without its GNU.sparse.offset")
            pairs.append((offset, _decimal(value)))
            offset = None
            _bound(len(pairs))
    if offset is not None:
        raise MapError("GNU.sparse.offset without its GNU.sparse.numbytes")
    return pairs


def pax_01(value: bytes) -> list[tuple[int, int]]:
    """``GNU.sparse.map``: ``offset,size,offset,size,...``."""
    fields = value.split(b",") if value else []
    if len(fields) % 2:
        raise MapError("GNU.sparse.map has an odd number of fields")
    _bound(len(fields) // 2)
    numbers = [_decimal(f) for f in fields]
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def pax_10(read_block: Callable[[], bytes], most: int) -> tuple[list[tuple[int, int]], int]:
    """The 1.0 map at the start of the data, read block by block (``read_block``) but never more than
    ``most`` bytes (the member's stored data); returns the pairs and the bytes the map took."""
    buf = b""
    used = 0
    numbers: list[int] = []
    wanted: int | None = None
    while wanted is None or len(numbers) < wanted:
        if b"\n" not in buf:
            if used + BLOCK > most:
                raise MapError("the sparse map runs past the member's data")
            buf += read_block()
            used += BLOCK
            continue
        line, buf = buf.split(b"\n", 1)
        numbers.append(_decimal(line))
        if wanted is None:
            _bound(numbers[0])
            wanted = 1 + 2 * numbers[0]
    return list(zip(numbers[1::2], numbers[2::2], strict=True)), used


def check(pairs: list[tuple[int, int]], realsize: int, data: int) -> list[tuple[int, int]]:
    """Refuse a map that is out of order, overlaps, leaves the file or does not add up to ``data``;
    returns the segments with data (empty ones dropped: GNU tar ends a map with ``(realsize, 0)``)."""
    _bound(len(pairs))
    end = 0
    total = 0
    segments = []
    for offset, length in pairs:
        if offset < end:
            raise MapError("its sparse map is out of order or overlaps")
        if offset + length > realsize:
            raise MapError(f"its sparse map reaches byte {offset + length}, past the file's {realsize}")
        end = offset + length
        total += length
        if length:
            segments.append((offset, length))
    if total != data:
        raise MapError(f"its sparse map holds {total} bytes, but the member stores {data}")
    return segments


def _decimal(value: bytes) -> int:
    if not _DECIMAL.fullmatch(value):
        raise MapError(f"invalid number {value[:24]!r} in a sparse map")
    return int(value)


def _bound(count: int) -> None:
    if count > MAX_SEGMENTS:
        raise MapError(f"its sparse map has more than {MAX_SEGMENTS} segments")
