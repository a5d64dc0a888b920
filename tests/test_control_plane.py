"""The control plane under fault injection: a worker SIGKILLed mid-step, Redis SIGKILLed and restarted,
a failed agent operation. Real agents over TLS, real ``orch worker`` processes, a real ``redis-server``
with an append-only file; the figures (recovery delays) are printed, bounds asserted generously."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.procs import RedisServer
from tests.test_copy_move import containers, dd, job, rootfs


@pytest.fixture
def durable_redis(tmpdir755: Path):  # type: ignore[no-untyped-def]
    """A Redis with an append-only file, fsync'd on every write, that a test can kill and restart."""
    workdir = tmpdir755 / "redis-aof"
    workdir.mkdir()
    server = RedisServer(workdir, persistent=True).start()
    yield server
    server.stop()


@pytest.fixture
def lab(make_agent, orch, durable_redis, busybox_image, tmpdir755):  # type: ignore[no-untyped-def]
    """foo and bar, the CLI on the durable Redis with the default settings (no visibility override)."""
    orch.env.update({"ORCH_REDIS_URL": durable_redis.url, "ORCH_STATE_DIR": str(tmpdir755 / "state")})
    foo, bar = make_agent("foo"), make_agent("bar")
    orch.add_remote("foo", foo, PASSWORD)
    orch.add_remote("bar", bar, PASSWORD)
    orch.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    return foo, bar


def wait_for(orch, job_id: str, what, timeout: float = 120.0, logs=()) -> dict:  # type: ignore[no-untyped-def]
    """The job's record once ``what(record)`` holds; on a timeout the failure shows ``logs``' tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = job(orch, job_id)
        except AssertionError:  # the CLI could not reach Redis (restarting)
            time.sleep(0.2)
            continue
        if what(record):
            return record
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n" + "".join(_lines(p)[-60:]) for p in logs)
    pytest.fail(f"job {job_id} never got there: {job(orch, job_id)}\n{tails}")


def _lines(path: Path) -> list[str]:
    """The log's lines without the progress events (one per poll)."""
    return [line for line in path.read_text().splitlines(True) if "task-progress" not in line]


def transferring(record: dict) -> bool:
    return record["step"] == "transfer_delta" and record["bytes_done"] > 0


def ended(record: dict) -> bool:
    return record["status"] in ("succeeded", "failed", "cancelled")


def step_ends(*logs: Path) -> dict[str, int]:
    """How many times each step's task succeeded, over the workers' logs."""
    counts: dict[str, int] = {}
    for path in logs:
        for line in _lines(path):
            if "Task orch." in line and "] succeeded in" in line:
                name = line.split("Task orch.", 1)[1].split("[", 1)[0]
                counts[name] = counts.get(name, 0) + 1
    return counts


MOVE_STEPS = {
    name: 1 for name in ("verify_target", "issue_token", "pull_image", "transfer_delta", "delete_source")
}


def test_worker_killed_mid_transfer_step_runs_again_on_the_other_worker_within_15s(lab, orch, workers):
    """With the default settings (visibility timeout 10 s, renewed by each worker's heartbeat)."""
    foo, bar = lab
    pool = {"w1": workers("w1"), "w2": workers("w2")}
    orch.run("init", "foo:bb", "foo:c1")
    dd(rootfs(foo, "c1") / "root" / "big", 200)
    job_id = orch.run("move", "foo:c1", "bar:", "--no-wait", "--bwlimit", "8MB").stdout.strip()
    record = wait_for(orch, job_id, transferring)
    first = record["worker"].split("@")[0]
    survivor = pool["w2" if first == "w1" else "w1"]
    pool[first].kill()  # SIGKILL: the supervisor and its Celery process, no chance to ack or requeue
    killed = time.monotonic()
    record = wait_for(orch, job_id, lambda r: r["worker"].startswith(survivor.name + "@"), timeout=120,
                      logs=[survivor.log_path])  # fmt: skip
    recovery = time.monotonic() - killed
    print(f"\nrecovery: the step ran again on {survivor.name} {recovery:.1f} s after {first} was killed")
    assert recovery <= 15.0, f"recovery took {recovery:.1f} s"
    record = wait_for(orch, job_id, ended, timeout=120, logs=[survivor.log_path])
    assert record["status"] == "succeeded", record
    assert os.path.getsize(rootfs(bar, "c1") / "root" / "big") == 200 * 1024 * 1024
    assert "c1" not in containers(orch, "foo")
    # every step ran to its end once; the killed run of transfer_delta never ended
    assert step_ends(pool["w1"].log_path, pool["w2"].log_path) == MOVE_STEPS


def test_redis_killed_and_restarted_mid_transfer_one_worker_finishes_the_job(
    lab, orch, durable_redis, workers
):
    """An outage of 30 s while a step follows the transfer; one worker, which neither dies nor restarts."""
    foo, bar = lab
    worker = workers("w1")
    orch.run("init", "foo:bb", "foo:c1")
    dd(rootfs(foo, "c1") / "root" / "big", 200)
    job_id = orch.run("move", "foo:c1", "bar:", "--no-wait", "--bwlimit", "8MB").stdout.strip()
    wait_for(orch, job_id, transferring)
    durable_redis.kill()
    time.sleep(30)
    durable_redis.start()
    record = wait_for(orch, job_id, ended, timeout=240, logs=[worker.log_path])
    log = "".join(_lines(worker.log_path))
    assert record["status"] == "succeeded", (record, log[-4000:])
    assert "Unrecoverable error" not in log and "restarting it" not in log, log[-4000:]
    assert worker.proc.poll() is None  # the worker is still there for the next job
    assert "c1" in containers(orch, "bar") and "c1" not in containers(orch, "foo")
    assert os.path.getsize(rootfs(bar, "c1") / "root" / "big") == 200 * 1024 * 1024
    assert step_ends(worker.log_path) == MOVE_STEPS
    # and the next job runs
    orch.run("init", "foo:bb", "foo:c2")
    orch.run("move", "foo:c2", "bar:")
    assert "c2" in containers(orch, "bar")


def test_a_failed_transfer_operation_is_never_polled_again(make_agent, orch, durable_redis, busybox_image,
                                                            tmpdir755, workers):  # fmt: skip
    """The target's pull is cut mid-stream (a TCP reset between the agents): its operation fails as a
    connection error (503, not a 500), and the step's retry starts a new transfer at once, which resumes
    what the first one verified; the dead operation is not read again."""
    from tests.faultproxy import FaultProxy

    orch.env.update({"ORCH_REDIS_URL": durable_redis.url, "ORCH_STATE_DIR": str(tmpdir755 / "state")})
    # every byte over the HTTPS port (no data link), so through the proxy
    foo, bar = make_agent("foo", args=["--data-listen", "off"]), make_agent("bar")
    host, port = foo.addr.rsplit(":", 1)
    proxy = FaultProxy((host, int(port)), cut_after=40 * 1024 * 1024)
    try:
        address = f"127.0.0.1:{proxy.port}"  # the worker and the target both reach foo through the proxy
        orch.run("remote", "add", "foo", address, "--accept-certificate", "--password", PASSWORD)
        orch.add_remote("bar", bar, PASSWORD)
        orch.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
        worker = workers("w1")
        orch.run("init", "foo:bb", "foo:c1")
        dd(rootfs(foo, "c1") / "root" / "big", 120)
        job_id = orch.run("move", "foo:c1", "bar:", "--no-wait", "--method", "rsync").stdout.strip()
        record = wait_for(orch, job_id, ended, timeout=180, logs=[worker.log_path])
    finally:
        proxy.stop()
    log = "".join(_lines(worker.log_path))
    assert record["status"] == "succeeded", (record, log[-3000:])
    assert proxy.cut == 1
    retries = [line for line in log.splitlines() if "step transfer_delta" in line and "retrying" in line]
    assert len(retries) == 1, retries  # one failure, one new attempt: no re-reads of the dead operation
    assert "connection" in retries[0] and "internal error" not in log, retries
    assert os.path.getsize(rootfs(bar, "c1") / "root" / "big") == 120 * 1024 * 1024
