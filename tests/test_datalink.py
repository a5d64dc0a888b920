"""The data link: a source's data port, a target dialling it, and the one-thread TLS relay between them.

Real TLS over 127.0.0.1 with agent-style self-signed certificates, real processes on the pipes (dd,
sha256sum, cat). The migrations' use of it is covered by the migration and hostile-source suites.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from hostagent.datalink.client import dial
from hostagent.datalink.listener import DataListener
from hostagent.datalink.relay import BOTH, LOCAL, PEER, Relay, run_relay
from orchapi import certs, tlsconfig
from orchapi.errors import BadRequest, Forbidden, Unavailable

MiB = 1 << 20


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    out = {}
    for name in ("source", "target", "stranger"):
        crt, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        certs.ensure(crt, key, name)
        out[name] = (crt, key)
    return out


def client_ctx(pki, me: str = "target", trust: str = "source") -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    ctx = tlsconfig.harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(cadata=pki[trust][0].read_text())
    if me:
        ctx.load_cert_chain(str(pki[me][0]), str(pki[me][1]))
    return ctx


def listener(pki) -> DataListener:  # type: ignore[no-untyped-def]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return DataListener(sock, *pki["source"]).start()


def fingerprint(pki, name: str = "source") -> str:  # type: ignore[no-untyped-def]
    return certs.fingerprint_pem(pki[name][0].read_text())


async def linked(pki, lst: DataListener) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:  # type: ignore[no-untyped-def]
    """Both ends of one data connection (the source's as the listener hands it over)."""
    offer = lst.offer(pki["target"][0].read_text())
    loop = asyncio.get_running_loop()
    dialled = loop.run_in_executor(
        None, dial, "127.0.0.1", lst.port, offer.token, client_ctx(pki), fingerprint(pki)
    )
    target_end = await dialled
    source_end = await offer.accepted(10)
    return source_end, target_end


def test_one_way_stream_arrives_intact(pki, tmp_path):
    lst = listener(pki)
    payload = os.urandom(37 * MiB + 12345)
    (tmp_path / "payload").write_bytes(payload)

    async def go() -> tuple[str, int]:
        src_end, dst_end = await linked(pki, lst)
        cat = subprocess.Popen(["cat", str(tmp_path / "payload")], stdout=subprocess.PIPE)
        sha = subprocess.Popen(["sha256sum"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert cat.stdout is not None and sha.stdin is not None
        out_fd, in_fd = os.dup(cat.stdout.fileno()), os.dup(sha.stdin.fileno())
        cat.stdout.close()
        sha.stdin.close()
        loop = asyncio.get_running_loop()
        sending = loop.run_in_executor(None, run_relay, Relay(src_end, out_fd, None, until=LOCAL))
        receiving = loop.run_in_executor(None, run_relay, Relay(dst_end, None, in_fd, until=PEER))
        sent, received = await asyncio.gather(sending, receiving)
        os.close(out_fd)
        assert sha.stdout is not None
        digest = sha.stdout.read().split()[0].decode()
        sha.wait()
        cat.wait()
        return digest, received.received

    digest, received = asyncio.run(go())
    assert received == len(payload) and digest == hashlib.sha256(payload).hexdigest()
    lst.close()


def test_both_ways_at_once(pki):
    """rsync's shape: both processes write and read at the same time, big amounts each way."""
    lst = listener(pki)
    a, b = os.urandom(9 * MiB), os.urandom(11 * MiB)

    async def go():  # type: ignore[no-untyped-def]
        src_end, dst_end = await linked(pki, lst)
        ends = []
        for data in (a, b):
            feed_r, feed_w = os.pipe()
            drain_r, drain_w = os.pipe()
            threading.Thread(target=_write_all, args=(feed_w, data), daemon=True).start()
            got: list[bytes] = []
            reader = threading.Thread(target=lambda r=drain_r, g=got: g.append(_read_all(r)), daemon=True)
            reader.start()
            ends.append((feed_r, drain_w, got, reader))
        loop = asyncio.get_running_loop()
        relays = [
            loop.run_in_executor(None, run_relay, Relay(sock, end[0], end[1], until=BOTH))
            for sock, end in zip((src_end, dst_end), ends, strict=True)
        ]
        await asyncio.gather(*relays)
        for feed_r, _drain_w, _got, reader in ends:
            os.close(feed_r)
            reader.join(10)
        return ends[0][2][0], ends[1][2][0]

    got_by_source, got_by_target = asyncio.run(go())
    assert got_by_target == a and got_by_source == b
    lst.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view[:MiB]) :]
    except BrokenPipeError:
        pass  # the reader stopped (the refusal test)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, MiB):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def test_the_receiver_stops_a_peer_sending_more_than_allowed(pki):
    lst = listener(pki)

    async def go() -> None:
        src_end, dst_end = await linked(pki, lst)
        feed_r, feed_w = os.pipe()
        threading.Thread(target=_write_all, args=(feed_w, os.urandom(8 * MiB)), daemon=True).start()
        sink_r, sink_w = os.pipe()
        threading.Thread(target=_read_all, args=(sink_r,), daemon=True).start()
        loop = asyncio.get_running_loop()
        sending = loop.run_in_executor(None, run_relay, Relay(src_end, feed_r, None, until=LOCAL))
        with pytest.raises(BadRequest, match="more than it declared"):
            await loop.run_in_executor(None, run_relay, Relay(dst_end, None, sink_w, limit=MiB, until=PEER))
        dst_end.close()
        with pytest.raises(Unavailable):
            await sending
        os.close(feed_r)

    asyncio.run(go())
    lst.close()


def _refused(pki, port: int, token: str, me: str = "target", pin: str = "source") -> bool:  # type: ignore[no-untyped-def]
    """Whether a data connection attempt got nothing: refused while connecting, or closed at once."""
    try:
        sock = dial("127.0.0.1", port, token, client_ctx(pki, me), fingerprint(pki, pin))
    except (Unavailable, Forbidden):
        return True
    try:
        sock.settimeout(10)
        return sock.recv(1) == b""
    except OSError:  # the server's alert (TLS 1.3 reports a refused client certificate after the fact)
        return True
    finally:
        sock.close()


def test_strangers_get_nothing_from_the_data_port(pki):
    lst = listener(pki)

    async def go() -> None:
        loop = asyncio.get_running_loop()

        def refused(*args: str) -> asyncio.Future[bool]:
            return loop.run_in_executor(None, _refused, pki, lst.port, *args)

        target_pem = pki["target"][0].read_text()
        assert await refused("no-offer-pending")  # closed before any TLS work
        offer = lst.offer(target_pem)
        assert await refused(offer.token, "")  # no client certificate
        assert await refused(offer.token, "stranger")  # a certificate the offer is not for
        assert await refused("not-the-token")
        assert not offer.connected.done()  # none of these got the offer
        good = await loop.run_in_executor(
            None, dial, "127.0.0.1", lst.port, offer.token, client_ctx(pki), fingerprint(pki)
        )
        source_end = await offer.accepted(10)
        assert await refused(offer.token)  # single use
        for sock in (good, source_end):
            sock.close()
        offer2 = lst.offer(target_pem)  # a data port presenting another certificate than the pin
        assert await refused(offer2.token, "target", "stranger")
        lst.withdraw(offer2)

    asyncio.run(go())
    lst.close()


def test_a_slow_reader_gets_everything_though_the_sender_closed_long_before(pki):
    """The sender is done and gone while the receiving process has not read most of it yet: the end
    frame, read with the last bytes, is honoured once the process took them (seen once as a lost end)."""
    lst = listener(pki)
    data = os.urandom(2 * MiB)  # fits the socket buffers: the sender can finish before anything is read

    async def go() -> bytes:
        src_end, dst_end = await linked(pki, lst)
        feed_r, feed_w = os.pipe()
        threading.Thread(target=_write_all, args=(feed_w, data), daemon=True).start()
        sink_r, sink_w = os.pipe()
        got: list[bytes] = []
        sender_done = threading.Event()

        def slow_reader() -> None:
            sender_done.wait(10)  # the sender finishes and closes first
            got.append(_read_all(sink_r))

        reader = threading.Thread(target=slow_reader, daemon=True)
        reader.start()
        loop = asyncio.get_running_loop()
        receiving = loop.run_in_executor(None, run_relay, Relay(dst_end, None, sink_w, until=PEER))
        await loop.run_in_executor(None, run_relay, Relay(src_end, feed_r, None, until=LOCAL))
        os.close(feed_r)
        src_end.close()
        sender_done.set()
        await receiving
        reader.join(10)
        return got[0]

    assert asyncio.run(go()) == data
    lst.close()


def test_a_stranger_hammering_the_port_gets_few_handshakes(pki):
    """While an offer waits, 200 anonymous connections in a burst: at most the rate's worth are given a
    TLS handshake, the rest are closed at once; the offer still works afterwards."""
    import time

    lst = listener(pki)

    async def go() -> tuple[int, float]:
        offer = lst.offer(pki["target"][0].read_text())
        loop = asyncio.get_running_loop()

        def hammer() -> int:
            handshakes = 0
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            for _ in range(200):
                with socket.create_connection(("127.0.0.1", lst.port), timeout=5) as raw:
                    try:
                        with ctx.wrap_socket(raw) as tls:
                            tls.settimeout(5)
                            tls.recv(1)
                            handshakes += 1
                    except (ssl.SSLError, OSError) as exc:
                        if "certificate required" in str(exc).lower() or "alert" in str(exc).lower():
                            handshakes += 1  # the server did the handshake's work, then refused us
            return handshakes

        started = time.monotonic()
        handshakes = await loop.run_in_executor(None, hammer)
        elapsed = time.monotonic() - started
        await asyncio.sleep(1.1)  # the rate refills (a dial a flood refused falls back to the websocket)
        good = await loop.run_in_executor(
            None, dial, "127.0.0.1", lst.port, offer.token, client_ctx(pki), fingerprint(pki)
        )
        (await offer.accepted(10)).close()
        good.close()
        return handshakes, elapsed

    handshakes, elapsed = asyncio.run(go())
    assert handshakes <= 20 + 20 * elapsed + 5, (handshakes, elapsed)
    lst.close()
