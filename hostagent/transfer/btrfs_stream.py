"""Checking a ``btrfs send`` stream on its way into ``btrfs receive``, command by command.

``btrfs receive`` runs as root and does what the stream says: it would create device nodes, give files
any owner and set any xattr, file capabilities included. For an unprivileged container the target must
refuse those *as they arrive*, not after the subvolume exists, so the stream passes through a
:class:`SendStreamGuard` between the websocket and ``btrfs receive``'s stdin. It forwards only whole
commands it has inspected (commands are small: at most 64 KiB in stream version 1), and refuses:

- stream versions other than 1, malformed framing, commands larger than :data:`MAX_COMMAND`;
- anything but exactly one subvolume (``SUBVOL`` or ``SNAPSHOT``, first) and data after ``END``;
- for unprivileged containers: ``MKNOD`` (device nodes), ``CHOWN`` to ids outside the container's
  range, and ``SET_XATTR security.capability`` values the container may not hold
  (:func:`hostagent.filecaps.refusal`).

The format (btrfs-progs ``send.h``): a 17-byte header (``btrfs-stream\\0`` + le32 version), then
commands ``le32 length, le16 command, le32 crc32c`` followed by ``length`` bytes of attributes
``le16 type, le16 length, data``. CRCs are left to ``btrfs receive``, which checks them.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable

from hostagent import filecaps
from hostagent.migration.protocol import Sink
from orchapi.errors import BadRequest, TruncatedInput

MAGIC = b"btrfs-stream\x00"
HEADER = len(MAGIC) + 4
#: the largest command accepted (version 1 commands are at most 64 KiB; v2 ones are not accepted)
MAX_COMMAND = 1 << 20
_CMD = struct.Struct("<IHI")
_TLV = struct.Struct("<HH")

# commands and attributes used here (btrfs-progs send.h)
SUBVOL, SNAPSHOT, MKNOD, SET_XATTR, CHOWN, END = 1, 2, 5, 13, 19, 21
A_MODE, A_UID, A_GID, A_XATTR_NAME, A_XATTR_DATA, A_PATH = 5, 6, 7, 13, 14, 15
_LAST_V1_COMMAND = 22
#: commands whose attributes need a look (the others, WRITE above all, are forwarded unread)
_INSPECT = frozenset({SUBVOL, SNAPSHOT, MKNOD, SET_XATTR, CHOWN})


class SendStreamGuard:
    """A sink that inspects a send stream and forwards it to ``sink`` whole command by whole command.

    ``uids``/``gids``/``cap_rootid`` are the container's (None: privileged, only the framing and the
    single subvolume are checked). ``tree`` names the container's tree inside the subvolume when it holds
    more (LXD's volumes: ``rootfs`` beside metadata files owned by the host's root, which may keep that
    owner). A refusal raises :class:`BadRequest` from :meth:`write`; the channel then stops the transfer
    (see :meth:`hostagent.migration.protocol.Channel.refuse`). The received volume's manifest is checked
    again before use (a stream may rename what it made), so this guard is the early line, not the only.
    """

    def __init__(
        self,
        sink: Sink,
        what: str,
        uids: range | None = None,
        gids: range | None = None,
        cap_rootid: int | None = None,
        tree: str | None = None,
    ) -> None:
        self.sink, self.what = sink, what
        self.uids, self.gids, self.cap_rootid = uids, gids, cap_rootid
        self.tree = tree.encode() if tree else None
        self.unprivileged = uids is not None
        self._pending = bytearray()
        self._header_seen = False
        self._subvolumes = 0
        self._ended = False
        self.commands = 0

    def _refuse(self, why: str) -> BadRequest:
        return BadRequest(f"refusing the btrfs stream of {self.what} from the source: {why}")

    async def write(self, data: bytes) -> None:
        """Inspect ``data`` and forward every whole command in it; a command cut by the frame's end is
        held back (at most one command, copied) until the next frame completes it. The rest of the
        frame is forwarded as it came, uncopied: the data of WRITE commands is never looked at."""
        for ready in self._advance(memoryview(data)):
            await self.sink.write(ready)

    def inspect(self, data: memoryview) -> None:
        """The same checks for bytes that reach ``btrfs receive`` another way (a data link's relay):
        refuse, don't forward. Safe because ``btrfs receive`` executes a command only once it has all
        of it, and a refused command's remainder is never delivered."""
        for _ready in self._advance(data):
            pass

    def _advance(self, view: memoryview) -> list[bytes | memoryview]:
        """Inspect ``view``; what may be forwarded, in order."""
        out: list[bytes | memoryview] = []
        pos = 0
        held = self._pending
        while held:  # complete the held-back unit with the start of this frame
            size = self._unit_size(held)
            take = min(size - len(held), len(view) - pos)
            held += view[pos : pos + take]
            pos += take
            if len(held) < self._unit_size(held):
                if pos == len(view):
                    return out  # still incomplete: all of this frame is held
                continue  # its header just completed: now its size is known
            self._unit(memoryview(held))
            out.append(bytes(held))
            held.clear()
        end = self._scan(view, pos)
        if end > pos:
            out.append(view[pos:end])
        held += view[end:]
        return out

    async def close(self) -> None:
        await self.sink.close()

    def finish(self) -> None:
        """After the stream: it must have ended cleanly (called when ``btrfs receive`` succeeded)."""
        if self._pending or not self._ended:
            why = "the stream ended in the middle of a command or without END"
            raise TruncatedInput(f"refusing the btrfs stream of {self.what} from the source: {why}")

    # -- parsing ---------------------------------------------------------------------------------------
    def _unit_size(self, buf: bytearray) -> int:
        """The size of the unit starting ``buf`` (the stream header, or a command) as far as known:
        a command's header size until its header is complete, then the whole command's."""
        if not self._header_seen:
            return HEADER
        if len(buf) < _CMD.size:
            return _CMD.size
        length = _CMD.unpack_from(buf, 0)[0]
        if length > MAX_COMMAND:
            raise self._refuse(f"a command of {length} bytes is larger than any btrfs send makes")
        return _CMD.size + length

    def _unit(self, unit: memoryview) -> None:
        """Inspect one whole unit: the stream header or a command."""
        if not self._header_seen:
            self._header(unit)
            return
        self._whole_command(unit, 0)

    def _header(self, buf: memoryview) -> None:
        if bytes(buf[: len(MAGIC)]) != MAGIC:
            raise self._refuse("it does not start with a btrfs send stream header")
        version = struct.unpack_from("<I", buf, len(MAGIC))[0]
        if version != 1:
            raise self._refuse(f"stream version {version} is not accepted (only version 1)")
        self._header_seen = True

    def _whole_command(self, buf: memoryview, pos: int) -> int:
        """Inspect the whole command at ``pos``; returns where the next one starts."""
        if self._ended:
            raise self._refuse("it has data after its END command")
        length, command, _crc = _CMD.unpack_from(buf, pos)
        end = pos + _CMD.size + length
        self._command(command, buf[pos + _CMD.size : end])
        self.commands += 1
        return end

    def _scan(self, view: memoryview, pos: int) -> int:
        """Inspect every whole unit of ``view`` from ``pos``; returns where the first partial one starts."""
        if not self._header_seen:
            if len(view) - pos < HEADER:
                return pos
            self._header(view[pos : pos + HEADER])
            pos += HEADER
        while len(view) - pos >= _CMD.size:
            length = _CMD.unpack_from(view, pos)[0]
            if length > MAX_COMMAND:
                raise self._refuse(f"a command of {length} bytes is larger than any btrfs send makes")
            if pos + _CMD.size + length > len(view):
                break
            pos = self._whole_command(view, pos)
        return pos

    def _command(self, command: int, body: memoryview) -> None:
        if command == 0 or command > _LAST_V1_COMMAND:
            raise self._refuse(f"unknown command {command}")
        if self._subvolumes == 0 and command not in (SUBVOL, SNAPSHOT):
            raise self._refuse("its first command does not create the subvolume")
        if command == END:
            self._ended = True
            return
        if command not in _INSPECT:
            return
        attrs = _attributes(body, self._refuse)
        if command in (SUBVOL, SNAPSHOT):
            self._subvolumes += 1
            if self._subvolumes > 1:
                raise self._refuse("it creates more than one subvolume")
            if attrs.get(A_PATH) != b"rootfs":
                raise self._refuse("its subvolume is not named 'rootfs'")
            return
        if not self.unprivileged:
            return
        raw_path = attrs.get(A_PATH, b"")
        path = raw_path.decode("utf-8", "replace")[:200]
        if command == MKNOD:
            mode = _u64(attrs.get(A_MODE))
            kind = "device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file"
            raise self._refuse(f"{path!r} is a {kind}, and the container is unprivileged")
        if command == CHOWN:
            uid, gid = _u64(attrs.get(A_UID)), _u64(attrs.get(A_GID))
            assert self.uids is not None and self.gids is not None
            host_metadata = self.tree is not None and not (
                raw_path == self.tree or raw_path.startswith(self.tree + b"/")
            )
            # LXD's volume dir and metadata files belong to the host's root or to the container's
            if host_metadata and (uid == 0 or uid in self.uids) and (gid == 0 or gid in self.gids):
                return
            if uid not in self.uids or gid not in self.gids:
                raise self._refuse(f"{path!r} would be owned by {uid}:{gid}, outside the container's ids")
            return
        if command == SET_XATTR and attrs.get(A_XATTR_NAME) == filecaps.XATTR.encode():
            why = filecaps.refusal(bytes(attrs.get(A_XATTR_DATA, b"")), self.cap_rootid)
            if why:
                raise self._refuse(f"{path!r} {why}")


def _attributes(body: memoryview, refuse: Callable[[str], BadRequest]) -> dict[int, bytes]:
    """The attributes of one command (inspected commands are small: their values are copied)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(body):
        if len(body) - pos < _TLV.size:
            raise refuse("a command's attributes are cut short")
        kind, length = _TLV.unpack_from(body, pos)
        pos += _TLV.size
        if pos + length > len(body):
            raise refuse("an attribute runs past the end of its command")
        out[kind] = bytes(body[pos : pos + length])
        pos += length
    return out


def _u64(value: bytes | None) -> int:
    if value is None or len(value) not in (4, 8):
        return -1
    return int.from_bytes(value, "little")
