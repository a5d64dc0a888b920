"""LXD "unified" image tarballs: what they say about themselves, and unpacking their rootfs safely.

A unified tarball holds ``metadata.yaml``, the root filesystem under ``rootfs/`` and optionally
``templates/``; it is gzip-compressed or a plain tar, and its member names may start with ``./``.

Images come from users (and from peers, when a migration pulls a base image), so the archive is treated
as hostile; the checks and the writing are hostagent/safetar's, with the image policy: names inside
``rootfs/`` (no absolute names, ``..``, links that escape, writes through symlinks), ids a container can
own (0..65535), no device nodes, no xattrs, sizes bounded by the archive itself, the free space and the
caller's budget, sparse holes kept as holes. :func:`inspect_tarball` reads it once without writing
anything; :func:`extract_rootfs` inspects first, then checks again while it writes (so a hostile image
writes nothing, and a file changed in between is still caught). Both take a ``cancel`` flag, checked at
every member and chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from hostagent import safetar
from hostagent.safetar.cancel import CancelFlag
from orchapi.errors import BadRequest

#: ids a container can own: its user namespace maps exactly 65536 uids and gids
ID_LIMIT = 65536
#: metadata.yaml is a few hundred bytes; refuse to load a huge one into memory
METADATA_LIMIT = 1024 * 1024
TOP_LEVEL = ("metadata.yaml", "rootfs", "templates")


@dataclass
class ImageMetadata:
    """What an image tarball says about itself, plus sizes the store needs to plan disk space."""

    architecture: str
    creation_date: str
    properties: dict[str, str] = field(default_factory=dict)
    init: str = "/sbin/init"
    #: bytes of the decoded tar stream (headers and padding included): an upper bound for the content
    uncompressed_size: int = 0
    compressed: bool = False
    #: data bytes unpacking writes (sparse holes not counted): at most ``uncompressed_size``
    data_size: int = 0


def inspect_tarball(
    path: Path,
    *,
    cancel: CancelFlag | None = None,
    budget: int | None = None,
    apparent_limit: int | None = None,
) -> ImageMetadata:
    """Validate the whole image at ``path`` and return its metadata; :class:`BadRequest` if unusable.

    ``budget``: the most data bytes the rootfs may hold (e.g. the free space); ``apparent_limit``: the
    largest length of one (sparse) file, e.g. the filesystem's size.
    """
    policy = safetar.image_policy(budget, apparent_limit)
    result = safetar.validate(Path(path), policy, cancel=cancel, keep={"metadata.yaml": METADATA_LIMIT})
    metadata = _parse_metadata(result.kept["metadata.yaml"])
    return ImageMetadata(
        architecture=metadata["architecture"],
        creation_date=metadata["creation_date"],
        properties=metadata["properties"],
        init=metadata["properties"].get("init") or "/sbin/init",
        uncompressed_size=result.size,
        compressed=result.compressed,
        data_size=result.data,
    )


def extract_rootfs(
    path: Path,
    dest: Path,
    *,
    cancel: CancelFlag | None = None,
    budget: int | None = None,
    inspected: bool = False,
) -> None:
    """Unpack the ``rootfs/`` members of the image at ``path`` into the existing directory ``dest``.

    Numeric owners, modes (setuid included), mtimes, hard links, symlinks, fifos and sparse holes are
    kept. The image is inspected first (unless the caller just did, ``inspected``, and removes ``dest`` on
    failure), so a hostile one writes nothing; every member is checked again before it is written.
    """
    if not inspected:
        inspect_tarball(path, cancel=cancel, budget=budget)
    safetar.extract(Path(path), Path(dest), safetar.image_policy(budget), cancel=cancel)


def _parse_metadata(data: bytes) -> dict[str, Any]:
    """Check metadata.yaml and normalise it: architecture, ISO creation_date, string properties."""
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadRequest(f"image member 'metadata.yaml' is not valid YAML: {first}") from None
    if not isinstance(doc, dict):
        raise BadRequest("image member 'metadata.yaml' must be a YAML mapping")
    architecture = doc.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        raise BadRequest("image member 'metadata.yaml' has no 'architecture' string")
    return {
        "architecture": architecture,
        "creation_date": _creation_date(doc.get("creation_date")),
        "properties": _properties(doc.get("properties")),
    }


def _creation_date(value: Any) -> str:
    """An epoch number or an ISO 8601 string, as an ISO 8601 string in UTC."""
    try:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC).isoformat()
        if isinstance(value, datetime):  # YAML reads unquoted timestamps as datetimes
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
        if isinstance(value, date):  # ... and unquoted dates as dates
            return datetime(value.year, value.month, value.day, tzinfo=UTC).isoformat()
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.strip())
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()
    except (ValueError, OverflowError, OSError):
        pass
    raise BadRequest(
        "image member 'metadata.yaml' needs 'creation_date' as an epoch number or an ISO 8601 date",
        f"got {value!r}",
    )


def _properties(value: Any) -> dict[str, str]:
    """The optional ``properties`` mapping with scalar values turned into strings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("image member 'metadata.yaml' has 'properties' that is not a mapping")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, (dict, list)):
            raise BadRequest(
                f"image member 'metadata.yaml' has an invalid property {key!r}: values must be scalars"
            )
        if isinstance(item, bool):
            item = str(item).lower()
        out[key] = "" if item is None else str(item)
    return out
