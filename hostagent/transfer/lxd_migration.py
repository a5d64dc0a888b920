"""``lxd-migration``: LXD moves the data itself, from the source LXD straight to the target LXD.

Negotiated like any method (only LXD-backed agents offer it; it comes last, so ``--method lxd-migration``
or an agent restricted to it picks it). It streams no volume, so :class:`LxdMigrationMethod` implements
the session-level hooks of the interface (hostagent/transfer/base.py) instead of the per-volume ones. The
orch agents keep their roles — the token, the pinned certificates and the container lock are the same —
but instead of volumes the source sends an *offer*:

- the source agent asks its LXD for a migration operation (``POST /1.0/instances/<name>`` with
  ``migration: true``), and passes on, over the authenticated websocket, the operation's URL on the
  source LXD's HTTPS address, its one-time secrets and the source LXD's certificate;
- the target agent asks its LXD to create the instance from that operation (``source.type: migration``,
  ``mode: pull``, the certificate pinned), with the container's config, profiles and devices;
- when its LXD is done, the target computes the manifest of every volume it now has (snapshots and
  rootfs, in LXD's pool) and compares it with the source's, computed meanwhile: LXD checks nothing file
  by file, orch does, so a move deletes the source only after the same verification as with rsync. A
  copy that fails it is deleted on the target;
- the target answers ``done`` (or the error), and the source cancels its LXD operation if anything failed.

What LXD wrote is checked against the target's policy like any received volume (the target session's
:meth:`~hostagent.transfer.sides.TargetSide.check_received`), and deleted if refused.

The source LXD must listen on the network (``core.https_address``) where the target LXD can reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from hostagent.migration import manifest
from hostagent.migration.messages import Accept
from hostagent.migration.protocol import Channel, ProtocolError, require
from hostagent.migration.tokens import Migration
from hostagent.runtimes.base import ExportPlan
from hostagent.transfer.base import TransferMethod
from hostagent.transfer.sides import SourceSide, TargetSide
from orchapi import certs
from orchapi.errors import BadRequest, InternalError

log = logging.getLogger(__name__)

NAME = "lxd-migration"


class LxdMigrationMethod(TransferMethod):
    name = NAME
    rank = 90  # last: orch's own methods pre-fill from the image and verify every file as it arrives
    tool = None  # the LXDs need nothing more than their HTTPS address
    streams = False

    async def send_container(self, source: SourceSide) -> None:
        m = source.migration
        await send(source.agent, source.channel, m, source.plan)
        log.info("migration %s: %s handed to LXD's own migration", m.id, m.container)

    async def receive_container(self, target: TargetSide) -> dict[str, Any]:
        """The target's LXD pulls from the source's LXD; what it wrote is verified and checked like any
        received volume, and deleted if refused."""
        ch = target.channel
        target.progress(method=NAME, total_bytes=target.declared_size, volume=0, volumes=1)
        await ch.send_message(Accept(NAME))
        target.stage(NAME)
        moved = [0]

        def progress(n: int) -> None:  # from the worker thread following LXD's operation
            moved[0] = max(moved[0], n)
            target.external_bytes = moved[0]

        record = await receive(
            target.agent,
            ch,
            target.name,
            target.data,
            target.refresh,
            progress,
            target.source_host,
            target.check_received,
        )
        # LXD's last report may predate its last bytes; what it had to move is at least the volumes' size
        target.external_bytes = max(moved[0], target.declared_size)
        log.info("received container %s from %s by LXD's migration", target.name, target.source_where)
        return {
            "stage": "done",
            "method": NAME,
            "container": record.to_api(),
            "verified": True,
            "bytes_received": ch.bytes_received + target.external_bytes,
            "bytes_sent": ch.bytes_sent,
            "total_bytes": target.declared_size,
            "volume": 1,
            "volumes": 1,
        }


async def send(agent: Any, ch: Channel, migration: Migration, plan: ExportPlan) -> None:
    """Source side: offer an LXD migration operation, hold it until the target is done, and send the
    manifests of the volumes it moves for the target's verification."""
    offer = await agent.blocking(
        agent.runtime.lxd_migration_offer, migration.container, migration.snapshot, migration.instance_only
    )
    ok = False
    computing = asyncio.ensure_future(
        asyncio.gather(*(agent.blocking(manifest.compute, v.path, 1) for v in plan.volumes))
    )
    try:
        await ch.send(
            NAME,
            operation=offer["operation"],
            addresses=offer["addresses"],
            secrets=offer["secrets"],
            certificate=offer["certificate"],
        )
        await ch.recv("lxd-pulled")
        ours = await computing
        await ch.send(
            "lxd-digests",
            volumes=[
                {"snapshot": v.snapshot, "digest": m.digest, "count": m.count}
                for v, m in zip(plan.volumes, ours, strict=True)
            ],
        )
        await ch.recv("done")
        ok = True
    finally:
        if not computing.done():
            computing.cancel()
        if not ok:
            with contextlib.suppress(Exception):
                await asyncio.shield(agent.blocking(agent.runtime.lxd_migration_cancel, offer["id"]))


def parse_offer(msg: dict[str, Any], source_host: str | None = None) -> dict[str, Any]:
    """The source's offer, checked (the peer is authenticated, not trusted to send sane values).

    The source LXD may listen on several addresses (all of them, for ``core.https_address: :8443``); the
    one on the host this agent reached the source agent at is the one most likely reachable from here.
    """
    url = require(msg, "operation", str)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or not parts.path.startswith("/1.0/operations/"):
        raise BadRequest(f"lxd-migration: invalid source operation {url[:120]!r}")
    for address in msg.get("addresses") or []:
        if not isinstance(address, str):
            continue
        candidate = urlsplit(f"https://{address}")
        if source_host and candidate.hostname == source_host and candidate.port:
            url = f"https://{address}{parts.path}"
            break
    secrets = require(msg, "secrets", dict)
    if not secrets or not all(isinstance(k, str) and isinstance(v, str) for k, v in secrets.items()):
        raise BadRequest("lxd-migration: invalid secrets")
    pem = require(msg, "certificate", str)
    certs.fingerprint_pem(pem)  # a parseable certificate, or BadRequest
    return {"operation": url, "secrets": secrets, "certificate": pem}


async def receive(
    agent: Any,
    ch: Channel,
    name: str,
    data: dict[str, Any],
    refresh: bool,
    progress: Callable[[int], None],
    source_host: str | None = None,
    check: Callable[[str | None, manifest.Manifest], None] | None = None,
) -> Any:
    """Target side: have the local LXD pull the container from the source LXD, verify what it wrote
    against the source's manifests and pass each volume's manifest to ``check`` (the target's policy,
    which raises to refuse); returns the container's record. ``progress`` gets the bytes LXD reports
    having moved (called from a worker thread). A refused or unverified copy is deleted."""
    offer = parse_offer(await ch.recv(NAME), source_host)
    operations: list[str] = []  # the target LXD's operation, once it started
    pull = asyncio.ensure_future(
        agent.blocking(
            agent.runtime.lxd_migration_pull, name, data, offer, refresh, progress, operations.append
        )
    )
    try:
        record = await asyncio.shield(pull)
    except asyncio.CancelledError:
        await _stop_pull(agent, ch, name, refresh, pull, operations)
        raise
    try:
        await ch.send("lxd-pulled")
        theirs = require(await ch.recv("lxd-digests"), "volumes", list)
        snapshots = [s["name"] for s in data.get("snapshots") or []]
        if [v.get("snapshot") if isinstance(v, dict) else 0 for v in theirs] != [*snapshots, None]:
            raise ProtocolError("lxd-migration: the source's digests do not list the volumes sent")
        volumes = await agent.blocking(agent.runtime.volume_paths, name, snapshots)
        # every volume at once: the source hashed its side while LXD moved the data, this is the wait left
        ours = await asyncio.gather(*(agent.blocking(manifest.compute, path, 1) for _, path in volumes))
        for (snapshot, _path), got, want in zip(volumes, ours, theirs, strict=True):
            if got.digest != want.get("digest"):
                what = "rootfs" if snapshot is None else f"snapshot {snapshot}"
                raise VerificationError(
                    f"verification of {what} failed after LXD's migration ({got.count} entries here, "
                    f"{want.get('count')} on the source); the copy was discarded"
                )
            if check is not None:
                check(snapshot, got)
    except BaseException:
        if not refresh:  # a copy LXD made but orch cannot vouch for must not look like a good one
            with contextlib.suppress(Exception):
                await asyncio.shield(agent.blocking(agent.runtime.delete, name))
        raise
    with contextlib.suppress(Exception):
        await ch.send("done")
    return record


async def _stop_pull(
    agent: Any, ch: Channel, name: str, refresh: bool, pull: asyncio.Future[Any], operations: list[str]
) -> None:
    """The job was cancelled while LXD moves the data: stop both LXDs, then remove what LXD made.

    The worker thread following LXD's operation cannot be interrupted, so LXD is: the channel is dropped
    (the source then cancels its LXD's operation, which fails the pull) and the target's operation is
    cancelled too; if the pull still completed, the new container is deleted.
    """
    ch.abort()
    for operation in operations:
        with contextlib.suppress(Exception):
            await agent.blocking(agent.runtime.lxd_migration_cancel, operation)
    try:
        await asyncio.wait_for(asyncio.shield(pull), 300)
    except BaseException:  # noqa: BLE001 - failing is what is wanted here
        return
    if not refresh:
        with contextlib.suppress(Exception):
            await agent.blocking(agent.runtime.delete, name)


class VerificationError(InternalError):
    """What LXD wrote is not what the source has."""
