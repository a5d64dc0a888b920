"""The source side of a migration: stream a container's volumes to the target agent.

Runs in the handler of ``GET /1.0/migrations/<id>/fs`` once the token and the peer's certificate were
accepted (pull), or in the operation that dialed the target's sink (push,
:mod:`hostagent.migration.push`), holding the container's lock for the whole transfer (so the container
cannot be started, snapshotted or deleted meanwhile). See :mod:`hostagent.migration.protocol` for the
conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from hostagent.migration import manifest
from hostagent.migration.messages import Accept, DeclaredVolume, Header, VolumeEnd
from hostagent.migration.protocol import MANIFEST_CHUNK, Channel, ProtocolError
from hostagent.migration.tokens import Migration
from hostagent.runtimes.base import ExportPlan
from hostagent.storage.base import VolumeUsage
from hostagent.transfer.base import SendContext, SendPreparation, TransferMethod
from hostagent.transfer.features import probe_features
from hostagent.transfer.ratelimit import Throttle, TokenBucket
from hostagent.transfer.registry import get_method
from orchapi.errors import BadRequest, Conflict, OrchError

log = logging.getLogger(__name__)


class SourceSession:
    """One migration served to the target that connected; the :class:`~hostagent.transfer.sides.SourceSide`
    the negotiated method sends through."""

    def __init__(self, agent: Any, migration: Migration, ws: Any) -> None:
        self.agent = agent
        self.migration = migration
        self.ws = ws
        self.channel = Channel(ws, "target")
        job_limit = TokenBucket(migration.bwlimit) if migration.bwlimit else None
        self.channel.send_throttle = Throttle(agent.bandwidth, job_limit)
        self.plan: ExportPlan | None = None
        #: the target's accept
        self.accept = Accept("")
        #: the source's features (xattrs, acls)
        self.features: frozenset[str] = frozenset()
        #: what the method made to send the volumes (released on the way out)
        self._prepared: SendPreparation | None = None
        #: whether each planned volume (by path) has files with holes
        self.sparse: dict[Path, bool] = {}
        #: why the conversation failed (the target was told); None after a success
        self.failure: BaseException | None = None

    async def run(self) -> None:
        agent, m, ch = self.agent, self.migration, self.channel
        try:
            async with agent.container_lock(m.container):
                plan = self.plan = await agent.blocking(
                    agent.runtime.export_plan, m.container, m.snapshot, m.instance_only
                )
                if [s.name for s in plan.snapshots] != m.snapshots:
                    raise Conflict(
                        f"the snapshots of container {m.container} changed since the migration was issued",
                        "issue a new migration",
                    )
                features = self.features = probe_features(agent.data_dir)
                sizes = await agent.blocking(volume_sizes, agent, [v.path for v in plan.volumes])
                self.sparse = {v.path: u.sparse for v, u in zip(plan.volumes, sizes, strict=True)}
                await ch.send_message(self._header(plan, sizes, features))
                accept = self.accept = Accept.from_message(await ch.recv(Accept.TYPE))
                if accept.method not in plan.methods(agent.transfer_methods):
                    raise BadRequest(
                        f"the target chose transfer method {accept.method!r}, which this agent does not offer"
                    )
                if not set(accept.skip) <= set(m.snapshots):
                    raise ProtocolError("migration protocol error: the target skips unknown snapshots")
                if accept.compression and accept.compression not in features:
                    raise BadRequest(
                        f"the target chose compression {accept.compression!r}, which this agent lacks"
                    )
                await get_method(accept.method).send_container(self)
        except BaseException as exc:
            log.warning(
                "migration %s of %s failed: %s",
                m.id,
                m.container,
                exc or type(exc).__name__,
                exc_info=not isinstance(exc, OrchError | asyncio.CancelledError | ConnectionError),
            )
            self.failure = ch.explain(exc)
            await ch.send_error(exc)
            ch.abort()
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            await ch.close()
            if self._prepared is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._prepared.release())

    def _header(self, plan: ExportPlan, sizes: list[VolumeUsage], features: frozenset[str]) -> Header:
        agent = self.agent
        return Header(
            container={
                "created_at": plan.created_at,
                "base_image": plan.base_image,
                "architecture": plan.architecture,
                "config": plan.config,
                "init": plan.init,
            },
            snapshots=[{"name": s.name, "created_at": s.created_at} for s in plan.snapshots],
            volumes=[
                DeclaredVolume(v.snapshot, u.bytes, u.entries)
                for v, u in zip(plan.volumes, sizes, strict=True)
            ],
            methods=plan.methods(agent.transfer_methods),
            base_image=plan.base_image,
            idmap=plan.idmap,
            size=sum(u.bytes for u in sizes),
            features=features,
            layout=plan.layout,
            instance=plan.instance,
            methods_reason=plan.only_reason,
            # the data port the volumes' bytes may take instead of this websocket
            link_port=agent.datalink.port if agent.datalink is not None else None,
            name=plan.name,
            storage=agent.runtime.storage_name,
            limited=self.channel.send_throttle is not None and self.channel.send_throttle.limited(),
        )

    async def send_volumes(self, method: TransferMethod) -> None:
        """Stream every volume the target did not skip through ``method`` (the streaming methods' way;
        see :meth:`~hostagent.transfer.base.TransferMethod.send_container`)."""
        agent, m, ch, plan, accept = self.agent, self.migration, self.channel, self.plan, self.accept
        assert plan is not None
        skip = accept.skip
        common = self.features & accept.features
        if accept.devices:  # the target takes device nodes (privileged only)
            common |= {"devices"}
        make_offer = None
        if accept.link and agent.datalink is not None:
            listener = agent.datalink

            def make_offer() -> Any:
                return listener.offer(m.target_certificate)

        volumes = [v for v in plan.volumes if v.snapshot is None or v.snapshot not in skip]
        prepared = self._prepared = await method.prepare_send(agent, m.container)
        previous: Path | None = None
        first = plan.volumes.index(volumes[0]) if volumes else 0
        if first > 0:
            # the target has the volume before the first one sent (a resumed transfer kept it, or a
            # refresh's container has it): an incremental method sends the next one against it
            previous = await prepared.path(-1, plan.volumes[first - 1])
        for index, volume in enumerate(volumes):
            path = await prepared.path(index, volume)
            await ch.send("volume", index=index, snapshot=volume.snapshot)
            sparse = self.sparse.get(volume.path, True)
            await self._send_volume(ch, method, index, path, previous, common, make_offer, sparse)
            previous = path
        # every volume is sent: drop what was made to send them (temporary snapshots) now
        await prepared.release()
        await ch.recv("done")
        log.info(
            "migration %s: sent %s (%d volumes) by %s, %d bytes out, %d in",
            m.id,
            m.container,
            len(volumes),
            method.name,
            ch.bytes_sent,
            ch.bytes_received,
        )

    async def _send_volume(
        self,
        ch: Channel,
        method: TransferMethod,
        index: int,
        path: Path,
        previous: Path | None,
        features: frozenset[str],
        make_offer: Any = None,
        sparse: bool = True,
    ) -> None:
        # the manifest is computed while the volume streams (the volume does not change: it is a stopped
        # container's, or a snapshot), by one hashing thread: the relay needs the rest of the CPU
        computing = asyncio.ensure_future(self.agent.blocking(manifest.compute, path, 1))
        try:
            checksum = False
            while True:
                await method.send(
                    SendContext(
                        ch, path, previous, features, checksum, make_offer, sparse, self.accept.compression
                    )
                )
                ours = await computing
                throttled = ch.send_throttle.throttled if ch.send_throttle is not None else 0.0
                await ch.send_message(VolumeEnd(index, ours.digest, ours.count, throttled))
                while True:
                    msg = await ch.recv("verified", "manifest-request", "retry")
                    if msg["type"] != "manifest-request":
                        break
                    for start in range(0, ours.count, MANIFEST_CHUNK):
                        await ch.send(
                            "manifest", index=index, lines=ours.lines[start : start + MANIFEST_CHUNK]
                        )
                    await ch.send("manifest-end", index=index)
                if msg["type"] == "verified":
                    return
                if checksum or not method.prefill:
                    raise ProtocolError("migration protocol error: the target asked for a second retry")
                checksum = True  # the target found a difference rsync's quick check missed: compare contents
        finally:
            if not computing.done():
                computing.cancel()


def volume_sizes(agent: Any, paths: list[Path]) -> list[VolumeUsage]:
    """Bytes on disk and entries of each volume (the target receives at most that, plus a margin), and
    whether it has sparse files."""
    out = []
    for path in paths:
        try:
            out.append(agent.storage.usage(path))
        except OSError:
            out.append(VolumeUsage(0, 0, True))
    return out
