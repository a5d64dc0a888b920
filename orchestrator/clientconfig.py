"""The client's configuration directory (``$XDG_CONFIG_HOME/orch``, default ``~/.config/orch``).

``config.yml`` holds the remotes and the default remote, ``client.crt``/``client.key`` the client's own
certificate (made on first use), and ``servercerts/<remote>.crt`` the pinned certificate of each HTTPS
remote. ``local`` always exists: the agent on this machine, reached through its unix socket.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from orchapi.errors import BadRequest, Conflict, NotFound
from orchapi.names import check_remote_name

LOCAL = "local"
DEFAULT_SOCKET = "/var/lib/orch-agent/unix.socket"


@dataclass
class Remote:
    """One configured agent."""

    name: str
    addr: str  # https://host:port or unix:// (the local socket) or unix:///path/unix.socket
    protocol: str = "orch"
    public: bool = False
    static: bool = False

    @property
    def is_unix(self) -> bool:
        return self.addr.startswith("unix://")

    @property
    def socket_path(self) -> str:
        """The socket file for a unix remote; ``unix://`` alone means this machine's default agent."""
        path = self.addr[len("unix://") :]
        return path or os.environ.get("ORCH_AGENT_SOCKET", DEFAULT_SOCKET)


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "orch"


class ClientConfig:
    """Loads and saves ``config.yml`` and manages the certificate files next to it."""

    _shared: dict[Path, tuple[tuple[int, int, int], ClientConfig]] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def current(cls, directory: Path | None = None) -> ClientConfig:
        """The config as the file says now, parsed again only when the file changed (its inode, size
        or mtime): for readers that never change it (the workers look a remote up for every agent
        request, and a fleet's config.yml of 1,000 remotes takes ~150 ms to parse). Shared: not to be
        modified; the CLI, which edits it, makes its own :class:`ClientConfig`."""
        path = (directory or config_dir()) / "config.yml"
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        with cls._shared_lock:
            cached = cls._shared.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        config = cls(path.parent)
        with cls._shared_lock:
            cls._shared[path] = (stamp, config)
        return config

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or config_dir()
        self.path = self.dir / "config.yml"
        self.default_remote = LOCAL
        self.remotes: dict[str, Remote] = {LOCAL: Remote(LOCAL, "unix://", static=True)}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = yaml.safe_load(self.path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise BadRequest(f"cannot read {self.path}: {exc}", "fix or remove the file") from None
        if not isinstance(data, dict):
            raise BadRequest(f"{self.path} is not a YAML mapping", "fix or remove the file")
        for name, entry in (data.get("remotes") or {}).items():
            if name == LOCAL or not isinstance(entry, dict) or "addr" not in entry:
                continue
            self.remotes[name] = Remote(
                name=name,
                addr=str(entry["addr"]),
                protocol=str(entry.get("protocol", "orch")),
                public=bool(entry.get("public", False)),
            )
        if LOCAL in (data.get("remotes") or {}) and isinstance(data["remotes"][LOCAL], dict):
            self.remotes[LOCAL].addr = str(data["remotes"][LOCAL].get("addr", "unix://"))
        self.default_remote = str(data.get("default-remote", LOCAL))
        if self.default_remote not in self.remotes:
            self.default_remote = LOCAL

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        remotes = {}
        for name, remote in sorted(self.remotes.items()):
            entry = asdict(remote)
            for key in ("name", "static"):
                entry.pop(key)
            remotes[name] = entry
        data = {"default-remote": self.default_remote, "remotes": remotes}
        tmp = self.path.with_suffix(".yml.tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=True))
        os.replace(tmp, self.path)

    # -- remotes -------------------------------------------------------------------------------------
    def get(self, name: str) -> Remote:
        remote = self.remotes.get(name)
        if remote is None:
            raise NotFound(f"remote {name!r} doesn't exist", "see `orch remote list`")
        return remote

    def add(self, remote: Remote) -> None:
        check_remote_name(remote.name)
        if remote.name in self.remotes:
            raise Conflict(f"remote {remote.name} exists already", "remove it first or pick another name")
        self.remotes[remote.name] = remote

    def remove(self, name: str) -> None:
        remote = self.get(name)
        if remote.static:
            raise BadRequest(f"remote {name} is static and can't be removed")
        if name == self.default_remote:
            raise BadRequest(f"can't remove the default remote {name}", "set another default first")
        del self.remotes[name]
        self.server_cert_path(name).unlink(missing_ok=True)

    def rename(self, old: str, new: str) -> None:
        remote = self.get(old)
        if remote.static:
            raise BadRequest(f"remote {old} is static and can't be renamed")
        check_remote_name(new)
        if new in self.remotes:
            raise Conflict(f"remote {new} exists already")
        del self.remotes[old]
        remote.name = new
        self.remotes[new] = remote
        if self.server_cert_path(old).exists():
            os.replace(self.server_cert_path(old), self.server_cert_path(new))
        if self.default_remote == old:
            self.default_remote = new

    # -- certificates --------------------------------------------------------------------------------
    def server_cert_path(self, remote: str) -> Path:
        return self.dir / "servercerts" / f"{remote}.crt"

    def save_server_cert(self, remote: str, pem: str) -> None:
        path = self.server_cert_path(remote)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pem)

    def pinned_fingerprint(self, remote: str) -> str:
        path = self.server_cert_path(remote)
        if not path.exists():
            raise NotFound(
                f"no stored certificate for remote {remote} ({path})",
                f"remove the remote and add it again: orch remote remove {remote}",
            )
        from orchapi import certs  # here: cryptography costs every other command ~10 ms to import

        return certs.fingerprint_own_pem(path.read_bytes())

    def client_cert(self) -> tuple[Path, Path]:
        """The client's certificate and key, generated on first use."""
        crt, key = self.dir / "client.crt", self.dir / "client.key"
        from orchapi import certs

        certs.ensure(crt, key, f"orch-client@{socket.gethostname()}")
        return crt, key
