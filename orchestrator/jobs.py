"""Job records in Redis: what ``orch jobs`` shows and what every step of a chain reads and writes.

One hash per job (``orch:job:<id>``) with the user-visible fields (kind, source, target, status, current
step, attempts, bytes, rate, times, error) and a JSON ``state`` field holding what the steps hand to each
other (migration id, the target's operation URL, what was created or stopped, so rollback knows what to
undo). Migration secrets live in a separate key with a TTL, never in task arguments (Flower shows those).
A sorted set indexes jobs by creation time. When a job ends, its status is also pushed to a short list
(``orch:job:<id>:ended``) that followers block on, so the CLI learns of the end at once, without polling.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from orchapi.errors import NotFound
from orchestrator import keys
from orchestrator.jobstate import JobState

INDEX = keys.JOBS
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
SECRETS_TTL = 3600


_key, _ended_key = keys.job, keys.job_ended


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Job:
    """A snapshot of one job record."""

    id: str
    kind: str
    source: str
    target: str
    status: str
    options: dict[str, Any] = field(default_factory=dict)
    step: str = ""
    stage: str = ""
    steps_done: list[str] = field(default_factory=list)
    attempts: int = 0
    worker: str = ""  # the worker that runs (or last ran) its current step
    bytes_done: int = 0
    bytes_total: int = 0
    rate: float = 0.0
    created_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    updated_at: float = 0.0
    created_ts: float = 0.0
    started_ts: float = 0.0
    finished_ts: float = 0.0
    error: str = ""
    cancel_requested: bool = False
    state: JobState = field(default_factory=JobState)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def label(self) -> str:
        return f"{self.source} → {self.target}"

    def public(self) -> dict[str, Any]:
        """The fields a user sees (``orch jobs show``, ``--format json``)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "source": self.source,
            "target": self.target,
            "options": self.options,
            "status": self.status,
            "step": self.step,
            "stage": self.stage,
            "steps_done": self.steps_done,
            "attempts": self.attempts,
            "worker": self.worker,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "rate": round(self.rate, 1),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "started_ts": self.started_ts,
            "finished_ts": self.finished_ts,
            "duration": round(self.finished_ts - self.created_ts, 3) if self.finished_ts else None,
            "error": self.error,
            "method": self.state.method,
            "mode": self.state.mode,  # who dialed whom (orchestrator/transfers/)
            # what went over the wire, what it carried (before compression), and the limits' toll
            "compression": self.state.compression,
            "wire_bytes": self.state.bytes_received,
            "payload_bytes": self.state.payload_bytes,
            "throttled_seconds": self.state.throttled_seconds,
            # resume: the snapshots an interrupted attempt had verified, not sent again, and their bytes
            "resumed_volumes": self.state.resumed_volumes,
            "skipped_bytes": self.state.skipped_bytes,
            "resumed_from": self.options.get("resumed_from"),  # `orch jobs resume` of that job
        }


_INT = ("attempts", "bytes_done", "bytes_total")
_FLOAT = ("rate", "updated_at", "created_ts", "started_ts", "finished_ts")
_JSON = ("options", "steps_done", "state")


class JobStore:
    """CRUD on job records."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client

    def create(self, kind: str, source: str, target: str, options: dict[str, Any], state: JobState) -> Job:
        job = Job(
            id=uuid.uuid4().hex[:12],
            kind=kind,
            source=source,
            target=target,
            status=QUEUED,
            options=options,
            created_at=now_iso(),
            created_ts=time.time(),
            updated_at=time.time(),
            state=state,
        )
        record = self._encode(job.__dict__)
        pipe = self.r.pipeline()
        pipe.hset(_key(job.id), mapping=record)
        pipe.zadd(INDEX, {job.id: time.time()})
        pipe.execute()
        return job

    def delete(self, job_id: str) -> None:
        """Forget a job entirely: its record, its index entry and every key beside it."""
        doomed = [_key(job_id), *self.r.scan_iter(match=keys.job_keys_pattern(job_id), count=100)]
        with self.r.pipeline() as pipe:
            pipe.delete(*doomed)
            pipe.zrem(INDEX, job_id)
            pipe.execute()

    def get(self, job_id: str) -> Job:
        raw = self.r.hgetall(_key(job_id))
        if not raw:
            raise NotFound(f"job {job_id} not found", "see `orch jobs`")
        return self._decode(raw)

    def list(self, limit: int = 50) -> list[Job]:
        ids = self.r.zrevrange(INDEX, 0, limit - 1)
        pipe = self.r.pipeline()
        for job_id in ids:
            pipe.hgetall(_key(job_id))
        return [self._decode(raw) for raw in pipe.execute() if raw]

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        self.r.hset(_key(job_id), mapping=self._encode(fields))

    def update_state(self, job_id: str, **values: Any) -> JobState:
        """Merge ``values`` (fields of :class:`JobState`, checked) into the job's ``state``
        (read-modify-write under WATCH); the state as it is now."""
        JobState.check_names(values)
        key = _key(job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    state = json.loads(pipe.hget(key, "state") or "{}")
                    state.update(values)
                    pipe.multi()
                    pipe.hset(key, mapping={"state": json.dumps(state), "updated_at": time.time()})
                    pipe.execute()
                    return JobState.from_dict(state)
                except redis.WatchError:
                    continue

    def mark_step_done(self, job_id: str, step: str, run: str) -> bool:
        """Record that ``step`` completed in ``run``; False if another run recorded it (a duplicate
        delivery). The marker holds the run, so a command retried after Redis came back (its first
        try took effect, its answer was lost) still counts as this run's."""
        key = keys.step_done(job_id, step)
        if not self.r.set(key, run, nx=True, ex=30 * 86400) and self.r.get(key) != run:
            return False
        job = self.get(job_id)
        if step not in job.steps_done:
            self.update(job_id, steps_done=[*job.steps_done, step])
        return True

    def step_done(self, job_id: str, step: str) -> bool:
        return bool(self.r.exists(keys.step_done(job_id, step)))

    def count_failure(self, job_id: str, step: str) -> int:
        """One more transient failure of ``step``; how many so far (the step's retry budget, kept apart
        from Celery's retry counter, which also counts the waits for a concurrency slot)."""
        key = keys.step_failures(job_id, step)
        with self.r.pipeline() as pipe:
            pipe.incr(key).expire(key, 86400)
            return int(pipe.execute()[0])

    def claim_chain(self, job_id: str, chain_id: str) -> bool:
        """Whether the Celery chain ``chain_id`` (its root task id) runs this job: the first chain to ask
        does, for good; any other is a duplicate hand-off (orchestrator/dispatch.py) and must stop."""
        key = keys.job_chain(job_id)
        if self.r.set(key, chain_id, nx=True, ex=30 * 86400):
            return True
        owner = self.r.get(key)
        return (owner.decode() if isinstance(owner, bytes) else owner) == chain_id

    def chain_started(self, job_id: str) -> bool:
        return bool(self.r.exists(keys.job_chain(job_id)))

    def finish(self, job_id: str, status: str, error: str = "") -> None:
        ended = {"finished_at": now_iso(), "finished_ts": time.time()}
        self.update(job_id, status=status, error=error, stage="", **ended)
        self.r.delete(keys.job_secrets(job_id))
        with self.r.pipeline() as pipe:  # wake whoever follows the job (see wait_end)
            pipe.delete(_ended_key(job_id))
            pipe.lpush(_ended_key(job_id), status)
            pipe.expire(_ended_key(job_id), SECRETS_TTL)
            pipe.execute()

    def wait_end(self, job_id: str, timeout: float) -> bool:
        """Block until the job has ended or ``timeout`` seconds passed; whether it ended.

        Non-destructive (the status is moved back onto its own list), so any number of followers can wait
        on one job. Callers still read the record: a job that ended before this key existed is seen there.
        """
        key = _ended_key(job_id)
        return self.r.brpoplpush(key, key, timeout=max(timeout, 0.01)) is not None

    def request_cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if not job.finished:
            self.update(job_id, cancel_requested=True)
        return self.get(job_id)

    # -- secrets (migration tokens) ------------------------------------------------------------------
    def set_secrets(self, job_id: str, secrets: dict[str, str]) -> None:
        self.r.set(keys.job_secrets(job_id), json.dumps(secrets), ex=SECRETS_TTL)

    def secrets(self, job_id: str) -> dict[str, str]:
        return json.loads(self.r.get(keys.job_secrets(job_id)) or "{}")

    # -- encoding -----------------------------------------------------------------------------------
    @staticmethod
    def _encode(fields: dict[str, Any]) -> dict[str, str]:
        out = {}
        for k, v in fields.items():
            if isinstance(v, JobState):
                out[k] = json.dumps(v.to_dict())
            elif k in _JSON:
                out[k] = json.dumps(v)
            elif isinstance(v, bool):
                out[k] = "1" if v else ""
            else:
                out[k] = str(v)
        return out

    @staticmethod
    def _decode(raw: dict[str, str]) -> Job:
        values: dict[str, Any] = {}
        for k, v in raw.items():
            if k not in Job.__dataclass_fields__:
                continue
            if k in _INT:
                values[k] = int(float(v or 0))
            elif k in _FLOAT:
                values[k] = float(v or 0)
            elif k == "state":
                values[k] = JobState.from_dict(json.loads(v or "null"))
            elif k in _JSON:
                values[k] = json.loads(v or "null") or ({} if k != "steps_done" else [])
            elif k == "cancel_requested":
                values[k] = v == "1"
            else:
                values[k] = v
        return Job(**values)
