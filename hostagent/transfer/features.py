"""What this host's end of a transfer can do, advertised in the migration header and intersected by the
target: ``xattrs`` and ``acls`` where the data dir's filesystem keeps them (rsync -X / -A need both
sides), ``zstd`` where the streams can be compressed (hostagent/transfer/compression.py)."""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

#: the feature of an agent that compresses and decompresses migration streams
ZSTD = "zstd"

_features: dict[str, frozenset[str]] = {}


def probe_features(data_dir: Path) -> frozenset[str]:
    """This host's features for volumes kept in ``data_dir``."""
    key = str(data_dir)
    if key in _features:
        return _features[key]
    found = set()
    with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".probe-") as fh:
        for name in ("trusted.orch-probe", "user.orch-probe"):
            try:
                os.setxattr(fh.name, name, b"1")
                found.add("xattrs")
                break
            except OSError:
                continue
        # the minimal access ACL (user::rw- group::r-- other::r--), equivalent to mode 0644
        acl = struct.pack("<I", 2) + b"".join(
            struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in ((1, 6), (4, 4), (0x20, 4))
        )
        try:
            os.setxattr(fh.name, "system.posix_acl_access", acl)
            found.add("acls")
        except OSError:
            pass
    if zstd_available():
        found.add(ZSTD)
    _features[key] = frozenset(found)
    return _features[key]


@functools.cache
def zstd_available() -> bool:
    """Whether this host has zstd, and its rsync (if any) compresses with it."""
    if not shutil.which("zstd"):
        return False
    if not shutil.which("rsync"):
        return True
    try:
        version = subprocess.run(["rsync", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    listed = version.split("Compress list:", 1)
    return len(listed) == 2 and "zstd" in listed[1].strip().split("\n", 1)[0]
