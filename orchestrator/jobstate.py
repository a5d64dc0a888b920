"""What the steps of a job hand to each other: :class:`JobState`, every field the chain uses, typed.

Kept in the job's record as JSON (``orch:job:<id>`` field ``state``). The steps write it through
:meth:`~orchestrator.jobs.JobStore.update_state`, which refuses a name that is not a field here (a typo
fails where it is written, not three steps later where it is read), and read it as attributes.
Rollback (tasks/rollback.py) knows what to undo from it. Migration secrets are not here: they live in a
key of their own with a TTL, never in task arguments or this record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobState:
    # -- what the job is about (orchestrator/submit.py) ---------------------------------------------
    source_remote: str = ""
    source_name: str = ""
    #: a snapshot of the source to copy (copies only)
    source_snapshot: str | None = None
    target_remote: str = ""
    target_name: str = ""
    #: the hosts' identities (hostid.py): locks and cordons hold whatever name a host goes by
    source_host: str = ""
    target_host: str = ""
    #: concurrency slots the job must hold while it runs: [semaphore name, limit] pairs (evacuations)
    slots: list[list[Any]] = field(default_factory=list)
    # -- verify_target -------------------------------------------------------------------------------
    target_preexisted: bool = False
    #: transfer methods both agents have, and the modes to try in order (transfers/choice.py)
    methods: list[str] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    #: the certificate the migration is issued to (the target's, or the worker's for a relay)
    target_certificate: str = ""
    #: who the migration is issued to: "" (the target agent) or "worker" (relay)
    migration_to: str = ""
    target_free: int | None = None
    #: the source was running and the job stopped it (rollback starts it again)
    source_was_running: bool = False
    # -- issue_token ---------------------------------------------------------------------------------
    migration_id: str = ""
    migration_url: str = ""
    source_certificate: str = ""
    base_image: str = ""
    snapshots: list[str] = field(default_factory=list)
    size: int = 0
    #: the secrets were redeemed by a transfer: a new attempt needs new ones
    migration_spent: bool = False
    #: the transfer mode in use: pull, push or relay
    mode: str = ""
    # -- pull_image ----------------------------------------------------------------------------------
    image_missing: bool = False
    image_cached: bool = False
    image_carried: bool = False
    image_bytes: int = 0
    # -- transfer_delta ------------------------------------------------------------------------------
    #: the target's operation (and the source's, pushing): a redelivered step re-attaches to them
    target_op: str | None = None
    source_op: str | None = None
    method: str = ""
    verified: bool = False
    files: int = 0
    bytes_received: int | None = None
    bytes_sent: int = 0
    compression: str = ""
    #: the streams' bytes before compression
    payload_bytes: int | None = None
    throttled_seconds: float | None = None
    #: what an interrupted earlier attempt had verified, kept by the target and not sent again
    resumed_volumes: list[str] | None = None
    skipped_bytes: int | None = None
    #: the last attempt failed and the target kept what it had verified (`orch jobs resume`)
    transfer_kept: bool = False
    # -- delete_source -------------------------------------------------------------------------------
    source_deleted: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> JobState:
        """From the record's JSON; names no longer fields (records of an older orch) are dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (values or {}).items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def check_names(cls, names: Any) -> None:
        unknown = set(names) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"not fields of JobState: {', '.join(sorted(unknown))}")
