"""The raw-rsync reference: what moving the bytes costs with no container manager around it.

How LXD uses rsync (lxd/rsync/rsync.go): the sender runs ``rsync -ar --devices --numeric-ids --partial
--sparse SRC localhost:/tmp/foo -e "lxd netcat @sock"``; the receiver runs ``rsync --server ...`` with its
stdin/stdout piped to the migration websocket. So rsync runs in remote-shell mode, sender and receiver
are two processes joined by a byte stream.

Our reference does the same minus the websocket: ``rsync -a --numeric-ids -e RELAY SRC/
localhost:DST/``, where RELAY is a two-line shell script that drops the host name and execs the
``rsync --server`` command it is given. Sender and receiver are then joined by pipes, as in LXD, and rsync
runs its remote protocol (delta-transfer on, unlike local ``rsync SRC DST``, which forces --whole-file).
No compression, no ssh, no network: a floor that a mover using rsync cannot beat on this machine.

A second variant, ``rsync-lxdflags``, is rsync exactly as LXD 5.0.2 runs it on a dir-pool migration
(seen in ps during ``lxc move``): the sender with ``-ar --devices --numeric-ids --partial --sparse
--xattrs --filter='-x security.selinux' --delete --compress --compress-level=2``, and a receiver with LXD's
hard-coded ``rsync --server -vlogDtpre.iLsfx ...`` instead of the server command the sender asks for.
That fixed receiver string lacks the capability letters rsync >= 3.2 uses to negotiate, so the two
sides fall back to zlib compression, which on incompressible data runs at ~35 MB/s here: measured by
hand, this pair takes ~1.9 s for the 52 MB tree through a plain pipe, against ~0.3 s for plain
``rsync -a`` (and ~0.4 s for LXD's flags with rsync's own receiver, i.e. negotiated zstd; ~0.4 s for
LXD's receiver without ``--compress``). So nearly all of ``lxc move``'s dir-pool time is zlib, not
LXD's websocket: this row says how much.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench import content
from bench.cpu import Sample, measure
from bench.stats import RSYNC, RSYNC_LXD_FLAGS, Result

RELAY = """#!/bin/sh
# rsync -e runs: RELAY HOST rsync --server ...; drop HOST and run the receiver here, on our pipes.
shift
exec "$@"
"""

# LXD 5.0.2's rsync.Send for a dir-pool migration (features xattrs, delete, compress; lxd/rsync/rsync.go)
LXD_SENDER = [
    "rsync",
    "-ar",
    "--devices",
    "--numeric-ids",
    "--partial",
    "--sparse",
    "--xattrs",
    "--filter=-x security.selinux",
    "--delete",
    "--compress",
    "--compress-level=2",
]

# ... and its rsync.Recv: a fixed server command; the destination is the last argument rsync passes
LXD_RELAY = """#!/bin/sh
# run LXD 5.0.2's receiver, whatever server command the sender asked for; keep only its destination
for arg; do dst=$arg; done
exec rsync --server -vlogDtpre.iLsfx --numeric-ids --devices --partial --sparse --xattrs \\
    '--filter=-x security.selinux' --delete --compress --compress-level=2 . "$dst"
"""


class RsyncReference:
    """Times ``rsync -a`` of a tree through a pipe into a fresh (or, for refresh, existing) destination."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.relay = workdir / "relay"
        self.relay.write_text(RELAY)
        self.relay.chmod(0o755)
        self.lxd_relay = workdir / "relay-lxd"
        self.lxd_relay.write_text(LXD_RELAY)
        self.lxd_relay.chmod(0o755)

    def command(self, src: Path, dst: Path, lxd_flags: bool = False) -> list[str]:
        # trailing slashes: copy the contents of src into dst, as LXD does for a rootfs
        if lxd_flags:
            return [*LXD_SENDER, "-e", str(self.lxd_relay), f"{src}/", f"localhost:{dst}/"]
        return ["rsync", "-a", "--numeric-ids", "-e", str(self.relay), f"{src}/", f"localhost:{dst}/"]

    def _sync(self, src: Path, dst: Path, lxd_flags: bool = False) -> Sample:
        args = self.command(src, dst, lxd_flags)
        os.sync()  # untimed: earlier runs' dirty pages must not be written back during this one
        # stdout: LXD's flags include -v, noise here
        return measure(subprocess.run, args, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def _verify(self, src: Path, dst: Path) -> None:
        if content.tree_digest(src) != content.tree_digest(dst):
            raise RuntimeError(f"rsync reference: {dst} differs from {src}")

    def measure_copy(
        self, case: str, src: Path, runs: int, payload: int, lxd_flags: bool = False, verify: bool = True
    ) -> Result:
        """Copy ``src`` into a new, empty destination ``runs`` times (the destination is removed, untimed,
        before each run); with ``lxd_flags``, as LXD's dir-pool migration runs rsync (see above)."""
        dst = self.workdir / "dst"
        tool = RSYNC_LXD_FLAGS if lxd_flags else RSYNC
        result = Result(case, "-", tool, command=" ".join(self.command(src, dst, lxd_flags)), bytes=payload)
        for i in range(runs):
            shutil.rmtree(dst, ignore_errors=True)
            result.add(self._sync(src, dst, lxd_flags))
            if verify and i == 0:
                self._verify(src, dst)
        shutil.rmtree(dst, ignore_errors=True)
        return result

    def measure_refresh(
        self, case: str, src: Path, runs: int, change: Callable[[int], list[Path]], verify: bool = True
    ) -> Result:
        """Sync ``src`` once (untimed), then per run call ``change(run)`` (untimed) and time the re-sync."""
        dst = self.workdir / "dst-refresh"
        shutil.rmtree(dst, ignore_errors=True)
        self._sync(src, dst)
        result = Result(case, "-", RSYNC, command=" ".join(self.command(src, dst)))
        for i in range(runs):
            change(i)
            result.add(self._sync(src, dst))
        if verify:
            self._verify(src, dst)
        shutil.rmtree(dst, ignore_errors=True)
        return result
