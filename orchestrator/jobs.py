"""Job records in Redis: what ``orch jobs`` shows and what every step of a chain reads and writes.

One hash per job (``orch:job:<id>``) with the user-visible fields (kind, source, target, status, current
step, attempts, bytes, rate, times, error), one ``s:<name>`` field (JSON) per :class:`JobState` field that
the steps hand to each other (migration id, the target's operation URL, what was created or stopped, so
rollback knows what to undo), one ``done:<step>`` field per completed step (the run that completed it)
and ``chain``, the Celery chain that runs the job. Everything a step needs to decide is one ``HGETALL``,
and every write one ``HSET`` (a field each: no read-modify-write). Migration secrets live in a separate
key with a TTL, never in task arguments (Flower shows those).
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
from orchestrator.chain import steps_for
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
    #: the Celery chain that runs the job (its root task id; ``claim_chain``)
    chain: str = ""
    #: when its container locks were last renewed (the steps renew them when a quarter lease is gone)
    locks_ts: float = 0.0
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
_FLOAT = ("rate", "updated_at", "created_ts", "started_ts", "finished_ts", "locks_ts")
_JSON = ("options",)
#: record field prefixes: a JobState field, a completed step
STATE, DONE = "s:", "done:"


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
            locks_ts=time.time(),  # the submit takes the locks right after
            state=state,
        )
        record = self._encode({k: v for k, v in job.__dict__.items() if k != "chain"})  # HSETNX's
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

    def update_state(self, job: Job, **values: Any) -> None:
        """Set ``values`` (fields of :class:`JobState`, checked) in the job's record and in ``job.state``.

        One ``HSET`` of one field per value: nothing is read back, and concurrent writers of different
        fields cannot undo each other's (only the run holding the job's lease writes its state)."""
        JobState.check_names(values)
        for name, value in values.items():
            setattr(job.state, name, value)
        record = {STATE + name: json.dumps(value) for name, value in values.items()}
        self.r.hset(_key(job.id), mapping={**record, "updated_at": time.time()})

    def mark_step_done(self, job_id: str, step: str, run: str) -> bool:
        """Record that ``step`` completed in ``run``; False if another run recorded it (a duplicate
        delivery). The marker holds the run, so a command retried after Redis came back (its first
        try took effect, its answer was lost) still counts as this run's."""
        if self.r.hsetnx(_key(job_id), DONE + step, run):
            return True
        return self.r.hget(_key(job_id), DONE + step) == run

    def step_done(self, job_id: str, step: str) -> bool:
        return bool(self.r.hexists(_key(job_id), DONE + step))

    def count_failure(self, job_id: str, step: str) -> int:
        """One more transient failure of ``step``; how many so far (the step's retry budget, kept apart
        from Celery's retry counter, which also counts the waits for a concurrency slot)."""
        key = keys.step_failures(job_id, step)
        with self.r.pipeline() as pipe:
            pipe.incr(key).expire(key, 86400)
            return int(pipe.execute()[0])

    def claim_chain(self, job_id: str, chain_id: str, job: Job | None = None) -> bool:
        """Whether the Celery chain ``chain_id`` (its root task id) runs this job: the first chain to ask
        does, for good; any other is a duplicate hand-off (orchestrator/dispatch.py) and must stop.
        ``job``, a record just read, answers without a command once a chain has claimed it."""
        if job is not None and job.chain:
            return job.chain == chain_id
        if self.r.hsetnx(_key(job_id), "chain", chain_id):
            return True
        return self.r.hget(_key(job_id), "chain") == chain_id

    def chain_started(self, job_id: str) -> bool:
        return bool(self.r.hexists(_key(job_id), "chain"))

    def finish(self, job_id: str, status: str, error: str = "") -> None:
        """Record the end, forget the secrets and wake whoever follows the job (see wait_end): one
        round trip."""
        now = time.time()
        ended = {"status": status, "error": error, "stage": "", "finished_at": now_iso(), "finished_ts": now}
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hset(_key(job_id), mapping=self._encode({**ended, "updated_at": now}))
            pipe.delete(keys.job_secrets(job_id), _ended_key(job_id))
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

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(_key(job_id), "cancel_requested") == "1"

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
            if k == "state":  # a JobState, or the dict of one (its names checked: a typo fails here)
                if not isinstance(v, JobState):
                    JobState.check_names(v)
                    v = JobState(**v)
                values = v.to_dict()
                out.update({STATE + name: json.dumps(value) for name, value in values.items()})
            elif k == "steps_done":
                out.update({DONE + step: "" for step in v})
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
        # records of an older orch: the state as one JSON field, the steps done as a JSON list
        state: dict[str, Any] = json.loads(raw.get("state") or "null") or {}
        done: set[str] = set(json.loads(raw.get("steps_done") or "null") or [])
        for k, v in raw.items():
            if k.startswith(STATE):
                state[k[len(STATE) :]] = json.loads(v)
            elif k.startswith(DONE):
                done.add(k[len(DONE) :])
            elif k in ("state", "steps_done") or k not in Job.__dataclass_fields__:
                continue
            elif k in _INT:
                values[k] = int(float(v or 0))
            elif k in _FLOAT:
                values[k] = float(v or 0)
            elif k in _JSON:
                values[k] = json.loads(v or "null") or {}
            elif k == "cancel_requested":
                values[k] = v == "1"
            else:
                values[k] = v
        job = Job(**values, state=JobState.from_dict(state))
        order = [step.name for step in steps_for(job.kind)]
        job.steps_done = sorted(done, key=lambda s: order.index(s) if s in order else len(order))
        return job
