"""What the CLI tells the operator is true: Ctrl-C leaves jobs running and says so, restore restarts
what evacuation stopped (real terminal, Redis, workers and agents)."""

from __future__ import annotations

import json
import re
import time

import pexpect
import pytest

from orchestrator.jobstate import JobState
from tests.procs import ORCH


def _spawn(orch, *args: str) -> pexpect.spawn:  # type: ignore[no-untyped-def]
    return pexpect.spawn(ORCH, list(args), env=orch.env, timeout=60, encoding="utf-8", dimensions=(24, 200))


@pytest.fixture
def pair(make_agent, orch_env, busybox_image):  # type: ignore[no-untyped-def]
    """foo and bar as remotes, the busybox image on foo as bb; no worker yet."""
    for name in ("foo", "bar"):
        orch_env.add_remote(name, make_agent(name))
    orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    return orch_env


def _job(orch, job_id: str) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(orch.run("jobs", "show", job_id, "--format", "json").stdout)


def test_ctrl_c_while_following_a_move_leaves_it_running_and_says_how_to_follow(pair, start_worker):
    o = pair
    o.run("init", "foo:bb", "foo:c1")
    move = _spawn(o, "move", "foo:c1", "bar:")  # no worker yet: the job waits in the queue
    move.expect(r"Job (\S+): move")
    job_id = move.match.group(1)
    time.sleep(0.5)
    move.sendintr()
    move.expect(pexpect.EOF)
    move.close()
    said = " ".join(move.before.split())
    assert f"Job {job_id} continues in the background" in said, said
    assert f"orch jobs show {job_id}" in said and f"orch jobs cancel {job_id}" in said
    assert "Aborted" not in said and "Traceback" not in said
    assert move.exitstatus == 130
    start_worker("w1")
    deadline = time.monotonic() + 120
    while _job(o, job_id)["status"] != "succeeded":
        assert time.monotonic() < deadline, _job(o, job_id)
        time.sleep(0.5)
    assert [c["name"] for c in json.loads(o.run("list", "bar:", "--format", "json").stdout)] == ["c1"]


def test_ctrl_c_during_evacuate_says_the_host_state_and_how_to_go_on_and_restore_restarts_stopped(
    pair, start_worker
):
    o = pair
    o.run("launch", "foo:bb", "foo:mig")
    o.run("launch", "foo:bb", "foo:halt", "-c", "evacuate=stop")
    evacuate = _spawn(o, "evacuate", "foo:", "--yes")  # no worker: the move waits
    evacuate.expect("OUTCOME|CONTAINER")
    time.sleep(1.5)
    evacuate.sendintr()
    evacuate.expect(pexpect.EOF)
    evacuate.close()
    said = " ".join(evacuate.before.split())
    assert re.search(r"foo stays EVACUATING: 1 of 1 move\(s\) continue in the background", said), said
    assert "run `orch evacuate foo:` again to continue" in said
    assert evacuate.exitstatus == 130
    start_worker("w1")
    o.run("evacuate", "foo:", "--yes", timeout=300)  # the rerun picks the running job up
    on_foo = {c["name"]: c["status"] for c in json.loads(o.run("list", "foo:", "--format", "json").stdout)}
    assert on_foo == {"halt": "Stopped"}
    out = o.run("restore", "foo:", timeout=300).stdout
    assert re.search(r"halt\s*\|\s*-\s*\|\s*restarted", out), out
    on_foo = {c["name"]: c["status"] for c in json.loads(o.run("list", "foo:", "--format", "json").stdout)}
    assert on_foo == {"halt": "Running", "mig": "Running"}


def test_hints_name_the_remote_and_only_options_the_command_has(pair, start_worker):
    o = pair
    o.run("launch", "foo:bb", "foo:c1")
    o.run("init", "foo:bb", "foo:off")
    o.run("init", "foo:bb", "bar:off")
    worker = start_worker("w1")
    started = time.monotonic()
    err = o.fails("copy", "foo:c1", "bar:")
    elapsed = time.monotonic() - started
    print(f"a refused copy took {elapsed:.2f} s")
    assert elapsed < 3, "a refused copy takes a round trip to an idle worker, no more"
    assert "orch stop foo:c1" in err and "--stateless" not in err, err
    err = o.fails("move", "foo:c1", "bar:")
    assert "--stateless" in err and "--refresh" not in err, err
    err = o.fails("move", "foo:off", "bar:")
    assert "already exists" in err and "--refresh" not in err and "orch delete bar:off" in err, err
    assert "--refresh" in o.fails("copy", "foo:off", "bar:")
    err = o.fails("exec", "foo:off", "--", "true")
    assert "container foo:off is not running" in err and "orch start foo:off" in err, err
    err = o.fails("exec", "foo:nope", "--", "true")
    assert "container foo:nope not found" in err, err
    before = o.run("jobs", "--format", "json").stdout
    assert json.loads(before) == [], "refused requests leave no FAILED job behind"
    started = time.monotonic()
    err = o.fails("move", "foo:off", "bar")  # the colon forgotten: bar is a remote
    assert time.monotonic() - started < 5
    assert "did you mean bar:?" in err, err
    assert o.run("jobs", "--format", "json").stdout == before  # nothing was submitted
    log = worker.log_path.read_text()
    assert "already exists" in log and "Traceback" not in log, log[-3000:]  # user errors: one line each


def test_jobs_prune_removes_only_old_finished_records_and_show_is_readable(orch_env, redis_server):
    import redis

    from orchestrator.jobs import FAILED, SUCCEEDED, JobStore

    store = JobStore(redis.Redis.from_url(redis_server.url))
    done = store.create("move", "foo:a", "bar:a", {"stateless": True, "method": None}, JobState())
    store.update(done.id, bytes_done=3 * 1024 * 1024, bytes_total=3 * 1024 * 1024, rate=1_500_000)
    store.finish(done.id, SUCCEEDED)
    failed = store.create("copy", "foo:b", "bar:b", {}, JobState())
    store.finish(failed.id, FAILED, "verify_target: boom")
    queued = store.create("copy", "foo:c", "bar:c", {}, JobState())
    shown = orch_env.run("jobs", "show", done.id).stdout
    assert "Bytes done: 3.00MiB (3,145,728 bytes)" in shown, shown
    assert "Rate: 1.43MiB/s" in shown and "Options: stateless" in shown, shown
    assert "{" not in shown and "None" not in shown, shown
    assert "Removed 0 finished job(s)" in orch_env.run("jobs", "prune").stdout  # all younger than 7d
    time.sleep(1.1)
    assert "Removed 2 finished job(s)" in orch_env.run("jobs", "prune", "--older-than", "1s").stdout
    assert [j["id"] for j in json.loads(orch_env.run("jobs", "--format", "json").stdout)] == [queued.id]
    assert "is not an age" in orch_env.fails("jobs", "prune", "--older-than", "soon")


def test_version_and_info_formats(make_agent, orch, busybox_image):
    from importlib.metadata import version

    import yaml

    orch.add_remote("foo", make_agent("foo"))
    assert orch.run("version").stdout == f"Client version: {version('orch')}\n"
    out = orch.run("version", "foo:").stdout
    assert f"Server version: {version('orch')} (remote foo: orch-agent on foo)" in out, out
    assert "is not a remote" in orch.fails("version", "foo:c1")
    info = json.loads(orch.run("info", "foo:", "--format", "json").stdout)
    assert info["environment"]["server_name"] == "foo" and info["auth"] == "trusted"
    assert (
        yaml.safe_load(orch.run("info", "foo:", "--format", "yaml").stdout)["environment"]["runtime"]
        == "native"
    )
    orch.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    orch.run("launch", "foo:bb", "foo:c1")
    orch.run("snapshot", "foo:c1", "s0")
    c1 = yaml.safe_load(orch.run("info", "foo:c1", "--format", "yaml").stdout)
    assert c1["name"] == "c1" and c1["state"]["status"] == "Running" and c1["state"]["pid"] > 0
    assert [s["name"] for s in c1["snapshots"]] == ["s0"]


def test_shell_completion_offers_remotes_and_the_remotes_containers(two_agents, orch):
    import subprocess

    orch.run("init", "foo:bb", "foo:web1")
    orch.run("init", "foo:bb", "foo:db1")

    def complete(*words: str) -> list[str]:
        env = {**orch.env, "_ORCH_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(("orch", *words)),
               "COMP_CWORD": str(len(words))}  # fmt: skip
        out = subprocess.run([ORCH], env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and not out.stderr, out.stderr
        return [line.split(",", 1)[1] for line in out.stdout.splitlines() if line.strip()]

    assert complete("exec", "fo") == ["foo:"]
    assert complete("exec", "foo:w") == ["foo:web1"]
    assert complete("move", "foo:") == ["foo:db1", "foo:web1"]
    assert complete("evacuate", "b") == ["bar:"]
    assert complete("exec", "nosuch:") == []  # an unknown remote: nothing, and no error in the shell
