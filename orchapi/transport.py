"""HTTP transports for the client: HTTPS pinned to one certificate fingerprint, and the local unix socket.

Pinning is strict: the agent's certificate must have exactly the SHA-256 fingerprint the client stored
when the remote was added (urllib3's ``assert_fingerprint``); no CA store is consulted, so neither a
man in the middle with a CA-signed certificate nor ``REQUESTS_CA_BUNDLE`` can change whom we talk to.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool


class PinnedHTTPSAdapter(HTTPAdapter):
    """Talks TLS with our context and accepts only the pinned server certificate."""

    def __init__(self, fingerprint: str, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._fingerprint = fingerprint
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        kwargs["assert_fingerprint"] = self._fingerprint
        kwargs["cert_reqs"] = "CERT_NONE"  # the fingerprint check replaces CA verification
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Ignore requests' CA settings entirely; trust comes only from the pinned fingerprint."""
        conn.cert_reqs = "CERT_NONE"
        conn.ca_certs = None
        conn.ca_cert_dir = None


class _UnixConnection(HTTPConnection):
    def __init__(self, socket_path: str, timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__("localhost", timeout=timeout, **kwargs)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.timeout, (int, float)):
            sock.settimeout(self.timeout)
        sock.connect(self._socket_path)
        self.sock = sock


class _UnixPool(HTTPConnectionPool):
    def __init__(self, socket_path: str, timeout: Any = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def _new_conn(self) -> HTTPConnection:
        self.num_connections += 1
        return _UnixConnection(self._socket_path, timeout=self.timeout.connect_timeout)


class UnixSocketAdapter(HTTPAdapter):
    """Sends every request to one unix socket, whatever host the URL names."""

    def __init__(self, socket_path: str, **kwargs: Any) -> None:
        self._socket_path = socket_path
        self._pool = _UnixPool(socket_path)
        super().__init__(**kwargs)

    def get_connection_with_tls_context(
        self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
    ):
        return self._pool

    def get_connection(self, url: str, proxies: Any = None) -> HTTPConnectionPool:
        return self._pool

    def close(self) -> None:
        self._pool.close()
        super().close()
