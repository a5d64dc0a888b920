"""What the migration sessions offer a transfer method's session-level hooks.

A method sees the session only through these protocols (hostagent/migration/source.py and
hostagent/migration/target/session.py implement them), so hostagent/transfer/ never imports the sessions
and the sessions never ask which method they run: streaming methods hand the volume loop back to the
session (:meth:`SourceSide.send_volumes`, :meth:`TargetSide.receive_volumes`); a method that moves no
stream (``lxd-migration``) uses the rest to do its own conversation, while the security checks of what it
brings stay the session's (:meth:`TargetSide.check_received`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from hostagent.migration.protocol import Channel

if TYPE_CHECKING:
    from hostagent.transfer.base import TransferMethod


class SourceSide(Protocol):
    """What the source session offers a method's :meth:`TransferMethod.send_container` (the target
    accepted the method; nothing has been sent yet)."""

    agent: Any
    channel: Channel
    #: the migration being served (hostagent/migration/tokens.py: container, snapshot, instance_only)
    migration: Any
    #: the runtime's export plan (hostagent/runtimes/base.py ExportPlan: the volumes, oldest first)
    plan: Any

    async def send_volumes(self, method: TransferMethod) -> None:
        """Stream every volume the target did not skip through ``method``, verifying each."""


class TargetSide(Protocol):
    """What the target session offers a method's :meth:`TransferMethod.receive_container` (the header is
    admitted and the method negotiated; nothing has been accepted yet)."""

    agent: Any
    channel: Channel
    #: the name the container gets here, and whether a refresh updates an existing one
    name: str
    refresh: bool
    #: the record the received container gets (the header's, with the config this host grants)
    data: dict[str, Any]
    #: the volumes' total size as the source declared it
    declared_size: int
    #: the host the source agent was reached at
    source_host: str | None
    #: the source agent, for messages
    source_where: str
    #: bytes moved by something other than this session's channel (LXD), counted in the progress
    external_bytes: int

    def progress(self, **fields: Any) -> None:
        """Update the operation's metadata."""

    def stage(self, stage: str, **fields: Any) -> None:
        """Enter a stage (shown in the operation's metadata)."""

    def check_received(self, snapshot: str | None, received: Any) -> None:
        """The host's policy for a received volume's manifest (raises to refuse)."""

    async def receive_volumes(self, method: TransferMethod) -> dict[str, Any]:
        """Receive, verify, check and commit every volume through ``method``; the operation's result."""
