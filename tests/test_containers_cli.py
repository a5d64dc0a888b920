"""The container lifecycle through the real CLI, agents, runc and the busybox image."""

from __future__ import annotations

import json
import os
import re

import yaml

from orchapi.client import AgentClient


def test_lifecycle_launch_exec_snapshot_stop_start_info_restore_delete(two_agents, orch):
    foo, _ = two_agents
    orch.run("launch", "foo:bb", "foo:c1")
    table = orch.run("list", "foo:").stdout
    header = table.splitlines()[1]
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "NAME",
        "STATE",
        "IPV4",
        "IPV6",
        "TYPE",
        "SNAPSHOTS",
    ]
    assert "| c1   | RUNNING |" in table
    orch.run("exec", "foo:c1", "--", "sh", "-c", "echo hi > /root/x")
    out = orch.run("exec", "foo:c1", "--", "cat", "/root/x").stdout
    assert out == "hi\n"
    # container root is mapped to an unprivileged host uid
    host_file = foo.data_dir / "containers" / "c1" / "rootfs" / "root" / "x"
    assert host_file.read_text() == "hi\n" and os.stat(host_file).st_uid >= 100000
    orch.run("snapshot", "foo:c1", "snap0")
    orch.run("exec", "foo:c1", "--", "sh", "-c", "echo changed > /root/x")
    orch.run("stop", "foo:c1")
    assert "| c1   | STOPPED |" in orch.run("list", "foo:").stdout
    orch.run("start", "foo:c1")
    info = orch.run("info", "foo:c1").stdout
    assert "Name: c1" in info and "Status: RUNNING" in info and "snap0" in info and "PID: " in info
    assert "Disk usage: " in info
    host = orch.run("info", "foo:").stdout  # the host: where migrations' bytes go, and kernel TLS
    assert re.search(r"Data link: port \d+; kernel TLS: (yes|no)", host), host
    line = orch.fails("restore", "foo:c1", "snap0", "--mode", "push")
    assert "are for a host restore" in line, line
    orch.run("restore", "foo:c1", "snap0")
    assert orch.run("exec", "foo:c1", "--", "cat", "/root/x").stdout == "hi\n"
    assert "Status: RUNNING" in orch.run("info", "foo:c1").stdout  # restore keeps it running
    orch.run("delete", "foo:c1/snap0")
    assert json.loads(orch.run("list", "foo:", "--format", "json").stdout)[0]["snapshots"] == []
    orch.run("delete", "-f", "foo:c1")
    assert json.loads(orch.run("list", "foo:", "--format", "json").stdout) == []
    assert not (foo.data_dir / "containers" / "c1").exists()


def test_exec_exit_code_and_stderr_pass_through(two_agents, orch):
    orch.run("launch", "foo:bb", "foo:c1")
    proc = orch.run("exec", "foo:c1", "--", "sh", "-c", "echo oops >&2; exit 3", check=False)
    assert proc.returncode == 3 and proc.stderr == "oops\n"


def test_launch_on_other_remote_relays_the_image_and_lists_formats(two_agents, orch):
    _, bar = two_agents
    orch.run("init", "foo:bb", "bar:c2")
    images = json.loads(orch.run("image", "list", "bar:", "--format", "json").stdout)
    foo_images = json.loads(orch.run("image", "list", "foo:", "--format", "json").stdout)
    assert [i["fingerprint"] for i in images] == [i["fingerprint"] for i in foo_images]
    listed = yaml.safe_load(orch.run("list", "bar:", "--format", "yaml").stdout)
    assert listed[0]["name"] == "c2" and listed[0]["status"] == "Stopped"
    assert orch.run("list", "bar:", "--format", "csv").stdout.strip() == "c2,STOPPED,,,CONTAINER,0"


def test_privileged_container_keeps_host_root(two_agents, orch):
    foo, _ = two_agents
    orch.run("launch", "foo:bb", "foo:p1", "-c", "security.privileged=true")
    orch.run("exec", "foo:p1", "--", "touch", "/root/y")
    assert os.stat(foo.data_dir / "containers" / "p1" / "rootfs" / "root" / "y").st_uid == 0


def test_invalid_names_are_refused(two_agents, orch):
    for bad in ("1abc", "bad_name", "-x", "x-", "a" * 64, "with.dot"):
        err = orch.fails("launch", "foo:bb", f"foo:{bad}")
        assert "invalid container name" in err
    assert "invalid snapshot name" in orch.fails("delete", "foo:c1/bad/snap")
    assert json.loads(orch.run("list", "foo:", "--format", "json").stdout) == []


def test_invalid_names_get_400_from_the_api(two_agents):
    foo, _ = two_agents
    admin = AgentClient(f"unix://{foo.socket}")
    response = admin.session.post(
        "http://orch-agent/1.0/containers", json={"name": "9lives", "source": {"alias": "bb"}}, timeout=10
    )
    assert response.status_code == 400 and "invalid container name" in response.json()["error"]
    response = admin.session.post("http://orch-agent/1.0/containers", data=b"{not json", timeout=10)
    assert response.status_code == 400 and response.json()["error"] == "request body is not valid JSON"


def test_creating_an_existing_name_fails_and_keeps_the_original(two_agents, orch):
    orch.run("launch", "foo:bb", "foo:c1")
    orch.run("exec", "foo:c1", "--", "touch", "/root/keep")
    assert "already exists" in orch.fails("launch", "foo:bb", "foo:c1")
    assert orch.run("exec", "foo:c1", "--", "ls", "/root").stdout.split() == ["keep"]


def test_deleting_running_container_needs_force(two_agents, orch):
    orch.run("launch", "foo:bb", "foo:c1")
    err = orch.fails("delete", "foo:c1")
    assert "is running" in err and "--force" in err
    assert "| c1   | RUNNING |" in orch.run("list", "foo:").stdout


def test_starting_a_running_container_fails(two_agents, orch):
    orch.run("launch", "foo:bb", "foo:c1")
    assert "already running" in orch.fails("start", "foo:c1")
    orch.run("stop", "foo:c1")
    assert "not running" in orch.fails("stop", "foo:c1")
    assert "not running" in orch.fails("exec", "foo:c1", "--", "true")


def test_unknown_container_and_image(two_agents, orch):
    assert "not found" in orch.fails("start", "foo:ghost")
    assert "not found" in orch.fails("launch", "foo:nosuchimage", "foo:c1")


def test_agent_restart_while_containers_run(two_agents, orch):
    foo, _ = two_agents
    orch.run("launch", "foo:bb", "foo:c1")
    orch.run("launch", "foo:bb", "foo:c2")
    orch.run("stop", "foo:c2")
    addr = foo.addr
    foo.kill()  # a crash, not a clean shutdown
    foo.start(listen_addr=addr)
    table = orch.run("list", "foo:").stdout
    assert "| c1   | RUNNING |" in table and "| c2   | STOPPED |" in table
    assert orch.run("exec", "foo:c1", "--", "echo", "alive").stdout == "alive\n"
    orch.run("stop", "foo:c1")
    orch.run("start", "foo:c2")
    table = orch.run("list", "foo:").stdout
    assert "| c1   | STOPPED |" in table and "| c2   | RUNNING |" in table
