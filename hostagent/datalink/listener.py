"""The source agent's data port: where a target's data connection for one volume comes in.

A source offers a volume's data link over the authenticated migration websocket: the port and a
one-time token (256 random bits, kept only as a SHA-256 hash, valid for one connection, for a minute,
and only for the target certificate the migration was issued to). The target connects, completes a TLS
handshake presenting its agent certificate (the port requires one: anonymous clients fail the handshake,
unknown certificates too), and sends the token on its first line; the listener matches it, checks the
certificate's fingerprint against the offer's and hands the socket to the waiting transfer.

Nobody gets anything without a pending offer: while none is pending a connection is closed before any
TLS work, and handshakes run at most :data:`MAX_HANDSHAKES` at a time and :data:`HANDSHAKES_PER_SECOND`
a second, each bounded by a timeout, so a stranger cannot make the agent spend CPU on the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hostagent.datalink import ktls
from orchapi import certs, tlsconfig
from orchapi.errors import Unavailable

log = logging.getLogger(__name__)

#: how long an offer waits for its connection
OFFER_TTL = 60.0
#: TLS handshakes in progress at once, how many may start per second (~3 ms of CPU each here, so a
#: stranger hammering the port while a transfer waits costs at most a few percent of a core), and how
#: long one may take (with the token line)
MAX_HANDSHAKES = 4
HANDSHAKES_PER_SECOND = 20
HANDSHAKE_TIMEOUT = 10.0
_TOKEN_LINE = 128


@dataclass
class Offer:
    """One volume's data link, offered to one target certificate."""

    token: str
    digest: bytes
    fingerprint: str
    expires: float
    loop: asyncio.AbstractEventLoop
    connected: asyncio.Future[ssl.SSLSocket] = field(repr=False)
    listener: DataListener = field(repr=False)
    used: bool = False

    def withdraw(self) -> None:
        """Forget the offer (the target did not take it, or the transfer ended)."""
        self.listener.withdraw(self)

    @property
    def message(self) -> dict[str, object]:
        """What the target is told (over the migration websocket) to connect with."""
        return {"token": self.token}

    async def accepted(self, timeout: float = OFFER_TTL) -> ssl.SSLSocket:
        """The target's connection, once it is in (Unavailable if it does not come in time)."""
        try:
            return await asyncio.wait_for(asyncio.shield(self.connected), timeout)
        except TimeoutError:
            raise Unavailable("the target did not open the data connection in time") from None


class DataListener:
    """Accepts data connections on one listening socket, for the offers this agent made."""

    def __init__(self, sock: socket.socket, cert: Path, key: Path) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.ctx = ktls.enable(tlsconfig.harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)))
        self.ctx.load_cert_chain(str(cert), str(key))
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a self-signed leaf is its own anchor
        self._trusted: set[str] = set()
        self._offers: dict[bytes, Offer] = {}
        self._lock = threading.Lock()
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._bucket, self._refilled = float(HANDSHAKES_PER_SECOND), time.monotonic()
        self._closed = False
        self._thread = threading.Thread(target=self._accept_loop, name="datalink-accept", daemon=True)

    def start(self) -> DataListener:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._lock:
            offers, self._offers = list(self._offers.values()), {}
        for offer in offers:
            _fail(offer, Unavailable("the agent is shutting down"))

    # -- offers ----------------------------------------------------------------------------------------
    def offer(self, target_pem: str) -> Offer:
        """A new offer for the target agent whose certificate is ``target_pem`` (call on the event loop)."""
        fingerprint = certs.fingerprint_pem(target_pem)
        if fingerprint not in self._trusted:  # its handshake must pass the certificate check
            self.ctx.load_verify_locations(cadata=target_pem)
            self._trusted.add(fingerprint)
        token = secrets.token_urlsafe(32)
        loop = asyncio.get_running_loop()
        offer = Offer(
            token,
            hashlib.sha256(token.encode()).digest(),
            fingerprint,
            time.monotonic() + OFFER_TTL,
            loop,
            loop.create_future(),
            self,
        )
        with self._lock:
            self._expire()
            self._offers[offer.digest] = offer
        return offer

    def withdraw(self, offer: Offer) -> None:
        """Forget an offer (its transfer ended or failed); a connection it got is closed."""
        with self._lock:
            self._offers.pop(offer.digest, None)
        if offer.connected.done() and not offer.connected.cancelled() and offer.connected.exception() is None:
            with contextlib.suppress(OSError):
                offer.connected.result().close()
        elif not offer.connected.done():
            offer.connected.cancel()

    def _expire(self) -> None:
        now = time.monotonic()
        for digest in [d for d, o in self._offers.items() if o.expires < now]:
            _fail(self._offers.pop(digest), Unavailable("the data connection was not opened in time"))

    # -- connections -----------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)
                continue
            with self._lock:
                self._expire()
                wanted = bool(self._offers) and self._take_token()
            if not wanted or not self._handshakes.acquire(blocking=False):
                conn.close()  # no pending offer (or too many at once): no TLS work for strangers
                continue
            threading.Thread(
                target=self._handshake, args=(conn, peer), name="datalink-handshake", daemon=True
            ).start()

    def _take_token(self) -> bool:
        """One handshake's worth of the rate (a token bucket, refilled continuously)."""
        now = time.monotonic()
        self._bucket = min(
            HANDSHAKES_PER_SECOND, self._bucket + (now - self._refilled) * HANDSHAKES_PER_SECOND
        )
        self._refilled = now
        if self._bucket < 1:
            return False
        self._bucket -= 1
        return True

    def _handshake(self, conn: socket.socket, peer: object) -> None:
        tls: ssl.SSLSocket | None = None
        handed = False
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.ctx.wrap_socket(conn, server_side=True)
            der = tls.getpeercert(binary_form=True)
            fingerprint = certs.fingerprint_der(der) if der else ""
            offer = self._claim(_read_line(tls), fingerprint)
            if offer is None:
                log.warning("data connection from %s refused: no offer for its token and certificate", peer)
                return
            tls.settimeout(None)
            offer.loop.call_soon_threadsafe(_deliver, offer, tls)
            handed = True
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.info("data connection from %s failed: %s", peer, exc)
        finally:
            if not handed:
                with contextlib.suppress(OSError):
                    (tls or conn).close()
            self._handshakes.release()

    def _claim(self, line: bytes, fingerprint: str) -> Offer | None:
        digest = hashlib.sha256(line).digest()
        with self._lock:
            offer = self._offers.get(digest)
            if (
                offer is None
                or offer.used
                or offer.expires < time.monotonic()
                or not hmac.compare_digest(offer.fingerprint, fingerprint)
            ):
                return None
            offer.used = True
            del self._offers[digest]
            return offer


def _read_line(tls: ssl.SSLSocket) -> bytes:
    """The token line (without its newline); ValueError if it is not one."""
    data = b""
    while b"\n" not in data:
        chunk = tls.recv(_TOKEN_LINE)
        if not chunk:
            raise ValueError("the connection closed before its token")
        data += chunk
        if len(data) > _TOKEN_LINE:
            raise ValueError("the token line is too long")
    line, _, rest = data.partition(b"\n")
    if rest:
        raise ValueError("data before the transfer began")
    return line


def _deliver(offer: Offer, tls: ssl.SSLSocket) -> None:
    if offer.connected.done():
        with contextlib.suppress(OSError):
            tls.close()
    else:
        offer.connected.set_result(tls)


def _fail(offer: Offer, exc: BaseException) -> None:
    def fail() -> None:
        if not offer.connected.done():
            offer.connected.set_exception(exc)

    with contextlib.suppress(RuntimeError):  # a closed loop
        offer.loop.call_soon_threadsafe(fail)
