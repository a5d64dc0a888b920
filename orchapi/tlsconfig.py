"""TLS settings shared by agents and clients: TLS 1.2 or newer, forward-secret AEAD ciphers only."""

from __future__ import annotations

import ssl
from pathlib import Path

#: TLS 1.2 suites (TLS 1.3 suites are all modern and need no list)
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!SHA1:!DSS"


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Apply the minimum version and cipher list to ``ctx``."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MODERN_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(cert: Path, key: Path, trusted_pems: list[str]) -> ssl.SSLContext:
    """Server side: presents the agent's certificate and *asks* for a client certificate.

    ``CERT_OPTIONAL`` lets clients without a certificate in (they may read ``GET /1.0`` or enrol with the
    trust password); a presented certificate must be one of ``trusted_pems`` or the handshake fails. The
    request handlers still check the fingerprint against the live trust store, because a certificate
    removed from the store cannot be unloaded from the context.
    """
    ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    for pem in trusted_pems:
        ctx.load_verify_locations(cadata=pem)
    return ctx


def client_context(cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """Client side: no CA verification here; the caller pins the server by fingerprint instead."""
    ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx
