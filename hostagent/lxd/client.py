"""A small synchronous client for LXD's REST API over its local unix socket.

The LXD runtime driver and the LXD image store talk to the daemon only through this class. It turns
LXD's answers into :mod:`orchapi.errors` exceptions, so an LXD refusal ("Instance not found", "already
exists", "is running") reaches the orch user as the same 404/409 with LXD's own words, and waits on
LXD's background operations so callers see one blocking call per action.

Why requests over the socket rather than pylxd: pylxd pins old requests/urllib3 releases and adds
nothing the dozen endpoints used here need; the transport is the one the orch CLI already uses.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import requests

from orchapi.errors import (
    BadRequest,
    Conflict,
    InsufficientStorage,
    InternalError,
    NotFound,
    OrchError,
    Unavailable,
    error_for_status,
)
from orchapi.transport import UnixSocketAdapter

#: where Debian's and the snap's LXD put their socket, tried in this order when none is given
DEFAULT_SOCKETS = ("/var/lib/lxd/unix.socket", "/var/snap/lxd/common/lxd/unix.socket")
BASE = "http://lxd"

#: LXD reports failed operations with a message only; these patterns give them their HTTP meaning
_PATTERNS: list[tuple[re.Pattern[str], type[OrchError]]] = [
    (re.compile(r"no space left|quota", re.I), InsufficientStorage),
    (re.compile(r"not found|doesn't exist|does not exist|no such", re.I), NotFound),
    (re.compile(r"already exists|already running|is running|must be stopped|in use|busy", re.I), Conflict),
    (re.compile(r"invalid|unknown configuration key|not allowed|bad |cannot be|must be", re.I), BadRequest),
]


def classify(message: str, default: type[OrchError] = InternalError) -> type[OrchError]:
    """The error class an LXD failure message stands for."""
    for pattern, cls in _PATTERNS:
        if pattern.search(message):
            return cls
    return default


def find_socket(explicit: str | None) -> str:
    """The socket to use: the one given, ``$LXD_DIR/unix.socket``, or the first default that exists."""
    if explicit:
        return explicit
    if os.environ.get("LXD_DIR"):
        return str(Path(os.environ["LXD_DIR"]) / "unix.socket")
    for path in DEFAULT_SOCKETS:
        if os.path.exists(path):
            return path
    return DEFAULT_SOCKETS[0]


def path_of(*parts: str) -> str:
    """``/1.0/instances/<name>/...`` with every part URL-quoted (names were validated, this is belt and
    braces against a path made of user input)."""
    return "/1.0/" + "/".join(quote(p, safe="") for p in parts)


class LxdClient:
    """One LXD daemon, reached over its unix socket (thread-safe: one session per thread)."""

    def __init__(self, socket_path: str, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._local = threading.local()

    @property
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxies, no CA bundles: this is a local socket
            session.mount(BASE + "/", UnixSocketAdapter(self.socket_path))
            self._local.session = session
        return session

    # ------------------------------------------------------------------------------------ raw calls

    def raw(
        self,
        method: str,
        path: str,
        json: Any = None,
        data: bytes | BinaryIO | Iterator[bytes] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        timeout: float | None = None,
    ) -> requests.Response:
        try:
            return self._session.request(
                method,
                BASE + path,
                json=json,
                data=data,
                headers=headers,
                stream=stream,
                timeout=timeout or self.timeout,
            )
        except (requests.ConnectionError, OSError) as exc:
            raise Unavailable(
                f"cannot reach LXD at {self.socket_path}: {_reason(exc)}",
                "is lxd running? start it, or give its socket with --lxd-socket",
            ) from None
        except requests.Timeout:
            raise Unavailable(f"LXD at {self.socket_path} did not answer {method} {path} in time") from None

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One call; returns LXD's whole response document (``type``, ``metadata``, ``operation``)."""
        response = self.raw(method, path, **kwargs)
        try:
            doc = response.json()
        except ValueError:
            raise InternalError(
                f"LXD answered {method} {path} with {response.status_code} and no JSON"
            ) from None
        if doc.get("type") == "error" or response.status_code >= 400:
            message = str(doc.get("error") or response.reason)
            status = int(doc.get("error_code") or response.status_code)
            if status >= 500:
                raise classify(message)(f"LXD: {message}")
            raise error_for_status(status, f"LXD: {message}")
        return doc

    # ------------------------------------------------------------------------------------ helpers

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).get("metadata")

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """A change: sync answers return their metadata, async ones are waited for (their metadata)."""
        doc = self.request(method, path, json=body)
        if doc.get("type") == "async":
            return self.wait(doc, timeout)
        return doc.get("metadata")

    def wait(
        self,
        doc: dict[str, Any],
        timeout: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Wait for an operation to end; a failed one raises with LXD's message. ``on_progress`` gets the
        operation's metadata about every second while it runs."""
        op = doc.get("metadata") or {}
        op_path = str(doc.get("operation") or f"/1.0/operations/{op.get('id')}")
        limit = timeout if timeout is not None else 3600.0
        waited = 0.0
        while True:
            step = min(1.0 if on_progress else 30.0, max(limit - waited, 1.0))  # LXD takes whole seconds
            result = self.get(f"{op_path}/wait?timeout={int(step)}", timeout=step + 30)
            status = result.get("status")
            if on_progress is not None and result.get("metadata"):
                on_progress(result["metadata"])
            if status == "Success":
                return result.get("metadata") or {}
            if status in ("Failure", "Cancelled"):
                message = str(result.get("err") or status)
                raise classify(message)(f"LXD: {message}")
            waited += step
            if waited >= limit:
                raise Unavailable(
                    f"LXD operation {result.get('description', op_path)} did not finish in time"
                )

    def server(self) -> dict[str, Any]:
        return self.get("/1.0")


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("No such file or directory", "Connection refused", "Permission denied"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0] if text else type(exc).__name__
