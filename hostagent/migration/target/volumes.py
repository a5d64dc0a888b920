"""Receiving a container's volumes one by one: pre-fill, transfer, verify, check, place.

For every volume the source announces (oldest snapshot first, the rootfs last) the target makes its
staging copy (pre-filled from the closest volume it has, for rsync), lets the method receive the
difference under the volume's allowance (:class:`~hostagent.migration.policy.VolumeRules`), compares the
result's manifest with the source's (a mismatch after rsync gets one ``--checksum`` repair pass), refuses
what the container may not hold, and only then moves the volume to its place in the staging dir.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hostagent.migration import manifest, policy
from hostagent.migration.messages import Header, VolumeEnd
from hostagent.migration.protocol import Channel, ProtocolError, require
from hostagent.runtimes.base import ImportStaging
from hostagent.runtimes.resume import Journal
from hostagent.transfer.base import ReceiveContext, TransferMethod
from orchapi.errors import InternalError

log = logging.getLogger(__name__)


class VerificationFailed(InternalError):
    """The received volume is not what the source sent."""


def created_at(header: Header, snapshot: str | None) -> str:
    """The creation date that identifies a volume of the source (the container's, for the rootfs)."""
    if snapshot is None:
        return str(header.container.get("created_at", ""))
    return next((s["created_at"] for s in header.snapshots if s["name"] == snapshot), "")


class VolumeReceiver:
    """The volume loop of one container pull (see :class:`~hostagent.migration.target.session.TargetSession`,
    which owns the staging dir and reports progress through ``stage``)."""

    def __init__(
        self,
        session: Any,
        header: Header,
        staging: ImportStaging,
        method: TransferMethod,
        features: frozenset[str],
        privileged: bool,
        dial: Any = None,
        compression: str = "",
    ) -> None:
        self.session = session
        self.agent = session.agent
        self.ch: Channel = session.ch
        self.header, self.staging, self.method = header, staging, method
        self.features = features
        #: dials the source's data-link offers (hostagent/transfer/link.py); None: the websocket only
        self.dial = dial
        #: the ids the volumes' files may have (None: a privileged container, anything goes)
        self.idmap = policy.volume_idmap(header.idmap, privileged)
        #: volumes received again with --checksum after a mismatch
        self.repaired: list[str] = []
        #: the streams' compression ("zstd" or ""), and the bytes they brought once decompressed
        self.compression = compression
        self.payload_bytes = 0
        #: the seconds the source's limits held it back (as it reports them)
        self.source_throttled = 0.0
        #: each received volume and what it cost on the wire: [{"volume": "snapshot s1", "bytes": n}]
        self.received_volumes: list[dict[str, Any]] = []
        # what an earlier attempt left (hostagent/migration/target/resume.py): the journal to keep up to
        # date, the snapshots it received, the volume whose partial files to continue over ("": none)
        self.journal: Journal | None = None
        self.resumed: set[str] = set()
        self.partial: str | None = ""

    def resume(self, plan: Any) -> None:
        """Receive into what an earlier attempt left (a
        :class:`~hostagent.migration.target.resume.Resumption`)."""
        self.journal, self.resumed, self.partial = plan.journal, set(plan.resumed), plan.partial

    async def receive_all(self, skip: list[str], todo: int) -> int:
        """Receive every volume not skipped; returns the number of entries of the rootfs."""
        staging, header = self.staging, self.header
        existing_map = staging.existing.get("idmap") if staging.existing else None
        base: tuple[Path, dict[str, int] | None] | None = None  # the closest volume the target has
        files = index = 0
        for snapshot, size, entries in header.volumes:
            if snapshot is not None and snapshot in self.resumed:
                base = (staging.volume(snapshot), header.idmap)  # received by an earlier attempt
                continue
            if snapshot is not None and snapshot in skip:
                base = (staging.existing_volume(snapshot), existing_map)
                continue
            what = "rootfs" if snapshot is None else f"snapshot {snapshot}"
            label = "rootfs" if snapshot is None else f"snapshot {snapshot} ({index + 1}/{todo})"
            msg = await self.ch.recv("volume")
            if msg.get("index") != index or msg.get("snapshot") != snapshot:
                raise ProtocolError(
                    f"migration protocol error: the source sent volume {msg.get('index')!r} out of order"
                )
            self.session.stage(
                "prefill" if self.method.prefill else label, volume=index + 1, volume_name=what
            )
            created = created_at(header, snapshot)
            if self.journal is not None:
                await self.agent.blocking_to_end(self.journal.begin, snapshot, created)
            if snapshot == self.partial and staging.volume(snapshot).is_dir():
                dest = staging.volume(snapshot)  # rsync continues over what the last attempt received
            else:
                dest = await self._dest(snapshot, base, existing_map)
            self.session.stage(label)
            rules = policy.VolumeRules(self.idmap, size, entries)
            wire_before = self.ch.bytes_received
            ours = await self._receive_verified(index, what, label, dest, rules)
            received = ours[0]
            await self.agent.blocking_to_end(self.agent.runtime.import_place, staging, snapshot, received)
            wire = self.ch.bytes_received - wire_before
            self.received_volumes.append({"volume": what, "bytes": wire})
            if self.journal is not None and snapshot is not None:  # the rootfs is committed next
                await self.agent.blocking_to_end(self.journal.placed, snapshot, created, wire)
            await self.ch.send("verified", index=index)
            if snapshot is None:
                files = ours[1].count
            base = (staging.volume(snapshot), header.idmap)
            index += 1
        return files

    async def _dest(
        self,
        snapshot: str | None,
        base: tuple[Path, dict[str, int] | None] | None,
        existing_map: dict[str, int] | None,
    ) -> Path:
        """The staging volume to receive into, as the method wants it (pre-filled for rsync, empty for
        tar, a dir for btrfs)."""
        agent, staging, header = self.agent, self.staging, self.header
        start = None
        image = None
        if self.method.prefill:
            if snapshot is None and staging.existing is not None:
                start = (staging.existing_volume(None), existing_map)
            else:
                start = base
            if start is None:
                image = self.session.spec.base_image or header.base_image or None
        return await agent.blocking_to_end(
            self.method.destination, agent.runtime, staging, snapshot, start, image, header.idmap
        )

    async def _receive_verified(
        self, index: int, what: str, label: str, dest: Path, rules: policy.VolumeRules
    ) -> tuple[Path, manifest.Manifest]:
        """Receive, verify (with one repair pass for pre-filling methods) and check one volume."""
        tree = self.method.tree(self.header.layout)
        ctx = ReceiveContext(
            self.ch, dest, self.features, self.idmap, what, rules.allowance, tree, self.dial, self.compression
        )
        received = await self._receive(ctx, rules)
        ours = await self._verify(index, what, received)
        if ours is None:  # a repair pass (rsync with --checksum), then verify again
            self.session.stage(label)
            received = await self._receive(ctx, rules)
            ours = await self._verify(index, what, received, final=True)
            self.repaired.append(what)
        assert ours is not None
        policy.check_received(ours, rules, what, tree)
        return received, ours

    async def _receive(self, ctx: ReceiveContext, rules: policy.VolumeRules) -> Path:
        """One pass of the method, the channel refusing every byte beyond the volume's allowance."""
        self.ch.limit(rules.allowance, ctx.what)
        wire_before, ctx.payload_bytes = self.ch.bytes_received, 0
        try:
            received = await self.method.receive(ctx)
            # uncompressed, what came is the payload; compressed, the method measured it (rsync, which
            # decompresses inside itself, does not: its payload is left out of the count)
            self.payload_bytes += (
                ctx.payload_bytes if self.compression else self.ch.bytes_received - wire_before
            )
        except Exception:
            if self.ch.refused is not None:  # the real cause: what made the method's input end early
                raise self.ch.refused from None
            raise
        finally:
            self.ch.limit(None)
        if self.ch.refused is not None:
            raise self.ch.refused
        return received

    async def _verify(
        self, index: int, what: str, received: Path, final: bool = False
    ) -> manifest.Manifest | None:
        """Compare the received volume's manifest with the source's; None asks for a repair pass."""
        self.session.stage("verify")
        ours = await self.agent.blocking(manifest.compute, received)
        end = VolumeEnd.from_message(await self.ch.recv(VolumeEnd.TYPE), index)
        self.source_throttled = max(self.source_throttled, end.throttled)
        digest, count = end.digest, end.count
        if digest == ours.digest:
            return ours
        if self.method.prefill and not final:
            log.warning(
                "%s of %s differs after the transfer; sending it again with --checksum",
                what,
                self.session.name,
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
