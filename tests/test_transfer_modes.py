"""Transfer modes with real agents that cannot all reach each other: the target agent runs in a network
namespace the test creates (a veth to the host), the source listens only on the host's 127.0.0.1. The
worker reaches both; the target cannot reach the source. So pull fails with a clear error, push gets
through with a verified copy, and auto finds push by itself and says so."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.conftest import PASSWORD
from tests.netlab import NetNs
from tests.procs import AgentProcess
from tests.test_bwlimit import cluster

pytestmark = pytest.mark.skipif(not shutil.which("nsenter"), reason="nsenter is not installed")

MIB = 1024 * 1024


def _walled(tmpdir755, orch_env, busybox_image, source_walled: bool):  # type: ignore[no-untyped-def]
    """foo (with container c1: busybox and 4 MiB of its own) and bar in a namespace of its own; foo on the
    host's 127.0.0.1, or (``source_walled``) in another namespace: then neither reaches the other."""
    namespaces = [NetNs().create() for _ in range(2 if source_walled else 1)]
    agents = []
    try:
        if source_walled:
            foo = AgentProcess(tmpdir755 / "foo", "foo", prefix=namespaces[1].prefix)
            foo.start(listen_addr=f"{namespaces[1].inner_ip}:0")
        else:
            foo = AgentProcess(tmpdir755 / "foo", "foo").start()
        agents.append(foo)
        bar = AgentProcess(tmpdir755 / "bar", "bar", prefix=namespaces[0].prefix)
        agents.append(bar.start(listen_addr=f"{namespaces[0].inner_ip}:0"))
        for name, agent in (("foo", foo), ("bar", bar)):
            agent.set_trust_password(PASSWORD, tmpdir755 / f"admin-{name}")
            orch_env.add_remote(name, agent)
        orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
        orch_env.run("init", "foo:bb", "foo:c1")
        blob = foo.data_dir / "containers" / "c1" / "rootfs" / "root" / "blob"
        blob.write_bytes(os.urandom(4 * MIB))
        owner = blob.parent.stat()
        os.chown(blob, owner.st_uid, owner.st_gid)
        yield foo, bar
    finally:
        for agent in agents:
            agent.stop(kill_containers=True)
        for ns in namespaces:
            ns.delete()


@pytest.fixture
def walled(tmpdir755, orch_env, busybox_image) -> Iterator[tuple[AgentProcess, AgentProcess]]:  # type: ignore[no-untyped-def]
    """The target cannot reach the source; the source reaches the target."""
    yield from _walled(tmpdir755, orch_env, busybox_image, source_walled=False)


@pytest.fixture
def apart(tmpdir755, orch_env, busybox_image) -> Iterator[tuple[AgentProcess, AgentProcess]]:  # type: ignore[no-untyped-def]
    """Neither agent reaches the other; the worker reaches both."""
    yield from _walled(tmpdir755, orch_env, busybox_image, source_walled=True)


def _last_job(orch_env) -> dict:  # type: ignore[no-untyped-def]
    job_id = json.loads(orch_env.run("jobs", "--format", "json").stdout)[0]["id"]
    return json.loads(orch_env.run("jobs", "show", job_id, "--format", "json").stdout)


def _same_blob(foo: AgentProcess, bar: AgentProcess, name: str) -> bool:
    def digest(agent: AgentProcess, container: str) -> str:
        path = agent.data_dir / "containers" / container / "rootfs" / "root" / "blob"
        return hashlib.sha256(path.read_bytes()).hexdigest()

    return digest(foo, "c1") == digest(bar, name)


def test_pull_cannot_get_through_a_wall_and_says_why(walled, orch_env, start_worker):
    start_worker("w1")
    proc = orch_env.run("copy", "foo:c1", "bar:c1", "--mode", "pull", check=False, timeout=300)
    assert proc.returncode != 0
    assert "cannot reach the source agent" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(orch_env.run("list", "bar:", "--format", "json").stdout) == []


@pytest.mark.parametrize("mode", ["push", "auto"])
def test_push_gets_through_and_auto_finds_it(walled, orch_env, start_worker, mode):
    foo, bar = walled
    start_worker("w1")
    orch_env.run("copy", "foo:c1", "bar:c1", "--mode", mode, timeout=300)
    job = _last_job(orch_env)
    assert job["status"] == "succeeded" and job["mode"] == "push", job
    assert _same_blob(foo, bar, "c1")
    assert "Mode: push" in orch_env.run("jobs", "show", job["id"]).stdout
    images = json.loads(orch_env.run("image", "list", "bar:", "--format", "json").stdout)
    assert len(images) == 1  # the base image, carried by the worker: the copy was pre-filled
    # the same request again, for the next job: a new sink, not the finished one
    orch_env.run("delete", "bar:c1")
    orch_env.run("copy", "foo:c1", "bar:c1", "--mode", mode, timeout=300)
    assert _last_job(orch_env)["status"] == "succeeded"
    # and a move: the source goes only after the pushed copy was verified
    orch_env.run("move", "foo:c1", "bar:c2", "--mode", mode, timeout=300)
    assert [c["name"] for c in json.loads(orch_env.run("list", "foo:", "--format", "json").stdout)] == []
    assert sorted(c["name"] for c in json.loads(orch_env.run("list", "bar:", "--format", "json").stdout)) == [
        "c1",
        "c2",
    ]


@pytest.mark.parametrize("mode", ["relay", "auto"])
def test_relay_carries_what_neither_agent_can_send_the_other(apart, orch_env, start_worker, mode):
    foo, bar = apart
    start_worker("w1")
    if mode == "auto":
        assert "cannot reach" in orch_env.run("copy", "foo:c1", "bar:c0", "--mode", "push", check=False,
                                              timeout=300).stderr  # fmt: skip
    orch_env.run("copy", "foo:c1", "bar:c1", "--mode", mode, timeout=300)
    job = _last_job(orch_env)
    assert job["status"] == "succeeded" and job["mode"] == "relay", job
    assert job["wire_bytes"] > 4 * MIB  # what the target received, through the worker
    assert _same_blob(foo, bar, "c1")
    assert len(json.loads(orch_env.run("image", "list", "bar:", "--format", "json").stdout)) == 1


def test_an_agents_modes_policy_is_refused_up_front_and_auto_honours_it(agents, orch_env, busybox_image,
                                                                       tmpdir755, start_worker):  # fmt: skip
    cluster(agents, orch_env, busybox_image, tmpdir755)
    orch_env.run("init", "foo:bb", "foo:c1")
    assert "unknown transfer mode" in orch_env.fails(
        "config", "set", "bar:", "migration.modes", "carrier-pigeon"
    )
    orch_env.run("config", "set", "bar:", "migration.modes", "push,relay")
    start_worker("w1")
    err = orch_env.fails("copy", "foo:c1", "bar:c1", "--mode", "pull")
    assert "does not take part in pull transfers" in err and "--mode push" in err
    assert json.loads(orch_env.run("list", "bar:", "--format", "json").stdout) == []
    orch_env.run("copy", "foo:c1", "bar:c1")
    job = _last_job(orch_env)
    assert job["mode"] == "push" and job["status"] == "succeeded"


def test_a_relay_whose_worker_is_killed_is_carried_again_by_another(apart, orch_env, start_worker):
    """SIGKILL of the worker carrying the frames: the step is redelivered to the other worker, which
    relays again; the target resumes what it had (rsync kept the part of the file it had received), so
    the job completes, verified, having sent less than the whole again."""
    foo, bar = apart
    blob = foo.data_dir / "containers" / "c1" / "rootfs" / "root" / "blob"
    blob.write_bytes(os.urandom(24 * MIB))
    first = start_worker("w1", concurrency=1)
    args = ("copy", "foo:c1", "bar:c1", "--mode", "relay", "--bwlimit", "4MiB", "--no-wait")
    job_id = orch_env.run(*args).stdout.split()[-1]

    def show() -> dict:
        return json.loads(orch_env.run("jobs", "show", job_id, "--format", "json").stdout)

    deadline = time.monotonic() + 60
    while show()["bytes_done"] < 8 * MIB:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    first.kill()
    start_worker("w2", concurrency=1)
    deadline = time.monotonic() + 240
    while not (job := show())["finished_at"]:
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["status"] == "succeeded" and job["mode"] == "relay", job
    assert _same_blob(foo, bar, "c1")
    assert job["wire_bytes"] < 20 * MIB, job  # the 8 MiB the killed relay had carried stayed there
