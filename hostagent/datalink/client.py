"""The target's side of a data link: connect to the source's data port, prove who we are, pin who it is.

The TLS context is the migration's own (our agent certificate presented, exactly the source's
certificate trusted: hostagent/migration/target/connect.py), and the peer's fingerprint is compared with
the pin before the token is sent, as on the websocket. Blocking: run it in a thread; the socket it
returns then belongs to the one thread that relays over it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl

from orchapi import certs
from orchapi.errors import Forbidden, Unavailable

CONNECT_TIMEOUT = 10.0


def dial(host: str, port: int, token: str, ctx: ssl.SSLContext, fingerprint: str) -> ssl.SSLSocket:
    """A data connection to ``host:port`` for the offer ``token``; the peer must be ``fingerprint``."""
    try:
        raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise Unavailable(f"cannot open the data connection to {host}:{port}: {exc}") from None
    tls: ssl.SSLSocket | None = None
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = ctx.wrap_socket(raw)
        der = tls.getpeercert(binary_form=True)
        if not der or certs.fingerprint_der(der) != fingerprint:
            raise Forbidden("the source agent's data port presented a certificate other than the migration's")
        tls.sendall(token.encode() + b"\n")
        tls.settimeout(None)
        return tls
    except (OSError, ssl.SSLError) as exc:
        with contextlib.suppress(OSError):
            (tls or raw).close()
        raise Unavailable(f"the data connection to {host}:{port} failed: {exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            (tls or raw).close()
        raise
