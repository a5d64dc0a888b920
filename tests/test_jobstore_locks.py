"""Job records, locks, backoff and the embedded Redis, against real redis-server processes."""

from __future__ import annotations

import json
import time

import pytest

from orchapi.errors import Conflict, NotFound
from orchestrator.jobs import FAILED, QUEUED, JobStore
from orchestrator.jobstate import JobState
from orchestrator.locks import ContainerLocks
from orchestrator.redisserver import connect, ensure_embedded
from orchestrator.stepping import backoff


@pytest.fixture
def client(redis_server):  # type: ignore[no-untyped-def]
    return connect(redis_server.url)


def test_job_record_roundtrip_and_index(client):
    store = JobStore(client)
    a = store.create("copy", "foo:c1", "bar:c1", {"refresh": True}, JobState(source_remote="foo"))
    time.sleep(0.01)
    b = store.create("move", "foo:c2", "bar:c2", {}, JobState())
    assert [j.id for j in store.list()] == [b.id, a.id]
    got = store.get(a.id)
    assert (got.kind, got.status, got.options, got.state) == (
        "copy",
        QUEUED,
        {"refresh": True},
        JobState(source_remote="foo"),
    )
    with pytest.raises(TypeError, match="target_opp"):  # a typo fails where it is written
        store.update_state(a, target_opp="/1.0/operations/x")
    store.update(a.id, bytes_done=10, bytes_total=20, rate=1.5, step="transfer_delta")
    store.update_state(a, target_op="/1.0/operations/x")
    assert a.state.target_op == "/1.0/operations/x"  # the caller's copy too
    got = store.get(a.id)
    assert (got.bytes_done, got.bytes_total, got.rate, got.state.target_op) == (
        10,
        20,
        1.5,
        "/1.0/operations/x",
    )
    assert got.state.source_remote == "foo"
    store.finish(a.id, FAILED, "boom")
    assert store.get(a.id).finished and store.get(a.id).error == "boom"
    with pytest.raises(NotFound):
        store.get("nope")


def test_step_completion_is_recorded_once(client):
    store = JobStore(client)
    job = store.create("copy", "a:x", "b:x", {}, JobState())
    assert store.mark_step_done(job.id, "issue_token", "run-1") is True
    assert store.mark_step_done(job.id, "issue_token", "run-2") is False  # the duplicate delivery must stop
    # the same run again (its command retried after Redis came back, the first try had taken effect)
    assert store.mark_step_done(job.id, "issue_token", "run-1") is True
    assert store.get(job.id).steps_done == ["issue_token"]


def test_a_chain_claims_a_job_once_and_the_record_answers_after(client):
    store = JobStore(client)
    job = store.create("copy", "a:x", "b:x", {}, JobState())
    assert not store.chain_started(job.id)
    assert store.claim_chain(job.id, "chain-1") is True
    assert store.claim_chain(job.id, "chain-2") is False  # a duplicate hand-off's chain stops
    record = store.get(job.id)
    assert record.chain == "chain-1" and store.chain_started(job.id)
    client.hset(f"orch:job:{job.id}", "chain", "changed")  # answered from the record given, not Redis
    assert store.claim_chain(job.id, "chain-1", record) is True


def test_a_record_written_by_an_older_orch_still_reads(client):
    """Before the state had a field per name and each step its own marker field, both were JSON."""
    client.hset(
        "orch:job:old1",
        mapping={
            "id": "old1", "kind": "move", "source": "a:x", "target": "b:x", "status": "running",
            "state": json.dumps({"source_remote": "a", "target_op": "/1.0/operations/o", "gone": 1}),
            "steps_done": json.dumps(["issue_token", "verify_target"]),
        },
    )  # fmt: skip
    store = JobStore(client)
    job = store.get("old1")
    assert job.state.source_remote == "a" and job.state.target_op == "/1.0/operations/o"
    assert job.steps_done == ["verify_target", "issue_token"]  # in the chain's order
    store.update_state(job, target_op=None)
    assert store.mark_step_done("old1", "pull_image", "r1")
    again = store.get("old1")
    assert again.state.target_op is None and again.state.source_remote == "a"
    assert again.steps_done == ["verify_target", "issue_token", "pull_image"]


def test_secrets_are_kept_apart_and_dropped_when_the_job_ends(client):
    store = JobStore(client)
    job = store.create("copy", "a:x", "b:x", {}, JobState())
    store.set_secrets(job.id, {"fs": "t0k3n"})
    assert "t0k3n" not in str(client.hgetall(f"orch:job:{job.id}"))
    assert store.secrets(job.id) == {"fs": "t0k3n"}
    store.finish(job.id, FAILED, "x")
    assert store.secrets(job.id) == {}


def test_locks_are_exclusive_idempotent_and_owner_only(client):
    locks = ContainerLocks(client)
    locks.acquire("job1", "foo", "c1", 30)
    locks.acquire("job1", "foo", "c1", 30)  # the owner again: fine
    with pytest.raises(Conflict, match="busy: job job1"):
        locks.acquire("job2", "foo", "c1", 30)
    locks.release("job2", "foo", "c1")  # not the owner: no effect
    assert locks.holder("foo", "c1") == "job1"
    assert locks.renew("job2", "foo", "c1", 30) is False
    locks.release("job1", "foo", "c1")
    locks.acquire("job2", "foo", "c1", 30)
    assert locks.holder("foo", "c1") == "job2"


def test_lock_lease_expires_when_its_owner_is_gone(client):
    locks = ContainerLocks(client)
    client.set("orch:lock:foo:c9", "dead-job", px=200)
    time.sleep(0.3)
    locks.acquire("job3", "foo", "c9", 30)
    assert locks.holder("foo", "c9") == "job3"


def test_backoff_is_exponential_with_jitter_and_capped():
    samples = [backoff(5, 0.5, 4.0) for _ in range(200)]
    assert all(0 <= s <= 4.0 for s in samples) and max(samples) > 3.0 and min(samples) < 1.0
    assert all(backoff(0, 0.5, 30) <= 0.5 for _ in range(50))


def test_embedded_redis_starts_once_and_is_shared(tmpdir755):
    state = tmpdir755 / "state"
    url = ensure_embedded(state)
    assert url == f"redis+socket://{state / 'redis.sock'}"
    pid = (state / "redis.pid").read_text().strip()
    assert ensure_embedded(state) == url
    assert (state / "redis.pid").read_text().strip() == pid  # not started twice
    c = connect(url)
    c.set("k", "v")
    assert c.get("k") == "v"
    assert oct((state / "redis.sock").stat().st_mode & 0o777) == "0o600"
    import os
    import signal

    os.kill(int(pid), signal.SIGTERM)


def test_semaphore_limits_holders_and_expires_dead_ones(client):
    from orchestrator.limits import Semaphores

    sem = Semaphores(client)
    assert sem.acquire("g", "j1", 2, 30) and sem.acquire("g", "j2", 2, 30)
    assert not sem.acquire("g", "j3", 2, 30)
    assert sem.acquire("g", "j1", 2, 30)  # a holder again: still one slot
    sem.release("g", "j2")
    assert sem.acquire("g", "j3", 2, 30)
    assert sorted(sem.holders("g")) == ["j1", "j3"]
    assert sem.acquire("h", "dead", 1, 0.2)
    time.sleep(0.3)
    assert sem.acquire("h", "alive", 1, 30)  # the dead holder's lease ran out


def test_semaphore_acquire_all_is_all_or_nothing(client):
    from orchestrator.limits import Semaphores

    sem = Semaphores(client)
    assert sem.acquire("host:bar", "other", 1, 30)
    assert not sem.acquire_all([("global", 4), ("host:foo", 2), ("host:bar", 1)], "j1", 30)
    assert sem.holders("global") == [] and sem.holders("host:foo") == []
    sem.release("host:bar", "other")
    assert sem.acquire_all([("global", 4), ("host:foo", 2), ("host:bar", 1)], "j1", 30)


def test_a_step_costs_redis_seven_commands(client, tmp_path, monkeypatch):
    """What StepRun adds to a step's own work, against a real Redis: take the run lease, read the job
    (one HGETALL), record the step (one HSET), mark it done (one HSETNX), release the lease (a script:
    EVALSHA, GET, DEL). The job's locks are fresh (the submit took them), so none is renewed."""
    from types import SimpleNamespace

    from orchestrator.limits import Semaphores
    from orchestrator.runs import RunLeases
    from orchestrator.settings import Settings
    from orchestrator.stepcontext import StepContext
    from orchestrator.stepping import StepRun

    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path))
    settings = Settings.from_env()
    ctx = StepContext(settings, client, JobStore(client), ContainerLocks(client), Semaphores(client),
                      RunLeases(client, settings.visibility_timeout))  # fmt: skip
    state = JobState(source_remote="a", source_name="x", target_remote="b", target_name="x")
    job = ctx.jobs.create("move", "a:x", "b:x", {}, state)
    task = SimpleNamespace(request=SimpleNamespace(id="t1", root_id="chain-1", hostname="w@h"))
    StepRun(task, ctx, "verify_target", job.id).execute(lambda c, j: None)  # claims the job's chain

    def calls() -> int:
        stats = client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    before = calls()
    StepRun(task, ctx, "issue_token", job.id).execute(lambda c, j: None)
    used = calls() - before  # (INFO itself not counted)
    record = ctx.jobs.get(job.id)
    assert record.steps_done == ["verify_target", "issue_token"] and record.step == "issue_token"
    assert used == 7, used
