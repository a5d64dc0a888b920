"""Tar headers to :class:`Member` objects, in one streaming pass, with every size checked at its header.

The agent parses headers itself rather than through ``tarfile``: ``tarfile`` loops on data it skips past
the end of its input, expands sparse holes into zeros, silently ends the member list at a corrupt header,
and its pax values arrive as text (a binary xattr such as a file capability must stay bytes). Here:

- ustar, GNU and pax headers (``x`` local, ``g`` global), GNU long names (``L``/``K``), base-256 numbers;
  every header's checksum is verified; a header that is neither valid nor the all-zero end-of-archive
  block is an error, and so is an input that ends before that block;
- a member whose stored data cannot fit in what can still remain of the input is refused *at its
  header* (:meth:`Input.remaining`), and extension records have fixed limits, so no declared size makes
  the reader loop or allocate;
- sparse members (old GNU ``S``, pax 0.0/0.1/1.0) come with their segment map (see sparse.py), and their
  data is handed out segment by segment with its offset in the file: nothing here makes holes into zeros.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from hostagent.safetar import sparse
from hostagent.safetar.member import BLOCK as BLOCKDEV
from hostagent.safetar.member import CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Member
from hostagent.safetar.numbers import number
from hostagent.safetar.policy import Policy
from hostagent.safetar.stream import CHUNK, Input
from orchapi.errors import BadRequest, TruncatedInput

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
#: pax records of one member (xattrs included: ACLs, capabilities, SELinux labels are small)
PAX_LIMIT = 4 * 1024 * 1024
#: a GNU long name or link target (Linux's PATH_MAX is 4096)
LONGNAME_LIMIT = 64 * 1024
_TYPES = {b"0": FILE, b"\0": FILE, b"7": FILE, b"S": FILE, b"1": HARDLINK, b"2": SYMLINK,
          b"3": CHAR, b"4": BLOCKDEV, b"5": DIR, b"6": FIFO}  # fmt: skip
_XATTR = "SCHILY.xattr."
_UINT = re.compile(rb"\d{1,20}")
_TIME = re.compile(rb"(-?)(\d{1,20})(?:\.(\d*))?")


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class Reader:
    """Iterate over the members of ``source``; read each one's data (or not) before the next."""

    def __init__(self, source: Input, policy: Policy) -> None:
        self.input = source
        self.policy = policy
        self.buffer = memoryview(bytearray(CHUNK))
        self.members = 0
        self._pending = 0  # stored bytes of the current member not read yet
        self._padding = 0  # and the padding after them
        self._globals: dict[str, bytes] = {}
        self.ended = False

    # ---------------------------------------------------------------------------------------- headers

    def __iter__(self) -> Iterator[Member]:
        while True:
            self._skip_rest()
            member = self._next()
            if member is None:
                return
            self.members += 1
            self.input.context = member.name
            yield member

    def _header(self) -> bytes | None:
        """The next 512-byte header, or None at the end-of-archive block."""
        view = memoryview(bytearray(BLOCK))
        got = self.input.fill(view)
        if got == 0:
            if self.input.context is None:
                raise self.input.error("it is empty or holds no tar header")
            raise TruncatedInput(
                f"{self.policy.archive} is truncated after member {self.input.context!r}: "
                "it has no end-of-archive block"
            )
        if got < BLOCK:
            raise self.input.error("the input ends in the middle of a header")
        block = view.tobytes()
        if block == ZERO_BLOCK:
            return None
        if not _checksum_ok(block):
            offset = self.input.position - BLOCK
            if self.input.context is None:
                raise self.input.error("its first header has a bad checksum")
            raise BadRequest(
                f"{self.policy.archive} is corrupt: invalid tar header at offset {offset} "
                f"after member {self.input.context!r}"
            )
        return block

    def _next(self) -> Member | None:
        pax: list[tuple[str, bytes]] = []
        longname: str | None = None
        longlink: str | None = None
        while True:
            block = self._header()
            if block is None:
                self.ended = True
                return None
            kind = block[156:157]
            if kind in (b"x", b"X", b"g"):
                records = _pax_records(self._extension(block, PAX_LIMIT, "pax header"), self)
                if kind == b"g":
                    self._globals.update(dict(records))
                else:
                    pax = records
                continue
            if kind in (b"L", b"K"):
                text = _name(self._extension(block, LONGNAME_LIMIT, "GNU long name"))
                if kind == b"L":
                    longname = text
                else:
                    longlink = text
                continue
            return self._member(block, {**self._globals, **dict(pax)}, pax, longname, longlink)

    def _extension(self, block: bytes, limit: int, what: str) -> bytes:
        size = self._number(block[124:136], "size", _name(block[:100]))
        if size > limit:
            raise self._refuse(_name(block[:100]), f"has a {what} of {size} bytes (at most {limit})")
        self._fits(_name(block[:100]), _padded(size))
        data = self.input.read_exact(_padded(size), what)
        return data[:size]

    def _member(
        self,
        block: bytes,
        pax: dict[str, bytes],
        records: list[tuple[str, bytes]],
        longname: str | None,
        longlink: str | None,
    ) -> Member:
        typeflag = block[156:157]
        gnu = block[257:265] == b"ustar  \0"
        name = _name(block[:100])
        if not gnu and block[257:263] == b"ustar\0" and block[345] != 0:
            name = _name(block[345:500]) + "/" + name
        name = longname if longname is not None else name
        if "path" in pax:
            name = _text(pax["path"])
        if "GNU.sparse.name" in pax:
            name = _text(pax["GNU.sparse.name"])
        kind = _TYPES.get(typeflag)
        if kind is None:
            raise self._refuse(name, f"has an unsupported type {typeflag.decode('latin-1')!r}")
        if kind == FILE and typeflag == b"\0" and name.endswith("/"):
            kind = DIR  # old V7 archives mark directories by a trailing slash
        if kind == DIR:
            name = name.rstrip("/") or name
        link = _name(block[157:257]) if longlink is None else longlink
        if "linkpath" in pax:
            link = _text(pax["linkpath"])
        member = Member(
            name=name,
            kind=kind,
            mode=self._number(block[100:108], "mode", name) & 0o7777,
            uid=self._pax_uint(pax, "uid") if "uid" in pax else self._number(block[108:116], "uid", name),
            gid=self._pax_uint(pax, "gid") if "gid" in pax else self._number(block[116:124], "gid", name),
            mtime_ns=self._mtime(pax, block[136:148], name),
            linkname=link,
        )
        if kind in (CHAR, BLOCKDEV):
            member.devmajor = self._number(block[329:337], "devmajor", name)
            member.devminor = self._number(block[337:345], "devminor", name)
        member.xattrs = {k[len(_XATTR) :]: v for k, v in pax.items() if k.startswith(_XATTR)}
        if kind != FILE:
            return member  # only regular files have data (as tarfile and GNU tar read them)
        stored = self._pax_uint(pax, "size") if "size" in pax else self._number(block[124:136], "size", name)
        self._fits(name, _padded(stored))
        member.size = member.data = stored
        try:
            if typeflag == b"S":
                self._old_gnu_sparse(member, block, stored)
            elif pax.get("GNU.sparse.major") == b"1" and pax.get("GNU.sparse.minor") == b"0":
                self._sparse_10(member, pax, stored)
            elif "GNU.sparse.map" in pax or "GNU.sparse.size" in pax:
                pairs = (
                    sparse.pax_01(pax["GNU.sparse.map"])
                    if "GNU.sparse.map" in pax
                    else sparse.pax_00(records)
                )
                self._set_map(member, pairs, self._pax_uint(pax, "GNU.sparse.size"), stored)
        except sparse.MapError as exc:
            raise self._refuse(name, str(exc)) from None
        self._pending, self._padding = member.data, _padded(stored) - stored
        return member

    def _old_gnu_sparse(self, member: Member, block: bytes, stored: int) -> None:
        pairs, extended = sparse.old_gnu_pairs(block[386:482], 4)
        extended = extended and block[482] != 0
        while extended:
            self._fits(member.name, BLOCK)
            ext = self.input.read_exact(BLOCK, "a sparse header")
            more, full = sparse.old_gnu_pairs(ext[:504], 21)
            pairs += more
            if len(pairs) > sparse.MAX_SEGMENTS:
                raise sparse.MapError(f"its sparse map has more than {sparse.MAX_SEGMENTS} segments")
            extended = full and ext[504] != 0
        self._set_map(member, pairs, self._number(block[483:495], "realsize", member.name), stored)

    def _sparse_10(self, member: Member, pax: dict[str, bytes], stored: int) -> None:
        realsize = self._pax_uint(pax, "GNU.sparse.realsize")
        pairs, used = sparse.pax_10(lambda: self.input.read_exact(BLOCK, "a sparse map"), stored)
        self._set_map(member, pairs, realsize, stored - used)

    @staticmethod
    def _set_map(member: Member, pairs: list[tuple[int, int]], realsize: int, data: int) -> None:
        member.segments = sparse.check(pairs, realsize, data)
        member.size, member.data = realsize, data

    # ------------------------------------------------------------------------------------------- data

    def chunks(self, member: Member) -> Iterator[tuple[int, memoryview]]:
        """The current member's data as ``(offset in the file, bytes)``; each view is only valid until
        the next one (one buffer is reused)."""
        segments = member.segments if member.segments is not None else [(0, member.data)]
        for offset, length in segments:
            done = 0
            while done < length:
                step = min(length - done, len(self.buffer))
                view = self.buffer[:step]
                self.input.exact(view, f"the data of member {member.name!r}")
                self._pending -= step
                yield offset + done, view
                done += step

    def read_all(self, member: Member, limit: int) -> bytes:
        """The whole content of the current (small) member, refused beyond ``limit`` bytes."""
        if member.data > limit:
            raise self._refuse(member.name, f"is too large ({member.data} bytes, limit {limit})")
        return b"".join(bytes(v) for _, v in self.chunks(member))

    def _skip_rest(self) -> None:
        self.input.skip(self._pending + self._padding, self.buffer)
        self._pending = self._padding = 0

    def finish(self, trailing_limit: int | None) -> int:
        """After the end-of-archive block: read the rest (gzip checks its CRC); returns the decoded size."""
        assert self.ended
        self.input.drain(self.buffer, trailing_limit)
        return self.input.position

    # ------------------------------------------------------------------------------------------ checks

    def _fits(self, name: str, stored: int) -> None:
        """Refuse, at the header, data that cannot be in what remains of the input."""
        remaining = self.input.remaining()
        if remaining is not None and stored > remaining:
            raise self._refuse(
                name,
                f"declares {stored} bytes of data, but at most {remaining} can remain in the "
                f"{'decompressed ' if self.input.compressed else ''}input: it is truncated or forged",
            )

    def _refuse(self, name: str, why: str) -> BadRequest:
        return BadRequest(self.policy.refuse_text(name, why))

    def _number(self, field: bytes, what: str, name: str) -> int:
        try:
            value = number(field)
        except ValueError:
            raise self._corrupt(name, f"an invalid {what} field") from None
        if value < 0 and what != "mtime":
            raise self._corrupt(name, f"a negative {what}")
        return value

    def _corrupt(self, name: str, what: str) -> BadRequest:
        return BadRequest(f"{self.policy.archive} is corrupt: the header of member {name!r} has {what}")

    def _pax_uint(self, pax: dict[str, bytes], key: str) -> int:
        value = pax.get(key, b"")
        if not _UINT.fullmatch(value):
            raise self._corrupt(_text(pax.get("path", b"?")), f"an invalid pax {key} {value[:24]!r}")
        return int(value)

    def _mtime(self, pax: dict[str, bytes], field: bytes, name: str) -> int:
        if "mtime" not in pax:
            return self._number(field, "mtime", name) * 1_000_000_000
        match = _TIME.fullmatch(pax["mtime"])
        if not match:
            raise self._corrupt(name, f"an invalid pax mtime {pax['mtime'][:32]!r}")
        sign, whole, frac = match.groups()
        ns = int(whole) * 1_000_000_000 + int(((frac or b"") + b"000000000")[:9])
        return -ns if sign else ns


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = number(block[148:156])
    except ValueError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    if stored == unsigned:
        return True
    # some old writers summed signed chars
    high = sum(1 for b in block[:148] + block[156:] if b > 127)
    return stored == unsigned - 256 * high


def _pax_records(data: bytes, reader: Reader) -> list[tuple[str, bytes]]:
    """``"%d %s=%s\\n"`` records, in order (values stay bytes; a repeated key appears twice)."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad the last record with NULs
            break
        space = data.find(b" ", pos, pos + 21)
        if space < 0 or not data[pos:space].isdigit():
            raise reader.input.error("it holds a malformed pax record")
        length = int(data[pos:space])
        record = data[space + 1 : pos + length]
        if (
            length <= space - pos
            or pos + length > len(data)
            or not record.endswith(b"\n")
            or b"=" not in record
        ):
            raise reader.input.error("it holds a malformed pax record")
        key, value = record[:-1].split(b"=", 1)
        try:
            out.append((key.decode("utf-8"), value))
        except UnicodeDecodeError:
            raise reader.input.error("it holds a pax record whose keyword is not UTF-8") from None
        pos += length
    return [(k, v) for k, v in out if v != b"" or k.startswith(_XATTR)]
