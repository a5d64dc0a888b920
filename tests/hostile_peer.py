"""A hostile source agent for tests: speaks the migration protocol and sends whatever a test scripts.

A real target agent is asked (through its API, as the worker would) to pull a container from this peer;
the peer serves ``GET /1.0/migrations/<id>/fs`` (and ``/image``) over real TLS with its own certificate,
and runs the test's *script* on the websocket: any header, any tar bytes, the real rsync or ``btrfs
send`` over a tree the test crafted as root (setuid files, device nodes, host file capabilities ...).
The source side of the real methods is reused (hostagent/transfer/), so what arrives is exactly what a
compromised agent running this code base could send; where a test wants more (raw bytes, lies in the
header), the script does it by hand.

The peer runs its own event loop in a thread, so tests stay synchronous.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import tarfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from hostagent.datalink.listener import DataListener
from hostagent.migration import manifest
from hostagent.migration.protocol import HEARTBEAT, PROTOCOL_VERSION, Channel, pump
from hostagent.storage.base import StorageDriver
from hostagent.transfer.base import SendContext
from hostagent.transfer.registry import get_method
from orchapi import certs, tlsconfig
from orchapi.modes import MAX_MESSAGE

Script = Callable[[Channel], Awaitable[None]]
#: the id map of an unprivileged native container (what the peer claims by default)
IDMAP = {"host_base": 100000, "size": 65536, "gid_base": 100000}


class HostilePeer:
    """An HTTPS server on 127.0.0.1 playing the source agent of one migration at a time."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = workdir / "peer.crt", workdir / "peer.key"
        certs.ensure(self.cert, self.key, "hostile-peer")
        self.certificate = self.cert.read_text()
        self.migration_id = str(uuid.uuid4())
        self.script: Script | None = None
        self.image: bytes = b""
        #: what went wrong on the peer's side (an assertion in a script), re-raised by :meth:`check`
        self.errors: list[BaseException] = []
        self.finished = threading.Event()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._scripts: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> HostilePeer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        self.datalink = DataListener(sock, self.cert, self.key).start()
        return self

    def offers(self, target_pem: str):  # type: ignore[no-untyped-def]
        """What a script passes as ``link`` to send a volume over this peer's data port: the offer
        maker for the target agent whose certificate is ``target_pem``."""
        return lambda: self.datalink.offer(target_pem)

    def stop(self) -> None:
        """Stop serving; a script still running (blocked on a target that hung up) is cancelled."""
        if getattr(self, "datalink", None) is not None:
            self.datalink.close()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> HostilePeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _shutdown(self) -> None:
        for task in list(self._scripts):
            task.cancel()
        await asyncio.gather(*self._scripts, return_exceptions=True)
        assert self._runner is not None
        await self._runner.cleanup()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/1.0/migrations/{id}/fs", self._fs)
        app.router.add_get("/1.0/migrations/{id}/image", self._image)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        ctx = tlsconfig.harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_NONE  # a hostile source takes any target
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _fs(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=HEARTBEAT, compress=False)
        await ws.prepare(request)
        ch = Channel(ws, "target")
        task = asyncio.current_task()
        assert task is not None
        self._scripts.add(task)
        try:
            assert self.script is not None, "no script set"
            await self.script(ch)
        except Exception as exc:  # noqa: BLE001 - the target refusing is the expected end
            self.errors.append(exc)
        finally:
            self._scripts.discard(task)
            ch.abort()
            await ch.close()
            self.finished.set()
        return ws

    async def _image(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.image, content_type="application/octet-stream")

    # -- what the target is told -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/1.0/migrations/{self.migration_id}"

    def pull_body(self, name: str, **over: Any) -> dict[str, Any]:
        """The body of ``POST /1.0/containers`` that makes a target pull ``name`` from this peer."""
        source = {
            "type": "migration",
            "mode": "pull",
            "operation": self.url,
            "secrets": {"fs": "not-a-real-secret"},
            "certificate": self.certificate,
            "base-image": "",
            "refresh": False,
        }
        source.update(over)
        return {"name": name, "source": source}

    def image_pull_body(self, image: bytes) -> dict[str, Any]:
        self.image = image
        return {
            "source": {
                "type": "migration",
                "operation": self.url,
                "secret": "not-a-real-secret",
                "certificate": self.certificate,
                "fingerprint": hashlib.sha256(image).hexdigest(),
            }
        }


# ------------------------------------------------------------------------------------------ scripts


def header(volumes: list[dict[str, Any]], **over: Any) -> dict[str, Any]:
    """A plausible header of an unprivileged native container; ``over`` replaces any field."""
    msg: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "container": {
            "name": "evil",
            "created_at": "2026-01-01T00:00:00Z",
            "base_image": "",
            "architecture": "x86_64",
            "config": {},
            "init": "/sbin/init",
        },
        "snapshots": [],
        "volumes": volumes,
        "methods": ["rsync", "tar"],
        "base_image": "",
        "idmap": dict(IDMAP),
        "layout": "rootfs",
        "instance": None,
        "size": sum(v["size"] for v in volumes),
        "features": ["xattrs", "acls"],
    }
    msg.update(over)
    return msg


def declared(path: Path) -> dict[str, Any]:
    """The honest declaration of a volume: its size on disk and its entries."""
    size, entries, _sparse = StorageDriver.usage(path)
    return {"snapshot": None, "size": size, "entries": entries}


async def send_header(ch: Channel, msg: dict[str, Any]) -> dict[str, Any]:
    await ch.send("header", **msg)
    return await ch.recv("accept")


async def finish_volume(ch: Channel, index: int, path: Path | None) -> None:
    """``volume-end`` with the real manifest of ``path`` (so verification passes), then wait for the
    target's verdict and for ``done``."""
    made = manifest.compute(path) if path is not None else manifest.Manifest([], "0" * 64, 0)
    await ch.send("volume-end", index=index, digest=made.digest, count=made.count)
    await ch.recv("verified")


async def send_with_method(
    ch: Channel,
    method: str,
    path: Path,
    features: frozenset[str],
    index: int = 0,
    link: Any = None,
    compression: str = "",
) -> None:
    """One volume sent by the real source side of ``method`` (rsync, tar, btrfs) from ``path``; the
    ``features`` decide its options (e.g. ``devices`` makes rsync send device nodes); with ``link``
    (:meth:`HostilePeer.offers`) its bytes go over the peer's data port."""
    await ch.send("volume", index=index, snapshot=None)
    await get_method(method).send(SendContext(ch, path, None, features, link=link, compression=compression))
    await finish_volume(ch, index, path)


async def send_tar_bytes(ch: Channel, data: bytes, index: int = 0, pace: float = 0.0) -> None:
    """One volume sent as raw tar bytes (in 64 KiB frames, ``pace`` seconds apart)."""
    await ch.send("volume", index=index, snapshot=None)
    await ch.send("tar")
    await ch.recv("ready")
    view = memoryview(data)
    for start in range(0, len(data), 65536):
        await ch.send_data(bytes(view[start : start + 65536]))
        if pace:
            await asyncio.sleep(pace)
    await ch.send_eof()
    done = await ch.recv("exit")
    if done.get("code") != 0:
        raise RuntimeError(f"target: {done.get('message')}")


async def send_stream(ch: Channel, read: Callable[[int], Awaitable[bytes]]) -> None:
    await pump(read, ch)


def tar_of(path: Path) -> bytes:
    """A POSIX tar of ``path`` as GNU tar would send it (owners, modes, xattrs)."""
    import subprocess

    from hostagent.transfer.tar import tar_argv

    return subprocess.run(tar_argv(path), check=True, capture_output=True).stdout


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.uid = info.gid = 100000
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info
