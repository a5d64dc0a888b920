"""Who may reach what on an agent's disk: the one place that sets the modes of the agent's directories.

Local users are unprivileged and curious, and container trees are full of setuid files (owned by host
root in privileged containers and unpacked images, by the container's root in unprivileged ones), so
no unprivileged host user may list, read or execute anything in a volume. The tightest scheme that still
lets runc start an unprivileged container — its init runs as the container's host root and must walk
from ``/`` down to its rootfs — is LXD's, with the owner kept root:

======================================  ======  ===================  ==================================
path                                    mode    owner                why
======================================  ======  ===================  ==================================
``<data-dir>``, ``containers/``         0711    root:root            traversed by containers' roots
``containers/<name>`` (unprivileged)    0710    root:<its host gid>  only its own root may pass through
``containers/<name>`` (privileged)      0700    root:root            runc runs it as host root
``containers/<name>/snapshots``         0700    root:root            never needed by a running container
``containers/.creating-*`` (staging)    0700    root:root            from the first received byte on
``containers/.exporting-*``, ``runc/``,
``run/``, ``images/``                   0700    root:root            nothing there is run in place
======================================  ======  ===================  ==================================

The group of an unprivileged container's dir is its host gid base (the gid its init runs with), so the
container's root can traverse it while it stays root's; nobody else can. The rootfs inside keeps the
modes its image gave it. :func:`container_dir` is applied on every change of privilege and at every
agent start, so an older data dir is tightened in place.
"""

from __future__ import annotations

import os
from pathlib import Path

from hostagent.runtimes.idmap import IdMap

#: traversable by everyone, listable by nobody but root
TRAVERSE = 0o711
#: root only
PRIVATE = 0o700
#: an unprivileged container's dir: root, and its own root (by group) may only pass through
CONTAINER = 0o710


def private_dir(path: Path) -> Path:
    """``path`` (created if missing) as root's alone: 0700 root:root."""
    path.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
    _set(path, PRIVATE, 0)
    return path


def traverse_dir(path: Path) -> Path:
    """``path`` (created if missing) traversable, not listable: 0711 root:root."""
    path.mkdir(mode=TRAVERSE, parents=True, exist_ok=True)
    _set(path, TRAVERSE, 0)
    return path


def container_dir(path: Path, idmap: IdMap | None) -> None:
    """A container's own dir: passable only by its root (unprivileged) or by nobody but root."""
    if idmap is None:
        _set(path, PRIVATE, 0)
    else:
        _set(path, CONTAINER, idmap.gid_host_base)


def _set(path: Path, mode: int, gid: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (0, gid) and os.geteuid() == 0:
            os.fchown(fd, 0, gid)
        if st.st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)
