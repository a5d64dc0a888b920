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
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench import content
from bench.stats import RSYNC, Result

RELAY = """#!/bin/sh
# rsync -e runs: RELAY HOST rsync --server ...; drop HOST and run the receiver here, on our pipes.
shift
exec "$@"
"""


class RsyncReference:
    """Times ``rsync -a`` of a tree through a pipe into a fresh (or, for refresh, existing) destination."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.relay = workdir / "relay"
        self.relay.write_text(RELAY)
        self.relay.chmod(0o755)

    def command(self, src: Path, dst: Path) -> list[str]:
        # trailing slashes: copy the contents of src into dst, as LXD does for a rootfs
        return ["rsync", "-a", "--numeric-ids", "-e", str(self.relay), f"{src}/", f"localhost:{dst}/"]

    def _sync(self, src: Path, dst: Path) -> float:
        args = self.command(src, dst)
        t0 = time.perf_counter()
        subprocess.run(args, check=True, stdin=subprocess.DEVNULL)
        return time.perf_counter() - t0

    def _verify(self, src: Path, dst: Path) -> None:
        if content.tree_digest(src) != content.tree_digest(dst):
            raise RuntimeError(f"rsync reference: {dst} differs from {src}")

    def measure_copy(self, case: str, src: Path, runs: int, payload: int, verify: bool = True) -> Result:
        """Copy ``src`` into a new, empty destination ``runs`` times (the destination is removed, untimed,
        before each run)."""
        dst = self.workdir / "dst"
        result = Result(case, "-", RSYNC, command=" ".join(self.command(src, dst)), bytes=payload)
        for i in range(runs):
            shutil.rmtree(dst, ignore_errors=True)
            result.samples.append(self._sync(src, dst))
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
            changed = change(i)
            result.bytes = sum(p.stat().st_size for p in changed)
            result.samples.append(self._sync(src, dst))
        if verify:
            self._verify(src, dst)
        shutil.rmtree(dst, ignore_errors=True)
        return result
