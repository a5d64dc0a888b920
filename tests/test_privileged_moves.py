"""Privileged containers move only with the operator's opt-in: the CLI end to end (real agents, Redis,
workers). Without ``--allow-privileged`` the target refuses in one line naming the container's privilege
and both ways to allow it, and nothing moves; with it the copy is privileged on the target; an
evacuation with the opt-in moves the container away and ``orch restore`` brings it back the same way;
a host's own policy key (``migration.allow_privileged``) allows every migration to it.
"""

from __future__ import annotations

import json

import pytest

from tests.test_copy_move import containers, last_job, put, rootfs


@pytest.fixture
def pair(make_agent, orch_env, busybox_image, start_worker):  # type: ignore[no-untyped-def]
    foo, bar = make_agent("foo"), make_agent("bar")
    orch_env.add_remote("foo", foo)
    orch_env.add_remote("bar", bar)
    orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    orch_env.run("init", "foo:bb", "foo:p1", "-c", "security.privileged=true")
    start_worker("w1")
    return foo, bar


def test_a_privileged_container_moves_only_with_the_opt_in(pair, orch_env):
    foo, bar = pair
    put(rootfs(foo, "p1") / "root" / "note", b"privileged data\n")
    err = orch_env.fails("move", "foo:p1", "bar:")
    assert "does not accept a migrated container with security.privileged=true" in err
    assert "--allow-privileged" in err and "migration.allow_privileged" in err
    assert "p1" in containers(orch_env, "foo") and "p1" not in containers(orch_env, "bar")
    orch_env.run("move", "foo:p1", "bar:", "--allow-privileged")
    moved = containers(orch_env, "bar")["p1"]
    assert moved["config"]["security.privileged"] == "true" and "p1" not in containers(orch_env, "foo")
    note = rootfs(bar, "p1") / "root" / "note"
    assert note.read_bytes() == b"privileged data\n" and note.stat().st_uid == 0  # raw ids: host root
    orch_env.run("start", "bar:p1")
    assert orch_env.run("exec", "bar:p1", "--", "cat", "/root/note").stdout == "privileged data\n"
    orch_env.run("stop", "bar:p1", "--force")


def test_the_hosts_policy_key_allows_privileged_copies(pair, orch_env):
    orch_env.run("config", "set", "bar:", "migration.allow_privileged", "true")
    orch_env.run("copy", "foo:p1", "bar:")
    assert last_job(orch_env)["status"] == "succeeded"
    orch_env.run("config", "set", "bar:", "migration.allow_privileged", "false")
    err = orch_env.fails("copy", "foo:p1", "bar:p2")
    assert "security.privileged=true" in err


def test_evacuation_and_restore_carry_the_opt_in(pair, orch_env):
    foo, bar = pair
    orch_env.run("init", "foo:bb", "foo:u1")
    proc = orch_env.run("evacuate", "foo:", "--yes", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "security.privileged=true" in proc.stdout + proc.stderr  # the outcome says why p1 stayed
    assert "p1" in containers(orch_env, "foo") and "u1" in containers(orch_env, "bar")
    orch_env.run("evacuate", "foo:", "--yes", "--allow-privileged")
    assert set(containers(orch_env, "bar")) == {"p1", "u1"} and containers(orch_env, "foo") == {}
    origins = json.loads(orch_env.run("hosts", "--format", "json").stdout)
    assert any(h["status"] == "evacuated" for h in origins)
    orch_env.run("restore", "foo:")
    back = containers(orch_env, "foo")
    assert set(back) == {"p1", "u1"} and back["p1"]["config"]["security.privileged"] == "true"
    assert containers(orch_env, "bar") == {}
