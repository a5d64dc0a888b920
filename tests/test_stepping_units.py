"""Unit tests of the step machinery (orchestrator/stepping.py's StepRun), without Redis or Celery's
broker: in-memory stores (orchestrator/memstore.py) and a stand-in for the running Celery task (its
request and its retry, which raises as Celery's does). The same decisions run against real Redis and
real workers in test_copy_move, test_control_plane and test_dispatch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery.exceptions import Ignore, Retry

from orchapi.errors import BadRequest, Unavailable
from orchestrator.jobs import CANCELLED, FAILED, RUNNING
from orchestrator.jobstate import JobState
from orchestrator.memstore import MemoryJobStore, MemoryLocks, MemoryRunLeases, MemorySemaphores
from orchestrator.settings import Settings
from orchestrator.stepcontext import Cancelled, StepContext, Superseded
from orchestrator.stepping import StepRun


class RunningTask:
    """What StepRun uses of the Celery task it runs in: ``request`` and ``retry``/``send_event``."""

    def __init__(self, chain: str = "chain-1") -> None:
        self.request = SimpleNamespace(id="task-1", root_id=chain, hostname="w1@test")
        self.retries: list[float] = []

    def retry(self, exc: BaseException | None = None, countdown: float = 0, max_retries: Any = None) -> Retry:
        self.retries.append(countdown)
        raise Retry(exc=exc, when=countdown)

    def send_event(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture
def ctx(tmp_path, monkeypatch) -> StepContext:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ORCH_STATE_DIR", str(tmp_path))
    settings = Settings.from_env()
    return StepContext(settings, None, MemoryJobStore(), MemoryLocks(), MemorySemaphores(), MemoryRunLeases())


def new_job(ctx: StepContext, **state: Any) -> str:
    base = {"source_remote": "foo", "source_name": "c1", "target_remote": "bar", "target_name": "c1"}
    return ctx.jobs.create("move", "foo:c1", "bar:c1", {}, JobState(**base, **state)).id


def run(ctx: StepContext, job_id: str, fn, task: RunningTask | None = None, name: str = "issue_token"):  # type: ignore[no-untyped-def]
    return StepRun(task or RunningTask(), ctx, name, job_id).execute(fn)


def test_a_step_runs_once_and_is_recorded(ctx):
    job_id, calls = new_job(ctx), []
    assert run(ctx, job_id, lambda c, job: calls.append(job.id)) == job_id
    job = ctx.jobs.get(job_id)
    assert calls == [job_id] and job.steps_done == ["issue_token"]
    assert (job.status, job.step, job.attempts, job.worker) == (RUNNING, "issue_token", 1, "w1@test")
    assert ctx.runs.held == {}  # the run lease is given back
    with pytest.raises(Ignore):  # a duplicate delivery of the completed step
        run(ctx, job_id, lambda c, job: calls.append("again"))
    assert calls == [job_id]


def test_a_second_chain_for_the_job_stops_at_once(ctx):
    job_id, calls = new_job(ctx), []
    run(ctx, job_id, lambda c, job: None, name="verify_target")
    with pytest.raises(Ignore):
        run(ctx, job_id, lambda c, job: calls.append(1), RunningTask(chain="chain-2"))
    assert calls == []


def test_a_delivery_waits_while_another_run_holds_the_job(ctx):
    job_id, task, calls = new_job(ctx), RunningTask(), []
    assert ctx.runs.take(job_id, "the-other-run")
    with pytest.raises(Retry):
        run(ctx, job_id, lambda c, job: calls.append(1), task)
    assert calls == [] and task.retries == [ctx.settings.visibility_timeout / 2]
    assert ctx.jobs.get(job_id).attempts == 0  # nothing recorded: it did not run


def test_transient_errors_retry_then_fail_and_roll_back(ctx):
    job_id = new_job(ctx)

    def unreachable(c, job):  # type: ignore[no-untyped-def]
        raise Unavailable("agent bar is unreachable")

    for _ in range(ctx.settings.max_retries):
        with pytest.raises(Retry):
            run(ctx, job_id, unreachable)
        assert ctx.jobs.get(job_id).error.startswith("retrying: agent bar is unreachable")
    with pytest.raises(Unavailable):
        run(ctx, job_id, unreachable)
    job = ctx.jobs.get(job_id)
    assert job.status == FAILED and "gave up after retries" in job.error
    assert ctx.locks.held == {}  # released with the end


def test_a_permanent_error_fails_the_job_at_once(ctx):
    job_id = new_job(ctx)

    def refused(c, job):  # type: ignore[no-untyped-def]
        raise BadRequest("c1 is running", "stop it first")

    with pytest.raises(BadRequest):
        run(ctx, job_id, refused)
    job = ctx.jobs.get(job_id)
    assert job.status == FAILED and job.error == "issue_token: c1 is running (stop it first)"


def test_a_redis_outage_is_retried_never_recorded_as_a_failure(ctx):
    job_id, task = new_job(ctx), RunningTask()

    def redis_gone(c, job):  # type: ignore[no-untyped-def]
        raise redis.ConnectionError("Connection refused")

    with pytest.raises(Retry):
        run(ctx, job_id, redis_gone, task)
    job = ctx.jobs.get(job_id)
    assert job.status == RUNNING and job.error == "" and task.retries == [ctx.settings.visibility_timeout]
    assert ctx.runs.held == {}


def test_a_superseded_run_stops_without_touching_the_job(ctx):
    job_id = new_job(ctx)

    def taken_over(c, job):  # type: ignore[no-untyped-def]
        c.runs.held[job_id] = ("another-run", float("inf"))  # another delivery took the lease over
        c.renew_locks(job)

    with pytest.raises(Ignore):
        run(ctx, job_id, taken_over)
    job = ctx.jobs.get(job_id)
    assert job.status == RUNNING and job.steps_done == [] and job.error == ""
    assert ctx.runs.held[job_id][0] == "another-run"  # not released by the superseded run
    assert issubclass(Superseded, Exception)


def test_cancellation_before_and_during_a_step(ctx):
    job_id = new_job(ctx)
    ctx.jobs.request_cancel(job_id)
    with pytest.raises(Ignore):
        run(ctx, job_id, lambda c, job: pytest.fail("a cancelled job's step must not run"))
    assert ctx.jobs.get(job_id).status == CANCELLED

    job_id = new_job(ctx)

    def cancelled(c, job):  # type: ignore[no-untyped-def]
        raise Cancelled()

    with pytest.raises(Exception, match="cancelled by the user"):
        run(ctx, job_id, cancelled)
    assert ctx.jobs.get(job_id).status == CANCELLED


def test_a_job_without_a_free_slot_waits_for_one(ctx):
    job_id, task, calls = new_job(ctx, slots=[["evac:foo", 1]]), RunningTask(), []
    ctx.semaphores.acquire_all([("evac:foo", 1)], "another-job", 60)
    with pytest.raises(Retry):
        run(ctx, job_id, lambda c, job: calls.append(1), task)
    assert calls == [] and ctx.jobs.get(job_id).stage == "waiting for a slot"
    assert ctx.jobs.failures == {}  # a wait is not a failure
    ctx.semaphores.release("evac:foo", "another-job")
    run(ctx, job_id, lambda c, job: calls.append(1), task)
    assert calls == [1]


def test_importing_the_celery_app_and_its_tasks_starts_no_server(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ORCH_REDIS_URL"}
    env["ORCH_STATE_DIR"] = str(tmp_path / "state")
    code = "import orchestrator.celeryapp as c; c.app.loader.import_default_modules(); "
    code += "print(c.app.conf.broker_url)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"redis+socket://{tmp_path / 'state' / 'redis.sock'}"
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").iterdir())


def test_the_last_step_of_its_kind_ends_the_job(ctx):
    from orchestrator.jobs import SUCCEEDED

    job_id = new_job(ctx)
    run(ctx, job_id, lambda c, job: None, name="transfer_delta")
    assert ctx.jobs.get(job_id).status == RUNNING  # a move goes on to delete_source
    run(ctx, job_id, lambda c, job: None, name="delete_source")
    job = ctx.jobs.get(job_id)
    assert job.status == SUCCEEDED and job.steps_done == ["transfer_delta", "delete_source"]
    assert ctx.locks.held == {}


def test_one_chain_definition_gives_the_tasks_and_each_kinds_chain():
    from orchestrator.chain import STEPS, steps_for
    from orchestrator.jobs import Job
    from orchestrator.tasks.registry import TASKS
    from orchestrator.workers.dispatcher import chain_of

    assert [s.name for s in steps_for("move")] == [
        "verify_target", "issue_token", "pull_image", "transfer_delta", "delete_source"
    ]  # fmt: skip
    assert [s.name for s in steps_for("copy")] == [s.name for s in steps_for("move")][:-1]
    assert {name: task.name for name, task in TASKS.items()} == {s.name: f"orch.{s.name}" for s in STEPS}
    job = Job("j1", "copy", "foo:c1", "bar:c1", "queued")
    assert [sig.task for sig in chain_of(job).tasks] == [f"orch.{s.name}" for s in steps_for("copy")]
    assert all(sig.immutable and sig.args == ("j1", job.label) for sig in chain_of(job).tasks)


def test_the_workers_config_is_parsed_again_only_when_the_file_changes(tmp_path):
    """ClientConfig.current(): the workers look a remote up for every agent request; a fleet's
    config.yml takes ~150 ms to parse, so it is parsed once per change of the file."""
    from orchestrator.clientconfig import ClientConfig, Remote

    first = ClientConfig.current(tmp_path)
    assert ClientConfig.current(tmp_path) is first and set(first.remotes) == {"local"}
    editing = ClientConfig(tmp_path)
    editing.add(Remote("foo", "https://127.0.0.1:8443"))
    editing.save()  # a new file in place (os.replace): another inode, another size
    now = ClientConfig.current(tmp_path)
    assert now is not first and now.get("foo").addr == "https://127.0.0.1:8443"
    assert ClientConfig.current(tmp_path) is now
