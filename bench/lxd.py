"""LXD 5.0 as the reference mover: N private LXD daemons on this machine, each with dir and btrfs pools.

Why private daemons: the benchmark must not depend on (or disturb) a system LXD, and needs two of them
to time a real ``lxc move a:c b:``. Each daemon gets its own ``LXD_DIR`` under one temp dir, an HTTPS
port on 127.0.0.1 and, for btrfs, a loop-mounted btrfs file that the pool uses as its source. The
``lxc`` client gets its own ``LXD_CONF``, so ``~/.config/lxc`` is never touched.

What we learnt making this work here (LXD 5.0.2, Debian 12, no systemd):
- ``lxd init --auto`` fails (it wants a bridge; there is no network); a preseed with ``networks: []``
  works. The preseed is written as JSON, which YAML parsers accept, so PyYAML is not needed.
- unprivileged containers need every parent of ``LXD_DIR`` to be traversable: mktemp dirs are 0700,
  so the base dir is chmod 0755 and must not sit under /root.
- a btrfs pool with ``source:`` an already mounted btrfs directory works; LXD bind-mounts it at
  ``LXD_DIR/storage-pools/NAME`` and unmounts it again on ``lxd shutdown``.
- ``lxd shutdown`` waits for running operations (5 minutes for a stuck one), so it gets a timeout and
  the daemon is then killed by pid (its process group: it was started in a new session).
- a stopped container that never ran has an unshifted rootfs (``volatile.last_state.idmap: []``),
  owned 0:0; content written straight into it with the rootfs's owner is what LXD itself would hold.
- LXD 5.0.2 bug: ``lxc copy --refresh`` between btrfs pools breaks the target when the container has
  snapshots. The refresh case here has no snapshots.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import Sample, measure

DIR_POOL = "dir"
BTRFS_POOL = "btrfs"


def ensure_installed() -> None:
    """Install Debian's ``lxd`` (and ``lxd-client``, which has ``lxc``) when missing."""
    if shutil.which("lxd") and shutil.which("lxc"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "lxd", "lxd-client"], check=True, env=env)
    if not (shutil.which("lxd") and shutil.which("lxc")):
        raise RuntimeError("lxd/lxc still missing after apt-get install lxd lxd-client")


def lxd_version() -> str:
    out = subprocess.run(["lxd", "--version"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def free_port() -> int:
    """A port the kernel says is free now (LXD binds it a moment later; a clash makes init fail loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mount_points_under(base: Path) -> list[str]:
    """Mount points below ``base`` from /proc/self/mountinfo, deepest first (for unmounting)."""
    prefix = str(base).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            # mountinfo escapes space, tab, newline and backslash as octal
            for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
                point = point.replace(esc, ch)
            if point.startswith(prefix):
                points.append(point)
    return sorted(set(points), key=len, reverse=True)


@dataclass
class Daemon:
    """One LXD daemon: its state dir, HTTPS port, process, and btrfs backing file if any."""

    name: str
    dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    btrfs_image: Path | None = None
    btrfs_mount: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, LXD_DIR=str(self.dir))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, n: int = 3000) -> str:
        try:
            return (self.dir / "lxd.log").read_text()[-n:]
        except OSError:
            return ""


class LxdLab:
    """``names`` LXD daemons under ``base``, remotes of one private ``lxc`` client, trusting each other.

    Use as a context manager, or call ``start()`` and, always, ``stop()`` (idempotent; also safe after a
    half-finished ``start()``). ``stop()`` removes ``base`` entirely.
    """

    def __init__(
        self,
        base: Path,
        names: tuple[str, ...] = ("a", "b"),
        btrfs: bool = True,
        btrfs_size: int = 2 << 30,
    ) -> None:
        self.base = base
        self.btrfs = btrfs
        self.btrfs_size = btrfs_size
        self.password = secrets.token_hex(12)
        self.client_dir = base / "client"
        self.daemons = {n: Daemon(n, base / n, 0) for n in names}
        self._stopped = False

    # ---- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> LxdLab:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LxdLab:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        _check_traversable(self.base)
        self.client_dir.mkdir(mode=0o700, exist_ok=True)
        for d in self.daemons.values():
            self._start_daemon(d)
        for d in self.daemons.values():
            self.lxc("remote", "add", d.name, d.address, "--accept-certificate", "--password", self.password)
        # each daemon trusts every other one's server certificate, so push and relay modes work too
        # (the default pull mode only needs the client trusted: the target uses the operation's secrets)
        for d in self.daemons.values():
            for other in self.daemons.values():
                if other is not d:
                    self.lxc("config", "trust", "add", f"{d.name}:", str(other.dir / "server.crt"))
        return self

    def _start_daemon(self, d: Daemon) -> None:
        d.dir.mkdir(mode=0o755, exist_ok=True)
        d.dir.chmod(0o755)
        pools: list[dict[str, object]] = [{"name": DIR_POOL, "driver": "dir"}]
        if self.btrfs:
            self._make_btrfs(d)
            pools.append({"name": BTRFS_POOL, "driver": "btrfs", "config": {"source": str(d.btrfs_mount)}})
        log = open(self.base / f"{d.name}.out", "ab")
        try:
            d.proc = subprocess.Popen(
                ["lxd", "--group", "root", "--logfile", str(d.dir / "lxd.log")],
                env=d.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal must not kill it before we shut it down
            )
        finally:
            log.close()
        ready = subprocess.run(
            ["lxd", "waitready", "--timeout", "60"], env=d.env, capture_output=True, text=True, timeout=90
        )
        if ready.returncode != 0 or d.proc.poll() is not None:
            raise RuntimeError(f"lxd {d.name} did not become ready: {ready.stderr}\n{d.log_tail()}")
        for _attempt in range(3):
            d.port = free_port()
            preseed = {
                "config": {
                    "core.https_address": d.address,
                    "core.trust_password": self.password,
                    "images.auto_update_interval": "0",  # no image refresh from the (absent) network
                },
                "networks": [],
                "storage_pools": pools,
                "profiles": [
                    {"name": "default", "devices": {"root": {"path": "/", "pool": DIR_POOL, "type": "disk"}}}
                ],
            }
            init = subprocess.run(
                ["lxd", "init", "--preseed"],
                env=d.env,
                input=json.dumps(preseed),
                capture_output=True,
                text=True,
                timeout=120,
            )
            if init.returncode == 0:
                return
            if "address already in use" not in init.stderr.lower():
                break
        raise RuntimeError(f"lxd init --preseed failed for {d.name}: {init.stderr}\n{d.log_tail()}")

    def _make_btrfs(self, d: Daemon) -> None:
        d.btrfs_image = self.base / f"{d.name}-btrfs.img"
        d.btrfs_mount = self.base / f"{d.name}-btrfs"
        with open(d.btrfs_image, "wb") as f:
            f.truncate(self.btrfs_size)  # sparse: costs only what is written
        _run(["mkfs.btrfs", "-q", "-f", str(d.btrfs_image)])
        d.btrfs_mount.mkdir(exist_ok=True)
        _run(["mount", "-o", "loop", str(d.btrfs_image), str(d.btrfs_mount)])
        d.btrfs_mount.chmod(0o711)

    def stop(self) -> None:
        """Shut every daemon down (bounded), kill what is left by pid, unmount, remove ``base``."""
        if self._stopped:
            return
        self._stopped = True
        for d in self.daemons.values():
            _stop_daemon(d)
        for point in _mount_points_under(self.base):
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
        for d in self.daemons.values():
            if d.btrfs_image is not None:
                _detach_loops(d.btrfs_image)
        if not _mount_points_under(self.base):
            shutil.rmtree(self.base, ignore_errors=True)

    # ---- client ----------------------------------------------------------------------------------

    @property
    def client_env(self) -> dict[str, str]:
        return dict(os.environ, LXD_CONF=str(self.client_dir), HOME=str(self.client_dir))

    def lxc(self, *args: str, timeout: float = 600) -> str:
        """Run ``lxc ARGS`` as the lab's client; raise with its stderr when it fails."""
        res = subprocess.run(
            ["lxc", *args],
            env=self.client_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if res.returncode != 0:
            raise RuntimeError(f"lxc {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def timed(self, *args: str) -> Sample:
        """Wall time and CPU-seconds of ``lxc ARGS`` (client start-up included, as a user would see it)."""
        os.sync()  # untimed: earlier runs' dirty pages must not be written back during this one
        return measure(self.lxc, *args)

    def import_image(self, tarball: Path, alias: str = "bb") -> None:
        for d in self.daemons.values():
            self.lxc("image", "import", str(tarball), f"{d.name}:", "--alias", alias, "-q")

    def create(self, remote: str, name: str, pool: str, image: str = "bb") -> Path:
        """``lxc init`` a (stopped) container on ``pool``; return its rootfs path on the host."""
        self.lxc("init", f"{remote}:{image}", f"{remote}:{name}", "-s", pool, "-q")
        return self.rootfs(remote, pool, name)

    def rootfs(self, remote: str, pool: str, name: str) -> Path:
        return self.daemons[remote].dir / "storage-pools" / pool / "containers" / name / "rootfs"

    def delete(self, remote: str, name: str) -> None:
        self.lxc("delete", "--force", f"{remote}:{name}")


def _stop_daemon(d: Daemon) -> None:
    if d.proc is None:
        return
    if d.proc.poll() is None:
        try:
            subprocess.run(["lxd", "shutdown", "--timeout", "30"], env=d.env, capture_output=True, timeout=40)
        except subprocess.TimeoutExpired:
            pass
        try:
            d.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            d.proc.terminate()
            try:
                d.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()
    # helpers LXD forked (rsync, forkfile...) share its process group, which is its pid
    try:
        os.killpg(d.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _detach_loops(image: Path) -> None:
    """``mount -o loop`` auto-clears its loop device on unmount; detach any that an odd path left."""
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        dev = line.split(":", 1)[0]
        if dev.startswith("/dev/loop"):
            subprocess.run(["losetup", "-d", dev], capture_output=True)


def _check_traversable(path: Path) -> None:
    for parent in [path, *path.parents]:
        if not os.stat(parent).st_mode & 0o001:
            raise RuntimeError(f"{parent} is not traversable by others; unprivileged containers need it")


def _run(args: list[str]) -> None:
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {res.stderr.strip()}")
