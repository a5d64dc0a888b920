"""The target side of a migration: pull an image or a container from a source agent.

``POST /1.0/images`` with ``{"source": {"type": "migration", ...}}`` and ``POST /1.0/containers`` with
``{"source": {"type": "migration", "mode": "pull", ...}}`` start operations that connect to the source
agent over HTTPS:

- presenting this agent's own server certificate as the TLS client certificate (the source loaded it into
  its TLS context when it issued the migration, and checks the token's scope against its fingerprint);
- trusting only the source certificate given in the request (a context of its own, never the system's CA
  store nor ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``), and comparing the peer certificate's SHA-256
  fingerprint exactly before the request carrying the token is sent, so a man in the middle gets
  nothing.

The container pull stages everything in a ``containers/.creating-*`` dir, verifies every volume against
the source's manifest and only then commits; any failure (source error, disconnect, mismatch, no space,
cancellation) kills the child processes and removes the staging dir, leaving no partial container.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import hashlib
import logging
import os
import re
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from hostagent.images.store import has_image
from hostagent.migration import manifest
from hostagent.migration.protocol import (
    HEARTBEAT,
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    Channel,
    ProtocolError,
    require,
)
from hostagent.operations import Operation
from hostagent.runtimes.base import LAYOUT_ROOTFS, ImportStaging
from hostagent.runtimes.idmap import IdMap
from hostagent.transfer import lxd_migration
from hostagent.transfer.base import PREFERENCE, ReceiveContext, get_method, negotiate, probe_features
from orchapi import certs, tlsconfig
from orchapi.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    InternalError,
    OrchError,
    Unavailable,
    error_for_status,
)
from orchapi.names import check_snapshot_name

log = logging.getLogger(__name__)

_OPERATION_PATH = re.compile(r"^/1\.0/migrations/[0-9a-fA-F-]{36}\Z")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}\Z")
#: the operation metadata is refreshed this often while bytes move
TICK = 0.25
#: how long connecting (TCP, TLS, websocket upgrade) to the source may take
CONNECT_TIMEOUT = 60
CHUNK = 1024 * 1024


# ------------------------------------------------------------------------------------------- requests


@dataclass
class SourceRef:
    """Where the source is and how to prove who we are to it."""

    url: str  # https://host:port/1.0/migrations/<id>
    token: str
    certificate: str
    fingerprint: str

    @property
    def where(self) -> str:
        parts = urlsplit(self.url)
        return parts.netloc


def _source_ref(source: dict[str, Any], token: Any) -> SourceRef:
    url = source.get("operation")
    if not isinstance(url, str):
        raise BadRequest("source.operation must be the URL of the source's migration")
    parts = urlsplit(url)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.username
        or parts.password
        or parts.query
        or parts.fragment
        or not _OPERATION_PATH.match(parts.path)
    ):
        raise BadRequest(
            f"invalid source.operation {url!r}", "expected https://HOST:PORT/1.0/migrations/<migration id>"
        )
    if not isinstance(token, str) or not token or len(token) > 512:
        raise BadRequest("the migration secret is missing")
    pem = source.get("certificate")
    if not isinstance(pem, str) or not pem:
        raise BadRequest("source.certificate must be the source agent's PEM certificate")
    return SourceRef(url.rstrip("/"), token, pem, certs.fingerprint_pem(pem))


@dataclass
class PullSpec:
    source: SourceRef
    base_image: str
    refresh: bool
    #: the transfer method the user asked for (None: negotiate)
    method: str | None = None


def parse_pull(source: dict[str, Any]) -> PullSpec:
    """The ``source`` object of ``POST /1.0/containers`` for ``type: migration``."""
    mode = source.get("mode", "pull")
    if mode != "pull":
        raise BadRequest(f"migration mode {mode!r} is not supported", "only pull mode is")
    secrets = source.get("secrets")
    if not isinstance(secrets, dict):
        raise BadRequest("source.secrets must hold the 'fs' migration secret")
    base_image = source.get("base-image") or ""
    if not isinstance(base_image, str) or (base_image and not _FINGERPRINT.match(base_image)):
        raise BadRequest("source.base-image must be an image fingerprint")
    refresh = source.get("refresh", False)
    if not isinstance(refresh, bool):
        raise BadRequest("source.refresh must be true or false")
    method = source.get("method") or None
    if method is not None and (not isinstance(method, str) or method not in PREFERENCE):
        raise BadRequest(f"unknown transfer method {method!r}", "use one of " + ", ".join(PREFERENCE))
    return PullSpec(_source_ref(source, secrets.get("fs")), base_image, refresh, method)


def parse_image_pull(source: dict[str, Any]) -> tuple[SourceRef, str]:
    """The ``source`` object of ``POST /1.0/images`` for ``type: migration``."""
    fingerprint = source.get("fingerprint")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
        raise BadRequest("source.fingerprint must be the image's full SHA-256 fingerprint")
    return _source_ref(source, source.get("secret")), fingerprint


# ------------------------------------------------------------------------------------------- TLS


def client_context(agent: Any, source_pem: str) -> ssl.SSLContext:
    """Present our server certificate; trust exactly the source's certificate and nothing else."""
    ctx = tlsconfig.harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False  # the pin is the identity, not a name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a self-signed leaf is its own trust anchor
    ctx.load_verify_locations(cadata=source_pem)
    ctx.load_cert_chain(str(agent.cert_path), str(agent.key_path))
    return ctx


class PinnedConnector(aiohttp.TCPConnector):
    """TLS with our context, and the peer certificate's SHA-256 checked right after the handshake, before
    any request is written (aiohttp only offers that check together with an unverified context)."""

    def __init__(self, ctx: ssl.SSLContext, fingerprint: str) -> None:
        super().__init__(ssl=ctx, force_close=True, limit=4)
        self._pin = aiohttp.Fingerprint(bytes.fromhex(fingerprint))

    def _get_fingerprint(self, req: Any) -> aiohttp.Fingerprint:  # noqa: ARG002 - aiohttp's hook
        return self._pin


def _check_peer(get_extra_info: Any, fingerprint: str) -> None:
    """The same check again on the live connection (in case aiohttp's hook ever changes)."""
    sslobj = get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der or certs.fingerprint_der(der) != fingerprint:
        raise Forbidden("the source agent's certificate does not match the one given for the migration")


@contextlib.asynccontextmanager
async def _client(agent: Any, ref: SourceRef) -> AsyncIterator[aiohttp.ClientSession]:
    connector = PinnedConnector(client_context(agent, ref.certificate), ref.fingerprint)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, trust_env=False, timeout=timeout) as session:
        yield session


def _connect_error(ref: SourceRef, exc: BaseException) -> OrchError:
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return Forbidden(
            f"the source agent at {ref.where} presented a certificate other than the migration's",
            f"expected {ref.fingerprint}, got {exc.got.hex()}",
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError):
        return Forbidden(
            f"TLS with the source agent at {ref.where} failed: its certificate is not the one given for "
            f"the migration, or it does not accept this agent's ({exc})"
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        message = (exc.headers or {}).get("X-Orch-Error") if exc.headers else None
        return error_for_status(
            exc.status, f"the source agent refused the migration: {message or f'{exc.status} {exc.message}'}"
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return Unavailable(
            f"cannot reach the source agent at {ref.where}: it closed the connection",
            "with TLS 1.3 this is how a refused client certificate looks: "
            "was the migration issued for this agent?",
        )
    return Unavailable(f"cannot reach the source agent at {ref.where}: {exc}")


# ------------------------------------------------------------------------------------------- images


def start_image_pull(agent: Any, source: dict[str, Any]) -> Operation:
    ref, fingerprint = parse_image_pull(source)

    async def work(op: Operation) -> dict[str, Any]:
        # one pull per fingerprint at a time: concurrent copies of containers made from one image (an
        # evacuation) wait for the first pull and then find the image cached
        async with _image_locks[fingerprint]:
            if await agent.blocking(has_image, agent.images, fingerprint):
                return {"fingerprint": fingerprint, "cached": True}
            return await pull_image(agent, op, ref, fingerprint)

    return agent.operations.start(f"Pulling image {fingerprint[:12]} from {ref.where}", work, {"images": []})


_image_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)


async def pull_image(agent: Any, op: Operation, ref: SourceRef, fingerprint: str) -> dict[str, Any]:
    """Stream ``GET <migration>/image`` to the upload dir, check the SHA-256, import with every check."""
    upload = agent.images.upload_dir() / f"pull-{uuid.uuid4().hex}"
    op.progress(stage="image", bytes_received=0, bytes_sent=0)
    digest = hashlib.sha256()
    received = 0
    try:
        async with _client(agent, ref) as session:
            try:
                response = await session.get(
                    ref.url + "/image", headers={"Authorization": f"Bearer {ref.token}"}
                )
            except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
                raise _connect_error(ref, exc) from None
            async with response:
                if response.connection is not None and response.connection.transport is not None:
                    _check_peer(response.connection.transport.get_extra_info, ref.fingerprint)
                if response.status != 200:
                    try:
                        message = (await response.json()).get("error")
                    except (ValueError, aiohttp.ContentTypeError):
                        message = None
                    raise error_for_status(
                        response.status, f"source agent: {message or f'{response.status} {response.reason}'}"
                    )
                total = response.content_length
                if total is not None:
                    op.progress(total_bytes=total)
                    free = agent.storage.free_bytes()
                    if total > free:
                        raise InsufficientStorage(
                            f"no space left on the target for image {fingerprint[:12]}: "
                            f"it needs {total} bytes, {free} are free"
                        )
                with open(upload, "wb") as fh:
                    async for chunk in response.content.iter_chunked(CHUNK):
                        fh.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        op.progress(bytes_received=received)
        if digest.hexdigest() != fingerprint:
            raise BadRequest(
                f"the image received from the source does not match fingerprint {fingerprint[:12]} "
                f"(got {digest.hexdigest()[:12]})"
            )
        try:
            record = await agent.blocking(agent.images.import_tarball, upload, [], fingerprint)
        except Conflict:
            # imported meanwhile through another path (an upload): wait for that import to commit
            for _ in range(600):
                if await agent.blocking(has_image, agent.images, fingerprint):
                    return {"fingerprint": fingerprint, "cached": True, "bytes": received}
                await asyncio.sleep(0.5)
            raise
        return {
            "fingerprint": record.fingerprint,
            "cached": False,
            "bytes": received,
            "image": record.to_api(),
        }
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage(
                f"no space left on the target while receiving image {fingerprint[:12]}"
            ) from None
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(upload)


# ------------------------------------------------------------------------------------------- containers


async def start_pull(agent: Any, name: str, source: dict[str, Any]) -> Operation:
    """Validate the request and start the pull (a taken name is refused now, before any connection)."""
    spec = parse_pull(source)
    await agent.blocking(agent.runtime.import_check, name, spec.refresh)

    async def work(op: Operation) -> dict[str, Any]:
        return await pull_container(agent, op, name, spec)

    resources = {"containers": [f"/1.0/containers/{name}"]}
    return agent.operations.start(f"Copying container {name} from {spec.source.where}", work, resources)


@dataclass
class Header:
    container: dict[str, Any]
    snapshots: list[dict[str, str]]
    volumes: list[tuple[str | None, int]]
    methods: list[str]
    base_image: str
    idmap: dict[str, int] | None
    size: int
    features: frozenset[str]
    #: what a btrfs stream of a volume holds (a bare rootfs, or LXD's volume)
    layout: str
    #: the source runtime's description of the instance (LXD's profiles, devices ...), or None
    instance: dict[str, Any] | None
    #: why the source offers only some of its methods for this container ("" if it offers all)
    methods_reason: str = ""


def parse_header(msg: dict[str, Any]) -> Header:
    """The source's header, checked field by field (the peer is not trusted to send sane values)."""
    if msg.get("protocol") != PROTOCOL_VERSION:
        raise BadRequest(
            f"the source speaks migration protocol {msg.get('protocol')!r}; "
            f"this agent speaks {PROTOCOL_VERSION}"
        )
    c = require(msg, "container", dict)
    for key in ("created_at", "architecture"):
        if not isinstance(c.get(key), str) or not c[key] or len(c[key]) > 128:
            raise BadRequest(f"migration header: invalid container {key}")
    init = c.get("init")
    if not isinstance(init, str) or not init.startswith("/") or len(init) > 4096 or "\x00" in init:
        raise BadRequest("migration header: invalid container init")
    base_image = msg.get("base_image") or ""
    if not isinstance(base_image, str) or (base_image and not _FINGERPRINT.match(base_image)):
        raise BadRequest("migration header: invalid base_image")
    container = {
        "created_at": c["created_at"],
        "architecture": c["architecture"],
        "init": init,
        "base_image": base_image,
        "config": _string_map(c.get("config") or {}),
    }
    snapshots = []
    for s in require(msg, "snapshots", list):
        if not isinstance(s, dict) or not isinstance(s.get("created_at"), str):
            raise BadRequest("migration header: invalid snapshot entry")
        snapshots.append({"name": check_snapshot_name(s.get("name")), "created_at": s["created_at"]})
    names = [s["name"] for s in snapshots]
    if len(set(names)) != len(names):
        raise BadRequest("migration header: duplicate snapshot names")
    volumes: list[tuple[str | None, int]] = []
    for v in require(msg, "volumes", list):
        size = v.get("size") if isinstance(v, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest("migration header: invalid volume entry")
        volumes.append((v.get("snapshot"), size))
    if [v[0] for v in volumes] != [*names, None]:
        raise BadRequest("migration header: the volumes must be the snapshots, oldest first, then the rootfs")
    methods = [m for m in require(msg, "methods", list) if isinstance(m, str)]
    idmap = msg.get("idmap")
    if idmap is not None:
        try:
            parsed = IdMap.from_json(idmap)
        except (KeyError, TypeError, ValueError):
            raise BadRequest("migration header: invalid idmap") from None
        if not (
            0 <= parsed.host_base < 2**32 and 0 <= parsed.gid_host_base < 2**32 and 0 < parsed.size <= 2**32
        ):
            raise BadRequest("migration header: invalid idmap")
        idmap = parsed.to_json()
    features = frozenset(f for f in msg.get("features") or [] if isinstance(f, str))
    layout = msg.get("layout") or LAYOUT_ROOTFS
    if not isinstance(layout, str):
        raise BadRequest("migration header: invalid layout")
    instance = msg.get("instance")
    if instance is not None and not isinstance(instance, dict):
        raise BadRequest("migration header: invalid instance description")
    return Header(
        container,
        snapshots,
        volumes,
        methods,
        base_image,
        idmap,
        sum(v[1] for v in volumes),
        features,
        layout,
        instance,
        str(msg.get("methods_reason") or "")[:500],
    )


def _string_map(config: Any) -> dict[str, str]:
    if not isinstance(config, dict) or len(config) > 4096:
        raise BadRequest("migration header: the container config must be a mapping of strings")
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str) or len(key) > 256 or len(value) > 1 << 20:
            raise BadRequest(f"migration header: invalid container config entry {str(key)[:64]!r}")
    return dict(config)


async def pull_container(agent: Any, op: Operation, name: str, spec: PullSpec) -> dict[str, Any]:
    async with agent.container_lock(name):
        await agent.blocking(agent.runtime.import_check, name, spec.refresh)
        async with _client(agent, spec.source) as session:
            try:
                ws = await asyncio.wait_for(
                    session.ws_connect(
                        spec.source.url + "/fs",
                        headers={"Authorization": f"Bearer {spec.source.token}"},
                        max_msg_size=MAX_MESSAGE,
                        heartbeat=HEARTBEAT,
                        compress=0,
                    ),
                    CONNECT_TIMEOUT,
                )
            except TimeoutError:
                raise Unavailable(f"the source agent at {spec.source.where} did not answer in time") from None
            except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
                raise _connect_error(spec.source, exc) from None
            ch = Channel(ws, "source")
            try:
                _check_peer(ws.get_extra_info, spec.source.fingerprint)
                return await TargetSession(agent, op, name, spec, ch).run()
            except BaseException as exc:
                await ch.send_error(exc)
                ch.abort()
                raise
            finally:
                await ch.close()


class TargetSession:
    def __init__(self, agent: Any, op: Operation, name: str, spec: PullSpec, ch: Channel) -> None:
        self.agent, self.op, self.name, self.spec, self.ch = agent, op, name, spec, ch
        self.repaired: list[str] = []
        #: bytes LXD itself moved (the lxd-migration method), counted with the websocket's
        self.lxd_bytes = 0

    def _bytes(self) -> None:
        self.op.progress(
            bytes_received=self.ch.bytes_received + self.lxd_bytes, bytes_sent=self.ch.bytes_sent
        )

    def stage(self, stage: str, **fields: Any) -> None:
        self.op.progress(stage=stage, **fields)
        self._bytes()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self._bytes()

    async def run(self) -> dict[str, Any]:
        ticker = asyncio.ensure_future(self._tick())
        try:
            return await self._run()
        finally:
            ticker.cancel()
            self._bytes()

    async def _run(self) -> dict[str, Any]:
        agent, ch = self.agent, self.ch
        header = parse_header(await ch.recv("header"))
        config = await agent.blocking(agent.runtime.import_config, header.container, header.instance)
        existing = await agent.blocking(agent.runtime.import_check, self.name, self.spec.refresh)
        # btrfs streams carry whole volumes: only between runtimes that lay volumes out alike
        usable = [m for m in agent.transfer_methods if m != "btrfs" or header.layout == agent.runtime.layout]
        try:
            method_name = negotiate(header.methods, usable, existing is not None, self.spec.method)
        except Conflict as exc:
            if header.methods_reason:  # the source said why it offers so few: that is the real cause
                raise Conflict(f"{exc.message}: {header.methods_reason}", exc.hint) from None
            raise
        data = {
            **header.container,
            "config": config,
            "snapshots": header.snapshots,
            "instance": header.instance,
        }
        if method_name == lxd_migration.NAME:
            return await self._lxd_migration(header, data)
        method = get_method(method_name)
        have = {s["name"] for s in existing.get("snapshots", [])} if existing else set()
        skip = [s["name"] for s in header.snapshots if s["name"] in have]
        todo = [v for v in header.volumes if v[0] is None or v[0] not in skip]
        needed = sum(size for _, size in todo)
        free = agent.storage.free_bytes()
        self.op.progress(method=method_name, total_bytes=needed, volume=0, volumes=len(todo))
        if needed > free:
            raise InsufficientStorage(
                f"no space left on the target for container {self.name}: "
                f"it needs {needed} bytes, {free} are free"
            )
        features = probe_features(agent.data_dir) & header.features
        staging: ImportStaging = await agent.blocking(
            agent.runtime.import_begin, self.name, self.spec.refresh
        )
        committed = False
        try:
            await ch.send("accept", method=method_name, skip=skip, features=sorted(features))
            files = await self._receive_all(header, staging, method, method_name, skip, todo, features)
            self.stage("commit")
            commit = asyncio.ensure_future(
                agent.blocking(agent.runtime.import_commit, staging, data, header.idmap)
            )
            try:
                record = await asyncio.shield(commit)
            except asyncio.CancelledError:
                # past the point of no return: the commit (a thread) runs to its end and its outcome is
                # reported, so a cancelled job's rollback sees the container it must delete; removing
                # the staging dir under a running commit could leave half a container
                record = await commit
            committed = True
            with contextlib.suppress(Exception):
                await ch.send("done")
        except InsufficientStorage as exc:
            if str(exc).startswith("no space left on the target"):
                raise
            raise InsufficientStorage(f"no space left on the target: {exc}") from None
        finally:
            if not committed:
                with contextlib.suppress(Exception):
                    await asyncio.shield(agent.blocking(agent.runtime.import_abort, staging))
        log.info(
            "received container %s from %s by %s: %d bytes in, %d out",
            self.name,
            self.spec.source.where,
            method_name,
            ch.bytes_received,
            ch.bytes_sent,
        )
        result = {
            "stage": "done",
            "method": method_name,
            "container": record.to_api(),
            "verified": True,
            "files": files,
            "bytes_received": ch.bytes_received,
            "bytes_sent": ch.bytes_sent,
            "total_bytes": needed,
            "volume": len(todo),
            "volumes": len(todo),
        }
        if self.repaired:
            result["repaired"] = self.repaired
        return result

    async def _lxd_migration(self, header: Header, data: dict[str, Any]) -> dict[str, Any]:
        """The target's LXD pulls from the source's LXD (see hostagent/transfer/lxd_migration.py)."""
        self.op.progress(method=lxd_migration.NAME, total_bytes=header.size, volume=0, volumes=1)
        await self.ch.send("accept", method=lxd_migration.NAME, skip=[], features=[])
        self.stage("lxd-migration")
        moved = [0]

        def progress(n: int) -> None:  # from the worker thread following LXD's operation
            moved[0] = max(moved[0], n)
            self.lxd_bytes = moved[0]

        source_host = urlsplit(self.spec.source.url).hostname
        record = await lxd_migration.receive(
            self.agent, self.ch, self.name, data, self.spec.refresh, progress, source_host
        )
        # LXD's last report may predate its last bytes; what it had to move is at least the volumes' size
        self.lxd_bytes = max(moved[0], header.size)
        log.info("received container %s from %s by LXD's migration", self.name, self.spec.source.where)
        return {
            "stage": "done",
            "method": lxd_migration.NAME,
            "container": record.to_api(),
            "verified": True,
            "bytes_received": self.ch.bytes_received + self.lxd_bytes,
            "bytes_sent": self.ch.bytes_sent,
            "total_bytes": header.size,
            "volume": 1,
            "volumes": 1,
        }

    async def _receive_all(
        self,
        header: Header,
        staging: ImportStaging,
        method: Any,
        method_name: str,
        skip: list[str],
        todo: list[tuple[str | None, int]],
        features: frozenset[str],
    ) -> int:
        agent, ch = self.agent, self.ch
        existing = staging.existing
        existing_map = existing.get("idmap") if existing else None
        lxd_layout = header.layout != LAYOUT_ROOTFS
        image = self.spec.base_image or header.base_image or None
        base: tuple[Path, dict[str, int] | None] | None = None  # the closest volume the target has
        files = 0
        index = 0
        for snapshot, _size in header.volumes:
            if snapshot is not None and snapshot in skip:
                base = (staging.existing_volume(snapshot), existing_map)
                continue
            what = "rootfs" if snapshot is None else f"snapshot {snapshot}"
            label = "rootfs" if snapshot is None else f"snapshot {snapshot} ({index + 1}/{len(todo)})"
            msg = await ch.recv("volume")
            if msg.get("index") != index or msg.get("snapshot") != snapshot:
                raise ProtocolError(
                    f"migration protocol error: the source sent volume {msg.get('index')!r} out of order"
                )
            self.stage("prefill" if method.prefill else label, volume=index + 1)
            if method_name == "btrfs":
                dest = await agent.blocking(agent.runtime.import_receive_dir, staging, snapshot)
            elif method.prefill:
                if snapshot is None and existing is not None:
                    start = (staging.existing_volume(None), existing_map)
                else:
                    start = base
                dest = await agent.blocking(
                    agent.runtime.import_prefill,
                    staging,
                    snapshot,
                    start[0] if start else None,
                    start[1] if start else None,
                    image if start is None else None,
                    header.idmap,
                )
            else:
                dest = await agent.blocking(
                    agent.runtime.import_prefill, staging, snapshot, None, None, None, header.idmap
                )
            self.stage(label)
            idmap = IdMap.from_json(header.idmap) if header.idmap else None
            ctx = ReceiveContext(ch, dest, features, idmap, what)
            received = await method.receive(ctx)
            ours = await self._verify(index, what, received, method)
            if ours is None:  # a repair pass (rsync with --checksum), then verify again
                self.stage(label)
                received = await method.receive(ctx)
                ours = await self._verify(index, what, received, method, final=True)
                self.repaired.append(what)
            assert ours is not None
            manifest.check_ownership(ours, idmap, "rootfs" if method_name == "btrfs" and lxd_layout else None)
            await agent.blocking(agent.runtime.import_place, staging, snapshot, received)
            await ch.send("verified", index=index)
            if snapshot is None:
                files = ours.count
            base = (staging.volume(snapshot), header.idmap)
            index += 1
        return files

    async def _verify(
        self, index: int, what: str, received: Path, method: Any, final: bool = False
    ) -> manifest.Manifest | None:
        """Compare the received volume's manifest with the source's; None asks for a repair pass."""
        self.stage("verify")
        ours = await self.agent.blocking(manifest.compute, received)
        end = await self.ch.recv("volume-end")
        if end.get("index") != index:
            raise ProtocolError("migration protocol error: volume-end for another volume")
        digest = require(end, "digest", str)
        count = require(end, "count", int)
        if digest == ours.digest:
            return ours
        if method.prefill and not final:
            log.warning(
                "%s of %s differs after the transfer; sending it again with --checksum", what, self.name
            )
            await self.ch.send("retry", index=index)
            return None
        await self.ch.send("manifest-request", index=index)
        lines: list[Any] = []
        while True:
            msg = await self.ch.recv("manifest", "manifest-end")
            if msg["type"] == "manifest-end":
                break
            lines.extend(require(msg, "lines", list))
            if len(lines) > count:
                raise ProtocolError(
                    "migration protocol error: the source's manifest is longer than announced"
                )
        theirs = manifest.parse_lines(lines)
        if manifest.digest_of(lines) != digest:
            raise ProtocolError("migration protocol error: the source's manifest does not match its digest")
        diffs = manifest.differences(theirs, manifest.parse_lines(ours.lines))
        raise VerificationFailed(
            f"verification of {what} failed, the copy was discarded: "
            + ("; ".join(diffs) if diffs else "the manifests differ")
        )


class VerificationFailed(InternalError):
    """The received volume is not what the source sent."""
