"""The hand-off of submitted jobs to the workers (orchestrator/dispatch.py), with real agents, a real
Redis and real `orch worker` processes: the CLI submits without Celery, a hand-off a dead worker dropped
is picked up again, and a job handed off twice still runs once."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import redis

from orchestrator import dispatch
from tests.procs import VENV_BIN

STEPS = ["verify_target", "issue_token", "pull_image", "transfer_delta", "delete_source"]


@pytest.fixture
def remotes(make_agent, orch_env, busybox_image):  # type: ignore[no-untyped-def]
    """foo and bar, the busybox image on foo, a container c1 on foo; no worker yet."""
    foo, bar = make_agent("foo"), make_agent("bar")
    orch_env.add_remote("foo", foo)
    orch_env.add_remote("bar", bar)
    orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    orch_env.run("init", "foo:bb", "foo:c1")
    return foo, bar


def client(orch_env) -> redis.Redis:  # type: ignore[no-untyped-def]
    return redis.Redis.from_url(orch_env.env["ORCH_REDIS_URL"], decode_responses=True)


def wait_job(orch_env, job_id: str, timeout: float = 60) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        record = json.loads(orch_env.run("jobs", "show", job_id, "--format", "json").stdout)
        if record["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def names(orch_env, remote: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [c["name"] for c in json.loads(orch_env.run("list", f"{remote}:", "--format", "json").stdout)]


def test_the_cli_submits_without_celery(remotes, orch_env, start_worker):  # type: ignore[no-untyped-def]
    """`orch move` records the job and hands it off: neither Celery nor kombu is imported for it, nor
    requests (it asks no agent anything: verify_target does)."""
    code = (
        "import sys\n"
        "from orchestrator.cli.main import main\n"
        "main(['move', 'foo:c1', 'bar:', '--no-wait'])\n"
        "print('celery loaded' if {m.split('.')[0] for m in sys.modules} & {'celery', 'kombu', 'requests'} "
        "else 'no celery')\n"
    )
    proc = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, env=orch_env.env, timeout=60
    )
    lines = proc.stdout.split()
    assert lines[-2:] == ["no", "celery"], proc.stdout + proc.stderr
    job_id = lines[0]
    assert client(orch_env).lrange(dispatch.SUBMITTED, 0, -1) == [job_id]  # waiting for a worker
    start_worker("w1")
    record = wait_job(orch_env, job_id)
    assert record["status"] == "succeeded" and record["steps_done"] == STEPS
    assert names(orch_env, "bar") == ["c1"] and names(orch_env, "foo") == []
    assert client(orch_env).llen(dispatch.SUBMITTED) == 0 and client(orch_env).llen(dispatch.DISPATCHING) == 0


def test_a_hand_off_dropped_by_a_dead_worker_is_picked_up(remotes, orch_env, start_worker):  # type: ignore[no-untyped-def]
    job_id = orch_env.run("move", "foo:c1", "bar:", "--no-wait").stdout.strip()
    r = client(orch_env)
    # a worker took it and died before starting its chain: the id sits on the dispatching list
    assert r.lmove(dispatch.SUBMITTED, dispatch.DISPATCHING, "RIGHT", "LEFT") == job_id
    r.hset(dispatch.TAKEN_AT, job_id, time.time() - dispatch.STALE_AFTER - 5)
    start_worker("w1")  # its first sweep puts the id back, then it runs the job
    record = wait_job(orch_env, job_id)
    assert record["status"] == "succeeded" and record["steps_done"] == STEPS
    assert names(orch_env, "bar") == ["c1"] and names(orch_env, "foo") == []
    assert r.llen(dispatch.DISPATCHING) == 0 and r.hlen(dispatch.TAKEN_AT) == 0


def test_a_job_handed_off_twice_runs_once(remotes, orch_env, start_worker):  # type: ignore[no-untyped-def]
    job_id = orch_env.run("move", "foo:c1", "bar:", "--no-wait").stdout.strip()
    r = client(orch_env)
    dispatch.enqueue(r, job_id)  # a second hand-off of the same job (as a sweep racing a slow worker)
    assert r.lrange(dispatch.SUBMITTED, 0, -1) == [job_id, job_id]
    worker = start_worker("w1")
    record = wait_job(orch_env, job_id)
    # each step ran once (a second chain's first step, if one was published, stopped at its claim)
    assert record["status"] == "succeeded" and record["steps_done"] == STEPS, record
    assert record["attempts"] == len(STEPS), record
    assert names(orch_env, "bar") == ["c1"] and names(orch_env, "foo") == []
    deadline = time.monotonic() + 10
    while r.llen(dispatch.SUBMITTED) or r.llen(dispatch.DISPATCHING):
        assert time.monotonic() < deadline, "a hand-off was left behind"
        time.sleep(0.1)
    assert worker.log_path.read_text().count("Task orch.transfer_delta[") >= 1


def test_a_queued_job_is_cancelled_at_once_and_never_runs(remotes, orch_env, start_worker):  # type: ignore[no-untyped-def]
    job_id = orch_env.run("move", "foo:c1", "bar:", "--no-wait").stdout.strip()
    started = time.monotonic()
    proc = orch_env.run("jobs", "cancel", job_id, check=False)
    assert proc.returncode == 0 and "cancelled (it had not started)" in proc.stdout, proc.stdout + proc.stderr
    assert time.monotonic() - started < 5  # no worker needed, no 120 s wait
    record = wait_job(orch_env, job_id, timeout=1)
    assert record["status"] == "cancelled" and record["steps_done"] == []
    r = client(orch_env)
    assert r.llen(dispatch.SUBMITTED) == 0
    # its locks are gone: the same container can be moved at once, and the cancelled job never runs
    again = orch_env.run("move", "foo:c1", "bar:", "--no-wait").stdout.strip()
    dispatch.enqueue(r, job_id)  # even handed off again (a sweep, a stale copy), it does not start
    start_worker("w1")
    assert wait_job(orch_env, again)["status"] == "succeeded"
    time.sleep(1)
    record = wait_job(orch_env, job_id, timeout=1)
    assert record["status"] == "cancelled" and record["steps_done"] == [] and record["attempts"] == 0
    # cancelling it again, or a finished job, says so and fails
    err = orch_env.fails("jobs", "cancel", job_id)
    assert f"job {job_id} already cancelled" in err
