"""The numeric fields of tar headers: octal, or GNU's base-256 for values octal cannot hold."""

from __future__ import annotations


def number(field: bytes) -> int:
    """Decode a header number field; :class:`ValueError` if it is neither octal nor base-256."""
    if field and field[0] & 0x80:
        # base-256: big-endian two's complement, the first byte's top bit the marker (0x80 / 0xff)
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            return value - (1 << (8 * (len(field) - 1)))
        if field[0] != 0x80:
            raise ValueError(f"invalid base-256 number {field!r}")
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if any(c not in b"01234567" for c in text):
        raise ValueError(f"invalid octal number {field!r}")
    return int(text, 8)
