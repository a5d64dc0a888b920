"""Resuming a pull over the import an earlier attempt left suspended (hostagent/runtimes/resume.py).

Before the target accepts, it looks for a suspended import of the container. If its journal's key is this
transfer's (the same source certificate, source container and creation date, id map, base image, method
and refresh), the volumes it lists that are still the source's — the longest prefix of the volumes to
send whose snapshot names and creation dates match, in order, so an incremental stream always finds its
parent — are skipped (the source does not send them: :class:`~hostagent.migration.messages.Accept`'s
``skip``), and the interrupted volume is continued where the method can (rsync runs over the partial
volume, which it verifies like any other) or received again (tar from the start; btrfs drops the
half-received subvolume and the source resends that snapshot against its parent). Anything else in the
dir is removed first. A key that does not match, an expired or unreadable journal: the suspended
import is discarded and the transfer starts over.

When the transfer fails, :func:`resumable` decides between suspending the staging dir (the peer went
away, a timeout, an agent stopping, a child killed by a cut stream) and removing it (the source's data
was refused or did not verify, no space, a protocol violation, a client's cancel).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from hostagent.migration.messages import Header
from hostagent.migration.protocol import Channel, ProtocolError
from hostagent.migration.target.request import PullSpec
from hostagent.migration.target.volumes import VerificationFailed, created_at
from hostagent.runtimes.base import ImportStaging
from hostagent.runtimes.resume import Journal, configured_ttl
from orchapi.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    NotFound,
    TruncatedInput,
)

log = logging.getLogger(__name__)

#: failures after which the received volumes cannot be vouched for, or a retry would fail the same way
FATAL = (VerificationFailed, ProtocolError, InsufficientStorage, BadRequest, Forbidden, Conflict, NotFound)


@dataclass
class Resumption:
    """The staging dir a pull receives into, and what an earlier attempt left in it."""

    staging: ImportStaging
    #: None: this runtime does not resume (nothing is journalled)
    journal: Journal | None
    #: snapshots an earlier attempt received, skipped now (oldest first)
    resumed: list[str] = field(default_factory=list)
    #: what those cost the earlier attempts on the wire
    skipped_bytes: int = 0
    #: the volume whose partial files are kept to continue over ("" if none; None is the rootfs)
    partial: str | None = ""


def journal_key(spec: PullSpec, header: Header, method: str, privileged: bool) -> dict[str, Any]:
    """What a suspended import must have been for its volumes to be reused by this transfer; the
    policy the volumes were checked against is part of it (a volume a privileged import accepted is
    never reused by an unprivileged one)."""
    return {
        "privileged": privileged,
        "source": spec.source.fingerprint,
        "source_name": header.name,
        "created_at": header.container.get("created_at", ""),
        "idmap": header.idmap,
        "base_image": header.base_image,
        "method": method,
        "refresh": spec.refresh,
    }


def open_staging(
    agent: Any,
    name: str,
    spec: PullSpec,
    header: Header,
    method: Any,
    todo: list[str | None],
    privileged: bool,
) -> Resumption:
    """The staging dir for this pull (in a worker thread): a matching suspended import, trimmed to what
    can be reused, or a new one; ``todo`` are the volumes still to send, in order; ``privileged``: the
    policy this pull checks volumes against."""
    runtime = agent.runtime
    ttl = configured_ttl(agent.trust.server_config())
    if not runtime.resumable_imports or ttl == 0:  # 0: the operator turned resume off
        if runtime.resumable_imports:
            runtime.discard_suspended(name)
        return Resumption(runtime.import_begin(name, spec.refresh), None)
    key = journal_key(spec, header, method.name, privileged)
    staging = runtime.import_resume(name, spec.refresh)
    if staging is not None:
        journal = Journal.load(staging.path)
        if journal is not None and journal.key == key and not journal.expired():
            return _trim(runtime, staging, journal, header, method, todo, ttl)
        log.info("discarding the suspended import of %s: it was not of this transfer", name)
        runtime.import_abort(staging)
    staging = runtime.import_begin(name, spec.refresh)
    journal = Journal(staging.path, key, ttl)
    journal.save()
    return Resumption(staging, journal)


def _trim(
    runtime: Any,
    staging: ImportStaging,
    journal: Journal,
    header: Header,
    method: Any,
    todo: list[str | None],
    ttl: int,
) -> Resumption:
    """Keep the journalled volumes that are still the source's (a prefix of ``todo``) and, for a method
    that continues over partial files, the interrupted one; remove the rest."""
    kept: list[tuple[str | None, str, int]] = []
    for (snapshot, created, size), want in zip(journal.done, todo, strict=False):
        if snapshot is None or snapshot != want or created != created_at(header, snapshot):
            break
        kept.append((snapshot, created, size))
    following = todo[len(kept)] if len(kept) < len(todo) else ""
    partial: str | None = ""
    if (
        method.prefill
        and journal.current is not None
        and journal.current[0] == following
        and len(kept) == len(journal.done)
    ):
        partial = following
    keep: set[str | None] = {s for s, _, _ in kept}
    if partial != "":
        keep.add(partial)
    runtime.import_keep_only(staging, keep)
    journal.done, journal.current, journal.ttl = kept, None, ttl
    journal.save()
    resumed = [s for s, _, _ in kept if s is not None]
    continuing = "rootfs" if partial is None else partial
    log.info(
        "resuming the import of %s: %d volume(s) kept%s",
        staging.name,
        len(resumed),
        f", continuing {continuing} over its partial files" if partial != "" else "",
    )
    return Resumption(staging, journal, resumed, sum(b for _, _, b in kept), partial)


def resumable(exc: BaseException, ch: Channel, op: Any) -> bool:
    """Whether a failed pull's staging dir is worth keeping for a later attempt."""
    if ch.refused is not None:
        return False  # the source's data broke this host's rules
    if isinstance(exc, asyncio.CancelledError):
        return not getattr(op, "cancelled_by_client", False)  # the agent stopping, not a cancel
    if isinstance(exc, TruncatedInput):
        # a stream cut short ("truncated tar stream") is the connection's drop if it did drop
        return ch.connection_lost
    return not isinstance(exc, FATAL)  # a child killed by the cut (rsync, btrfs receive): internal


def settle(runtime: Any, resumption: Resumption, keep: bool) -> bool:
    """After a failed pull (in a worker thread): suspend the staging dir, or remove it; whether it was
    suspended."""
    staging, journal = resumption.staging, resumption.journal
    if keep and journal is not None:
        try:
            journal.save()  # its expiry counts from now
            if runtime.import_suspend(staging):
                log.info("suspended the import of %s for %d s", staging.name, journal.ttl)
                return True
        except OSError as exc:
            log.warning("could not suspend the import of %s: %s", staging.name, exc)
    runtime.import_abort(staging)
    return False
