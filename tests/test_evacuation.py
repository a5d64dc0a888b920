"""Evacuating a host and restoring it, with 3 real agents, real Redis and real workers."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.conftest import PASSWORD
from tests.procs import ORCH, AgentProcess
from tests.test_copy_move import dd, put


def _containers(orch, remote):  # type: ignore[no-untyped-def]
    return {c["name"]: c for c in json.loads(orch.run("list", f"{remote}:", "--format", "json").stdout)}


@pytest.fixture
def small_agents(tmpdir755):  # type: ignore[no-untyped-def]
    """bar and baz on 96 MiB tmpfs each, so that a big container fits on neither."""
    agents, mounts = [], []

    def factory(name: str) -> AgentProcess:
        mnt = tmpdir755 / f"fs-{name}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m,mode=755", "tmpfs", str(mnt)], check=True)
        mounts.append(mnt)
        agent = AgentProcess(mnt / name, name).start()
        agents.append(agent)
        agent.set_trust_password(PASSWORD, tmpdir755 / f"admin-{name}")
        return agent

    yield factory
    for agent in agents:
        agent.stop(kill_containers=True)
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def fleet(make_agent, small_agents, orch_env, busybox_image, start_worker):  # type: ignore[no-untyped-def]
    foo = make_agent("foo")
    bar, baz = small_agents("bar"), small_agents("baz")
    for name, agent in (("foo", foo), ("bar", bar), ("baz", baz)):
        orch_env.add_remote(name, agent)
    orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    start_worker("w1")
    start_worker("w2")
    o = orch_env
    for i in range(4):
        o.run("launch", "foo:bb", f"foo:run{i}")
    for i in range(4):
        o.run("init", "foo:bb", f"foo:off{i}")
    for name in ("run0", "off0"):
        o.run("snapshot", f"foo:{name}", "s1")
    o.run("launch", "foo:bb", "foo:keep", "-c", "evacuate=skip")
    o.run("init", "foo:bb", "foo:huge")
    big = foo.data_dir / "containers" / "huge" / "rootfs" / "root" / "big"
    dd(big, 120)
    put(foo.data_dir / "containers" / "run1" / "rootfs" / "root" / "data", os.urandom(300_000))
    return foo, bar, baz


def _overlaps(records: list[dict], key=lambda r: "all") -> int:  # type: ignore[no-untyped-def]
    """The largest number of jobs (grouped by ``key``) that held their slots at the same time."""
    events = []
    for r in records:
        events += [(r["started_ts"], 1, key(r)), (r["finished_ts"], -1, key(r))]
    peak: dict[str, int] = {}
    current: dict[str, int] = {}
    for _, delta, group in sorted(events, key=lambda e: (e[0], e[1])):
        current[group] = current.get(group, 0) + delta
        peak[group] = max(peak.get(group, 0), current[group])
    return max(peak.values(), default=0)


def test_evacuate_plan_then_drain_then_restore(fleet, orch_env):
    foo, bar, baz = fleet
    o = orch_env
    before = _containers(o, "foo")
    plan = json.loads(o.run("evacuate", "foo:", "--plan", "--format", "json").stdout)
    by_name = {p["container"]: p for p in plan}
    assert by_name["keep"]["action"] == "skip"
    assert by_name["huge"]["action"] == "stay" and "MiB free" in by_name["huge"]["reason"]
    migrating = [p for p in plan if p["action"] == "migrate"]
    assert len(migrating) == 8 and {p["target"] for p in migrating} == {"bar", "baz"}
    # --plan changed nothing
    assert _containers(o, "foo") == before
    assert "ONLINE" in o.run("hosts").stdout.split("foo")[1].splitlines()[0]

    out = o.run("evacuate", "foo:", "--yes", "--parallel", "3", "--per-host", "2", timeout=600)
    assert "moved to" in out.stdout
    after = _containers(o, "foo")
    assert set(after) == {"keep", "huge"}  # the skipped one and the one that fits nowhere stay
    assert after["keep"]["status"] == "Running" and after["huge"]["status"] == "Stopped"
    moved = {**_containers(o, "bar"), **_containers(o, "baz")}
    for p in migrating:
        where = _containers(o, p["target"])
        assert p["container"] in where, f"{p['container']} is not on {p['target']} as planned"
        assert where[p["container"]]["status"] == before[p["container"]]["status"]  # running ones run again
    assert moved["run0"]["snapshots"] == ["s1"] and moved["off0"]["snapshots"] == ["s1"]
    hosts = o.run("hosts").stdout
    assert "EVACUATED" in hosts.split("foo")[1].splitlines()[0]

    jobs = [j for j in json.loads(o.run("jobs", "--format", "json").stdout) if j["kind"] == "move"]
    assert len(jobs) == 8 and all(j["status"] == "succeeded" for j in jobs)
    assert _overlaps(jobs) <= 3
    assert _overlaps(jobs, key=lambda j: j["target"].split(":")[0]) <= 2

    # a cordoned/evacuated host is never a target
    err = (
        o.fails("copy", "bar:off1", "foo:copy1")
        if "off1" in _containers(o, "bar")
        else o.fails("copy", "baz:off1", "foo:copy1")
    )
    assert "evacuated" in err

    o.run("restore", "foo:", "--mode", "push", timeout=600)  # the moves back: the sources dial foo
    restored = _containers(o, "foo")
    assert set(restored) == set(before)
    back = [j for j in json.loads(o.run("jobs", "--format", "json").stdout) if j["target"].startswith("foo:")]
    assert back and all(j["mode"] == "push" and j["options"]["mode"] == "push" for j in back), back
    for name, c in before.items():
        assert restored[name]["status"] == c["status"], name
    assert restored["run0"]["snapshots"] == ["s1"]
    assert (foo.data_dir / "containers" / "run1" / "rootfs" / "root" / "data").stat().st_size == 300_000
    assert _containers(o, "bar") == {} and _containers(o, "baz") == {}
    assert "ONLINE" in o.run("hosts").stdout.split("foo")[1].splitlines()[0]


def test_cordoned_hosts_are_never_targets(fleet, orch_env):
    o = orch_env
    o.run("cordon", "baz:")
    assert "CORDONED" in o.run("hosts").stdout.split("baz")[1].splitlines()[0]
    err = o.fails("copy", "foo:off1", "baz:")
    assert "cordoned" in err
    plan = json.loads(o.run("evacuate", "foo:", "--plan", "--format", "json").stdout)
    assert {p["target"] for p in plan if p["action"] == "migrate"} == {"bar"}
    o.run("uncordon", "baz:")
    o.run("copy", "foo:off1", "baz:")
    assert "off1" in _containers(o, "baz")


def test_worker_killed_mid_evacuation_rerun_completes(fleet, orch_env, start_worker):
    from tests.test_copy_move import _kill_all_workers

    o = orch_env
    proc = subprocess.Popen(
        [ORCH, "evacuate", "foo:", "--yes", "--parallel", "2"],
        env=o.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        jobs = json.loads(o.run("jobs", "--format", "json").stdout)
        if sum(1 for j in jobs if j["status"] == "succeeded") >= 2:
            break
        time.sleep(0.2)
    _kill_all_workers(o)  # SIGKILL every worker mid-evacuation
    proc.kill()  # and the CLI that followed it
    proc.wait()
    start_worker("w3")
    o.run("evacuate", "foo:", "--yes", "--parallel", "2", timeout=600)  # the re-run continues
    assert set(_containers(o, "foo")) == {"keep", "huge"}
    jobs = [j for j in json.loads(o.run("jobs", "--format", "json").stdout) if j["kind"] == "move"]
    moved = {j["source"].split(":")[1] for j in jobs if j["status"] == "succeeded"}
    assert moved == {f"run{i}" for i in range(4)} | {f"off{i}" for i in range(4)}
