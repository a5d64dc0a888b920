"""Safe reading and extraction of every tar archive the agent reads: images, and the tar transfer method.

Archives come from users (image uploads), from peers that may be compromised (base images pulled from a
source agent, volumes streamed by it), so one validator and one writer serve them all, driven by a
:class:`~hostagent.safetar.policy.Policy`:

- :func:`validate` reads an archive once, writing nothing, and refuses (:class:`BadRequest`, naming the
  member; :class:`InsufficientStorage` for sizes) anything the policy does not allow, or a corrupt or
  truncated archive;
- :func:`extract` checks every member again as it writes it below the destination (so it is safe on its
  own), with the fd-relative, no-follow writer (writer.py).

Both stop promptly (:class:`~hostagent.safetar.cancel.Cancelled`) when their ``cancel`` flag is raised:
the flag is checked at every member and every chunk. Their cost is bounded by the input: no declared size
makes them loop, allocate or write more than the archive holds and the policy allows.

Modules: policy (what is allowed), stream (the decoded input and its bounds), reader (headers to
members), sparse (sparse maps), validator and layout (the checks), xattrs (which xattrs), writer.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from hostagent.safetar.cancel import CancelFlag, Cancelled
from hostagent.safetar.policy import Layout, Policy, XattrRule, image_policy, volume_policy
from hostagent.safetar.reader import Reader
from hostagent.safetar.stream import Input
from hostagent.safetar.validator import Validator
from hostagent.safetar.writer import DIR_FLAGS, Writer
from orchapi.errors import InsufficientStorage

__all__ = [
    "CancelFlag",
    "Cancelled",
    "Layout",
    "Policy",
    "Result",
    "XattrRule",
    "extract",
    "image_policy",
    "validate",
    "volume_policy",
]

#: a stream may go on this far after its end-of-archive block (tar pads to its record size)
TRAILING_LIMIT = 1024 * 1024
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class Result:
    members: int
    #: data bytes the members write (sparse holes not counted)
    data: int
    #: bytes of the decoded archive (headers and padding included)
    size: int
    compressed: bool
    #: the content of the members asked for with ``keep``, by normalised path
    kept: dict[str, bytes] = field(default_factory=dict)


Source = Path | str | IO[bytes]


def validate(
    source: Source, policy: Policy, *, cancel: CancelFlag | None = None, keep: Mapping[str, int] | None = None
) -> Result:
    """Check the whole archive without writing anything.

    ``source`` is a file (gzip-compressed or plain) or a plain tar stream; ``keep`` maps normalised member
    paths (``"metadata.yaml"``) to the most bytes of content to return for them in :attr:`Result.kept`.
    """
    return _run(source, policy, None, cancel, keep or {})


def extract(
    source: Source,
    dest: Path,
    policy: Policy,
    *,
    cancel: CancelFlag | None = None,
    keep: Mapping[str, int] | None = None,
) -> Result:
    """Check and write the archive's members below the existing directory ``dest``.

    A refused member stops the extraction: what was written before it stays, for the caller to remove
    (validate first to write nothing for a hostile archive).
    """
    return _run(source, policy, Path(dest), cancel, keep or {})


def _run(
    source: Source, policy: Policy, dest: Path | None, cancel: CancelFlag | None, keep: Mapping[str, int]
) -> Result:
    owned = isinstance(source, (str, Path))
    stream = Input.open(Path(source), policy, cancel) if owned else Input.wrap(source, policy, cancel)  # type: ignore[arg-type]
    root_fd: int | None = None
    writer: Writer | None = None
    try:
        if dest is not None:
            root_fd = os.open(dest, DIR_FLAGS)
            writer = Writer(root_fd)
        validator = Validator(policy, _space(root_fd) if root_fd is not None else None)
        reader = Reader(stream, policy)
        kept: dict[str, bytes] = {}
        for member in reader:
            stream.check_cancel()
            verdict = validator.check(member)
            key = "/".join(verdict.parts)
            if key in keep:
                kept[key] = reader.read_all(member, keep[key])
            elif writer is not None and verdict.written is not None:
                writer.write(member, verdict, reader.chunks(member))
        validator.complete()
        size = reader.finish(None if owned else TRAILING_LIMIT)
        if writer is not None:
            writer.finish()
        return Result(reader.members, validator.used, size, stream.compressed, kept)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            where = (
                "device while unpacking the image"
                if policy.layout is Layout.IMAGE
                else ("the target while receiving the volume")
            )
            raise InsufficientStorage(f"no space left on {where}") from None
        raise
    finally:
        if writer is not None:
            writer.close()
        if root_fd is not None:
            os.close(root_fd)
        if owned:
            stream.close()


def _space(root_fd: int):  # type: ignore[no-untyped-def]
    """(free, total) bytes of the filesystem holding ``root_fd``."""

    def space() -> tuple[int, int]:
        st = os.fstatvfs(root_fd)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    return space
