"""Agent-to-agent migration (pull mode) through the real API: real agents, real HTTPS between them, rsync,
btrfs on loop-mounted files, tmpfs for a full disk. The worker's calls go over the agents' unix sockets."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from orchapi import certs
from orchapi.client import AgentClient
from orchapi.errors import Conflict, Forbidden, InsufficientStorage, NotFound, OrchError
from tests.procs import AgentProcess

ROOT_UID = 100000  # container root in the default id map (what an unprivileged container's files use)
MiB = 1024 * 1024
GiB = 1024 * MiB


# ------------------------------------------------------------------------------------------- fixtures


def api(agent: AgentProcess) -> AgentClient:
    return AgentClient(f"unix://{agent.socket}", timeout=60)


def import_image(agent: AgentProcess, tarball: Path) -> str:
    result = api(agent).run(
        "POST", "/1.0/images", data=tarball.read_bytes(), headers={"Content-Type": "application/octet-stream"}
    )
    return result["fingerprint"]


def create(agent: AgentProcess, name: str, fingerprint: str, config: dict[str, str] | None = None) -> None:
    api(agent).run(
        "POST",
        "/1.0/containers",
        json={"name": name, "source": {"fingerprint": fingerprint}, "config": config or {}},
    )


def write(agent: AgentProcess, container: str, rel: str, data: bytes, snapshot: str | None = None) -> Path:
    """Write a file into a stopped container's rootfs as its root user would own it."""
    root = (
        agent.data_dir
        / "containers"
        / container
        / ("rootfs" if snapshot is None else f"snapshots/{snapshot}/rootfs")
    )
    path = root / rel
    path.write_bytes(data)
    os.chown(path, ROOT_UID, ROOT_UID)
    return path


def snapshot(agent: AgentProcess, container: str, name: str) -> None:
    api(agent).run("POST", f"/1.0/containers/{container}/snapshots", json={"name": name})


def target_certificate(agent: AgentProcess) -> str:
    return (agent.data_dir / "server.crt").read_text()


def issue(source: AgentProcess, target: AgentProcess, container: str, **body: Any) -> dict[str, Any]:
    body.setdefault("target_certificate", target_certificate(target))
    return api(source).call("POST", f"/1.0/containers/{container}/migration", json=body)


def migration_url(source: AgentProcess, migration: dict[str, Any]) -> str:
    return f"{source.url}/1.0/migrations/{migration['id']}"


def pull_image(source: AgentProcess, target: AgentProcess, migration: dict[str, Any]) -> dict[str, Any]:
    body = {
        "source": {
            "type": "migration",
            "operation": migration_url(source, migration),
            "secret": migration["secrets"]["image"],
            "certificate": migration["certificate"],
            "fingerprint": migration["base_image"],
        }
    }
    return api(target).run("POST", "/1.0/images", json=body)


def pull_body(
    source: AgentProcess, migration: dict[str, Any], name: str, refresh: bool = False, **over: Any
) -> dict:
    src = {
        "type": "migration",
        "mode": "pull",
        "operation": migration_url(source, migration),
        "secrets": {"fs": migration["secrets"]["fs"]},
        "certificate": migration["certificate"],
        "base-image": migration["base_image"],
        "refresh": refresh,
    }
    src.update(over)
    return {"name": name, "source": src}


def start_pull(
    source: AgentProcess, target: AgentProcess, migration: dict[str, Any], name: str, **kw: Any
) -> str:
    response = api(target).request("POST", "/1.0/containers", json=pull_body(source, migration, name, **kw))
    return response.json()["operation"]


def wait(agent: AgentProcess, operation: str) -> dict[str, Any]:
    return api(agent).wait(operation)


def copy(
    source: AgentProcess,
    target: AgentProcess,
    container: str,
    name: str | None = None,
    image: bool = True,
    refresh: bool = False,
    **issue_args: Any,
) -> dict[str, Any]:
    """The worker's chain: issue, (pull the image), pull the container; returns the final op metadata."""
    migration = issue(source, target, container, **issue_args)
    if image:
        pull_image(source, target, migration)
    return wait(target, start_pull(source, target, migration, name or container, refresh=refresh))


def container_names(agent: AgentProcess) -> list[str]:
    return [r["name"] for r in api(agent).get("/1.0/containers", params={"recursion": 1})]


def leftovers(agent: AgentProcess, settle: float = 0.0) -> list[str]:
    """Hidden work dirs left in containers/; with ``settle``, wait that long for them to go (a source
    removes its temporary export snapshots concurrently with the target's commit)."""
    deadline = time.monotonic() + settle
    while True:
        found = [e for e in os.listdir(agent.data_dir / "containers") if e.startswith(".")]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def rootfs(agent: AgentProcess, container: str, snap: str | None = None) -> Path:
    base = agent.data_dir / "containers" / container
    return base / "rootfs" if snap is None else base / "snapshots" / snap / "rootfs"


def exec_(agent: AgentProcess, container: str, *command: str) -> str:
    result = api(agent).run("POST", f"/1.0/containers/{container}/exec", json={"command": list(command)})
    assert result["return"] == 0, base64.b64decode(result["stderr"])
    return base64.b64decode(result["stdout"]).decode()


def set_state(agent: AgentProcess, container: str, action: str) -> None:
    api(agent).run("PUT", f"/1.0/containers/{container}/state", json={"action": action, "force": True})


@pytest.fixture
def pair(agents, busybox_image: Path):
    """Dir agents a (with the busybox image and a stopped container c1 made from it) and b."""
    a, b = agents("a"), agents("b")
    fingerprint = import_image(a, busybox_image)
    create(a, "c1", fingerprint)
    return a, b, fingerprint


# ------------------------------------------------------------------------------------------- tests


def test_copy_stopped_container_with_two_snapshots(pair):
    a, b, fingerprint = pair
    write(a, "c1", "root/one", b"first\n")
    snapshot(a, "c1", "s1")
    write(a, "c1", "root/two", b"second\n")
    snapshot(a, "c1", "s2")
    write(a, "c1", "root/three", b"third\n")
    (rootfs(a, "c1") / "root/one").unlink()
    api(a).run("PATCH", "/1.0/containers/c1", json={"config": {"user.owner": "alice"}})
    before = api(a).get("/1.0/containers/c1")

    migration = issue(a, b, "c1")
    assert migration["snapshots"] == ["s1", "s2"] and migration["base_image"] == fingerprint
    assert migration["certificate"] == target_certificate(a) and set(migration["secrets"]) == {"image", "fs"}
    assert migration["methods"] == ["rsync", "tar"] and migration["size"] > 0
    assert migration["container"]["name"] == "c1" and len(migration["secrets"]["fs"]) >= 43
    image = pull_image(a, b, migration)
    assert image["fingerprint"] == fingerprint and image["cached"] is False and image["bytes"] > 0
    result = wait(b, start_pull(a, b, migration, "c1"))

    assert result["verified"] is True and result["method"] == "rsync" and result["stage"] == "done"
    assert result["files"] > 100 and result["volumes"] == 3 and result["total_bytes"] > 0
    assert result["bytes_received"] > 0 and result["bytes_sent"] > 0
    assert result["data_links"] == 3  # the bytes of each volume over the source's data port
    record = result["container"]
    assert record["name"] == "c1" and record["status"] == "Stopped" and record["snapshots"] == ["s1", "s2"]
    assert record["created_at"] == before["created_at"] and record["config"] == before["config"]
    assert api(b).get("/1.0/containers/c1") == record
    created = {
        s["name"]: s["created_at"]
        for s in api(a).get("/1.0/containers/c1/snapshots", params={"recursion": 1})
    }
    assert {
        s["name"]: s["created_at"]
        for s in api(b).get("/1.0/containers/c1/snapshots", params={"recursion": 1})
    } == created
    # each volume's own content
    assert sorted(os.listdir(rootfs(b, "c1", "s1") / "root")) == ["one"]
    assert sorted(os.listdir(rootfs(b, "c1", "s2") / "root")) == ["one", "two"]
    assert sorted(os.listdir(rootfs(b, "c1") / "root")) == ["three", "two"]
    assert (rootfs(b, "c1") / "root/three").read_bytes() == b"third\n"
    st = os.stat(rootfs(b, "c1") / "root/three")
    assert (st.st_uid, st.st_gid) == (ROOT_UID, ROOT_UID)
    assert os.readlink(rootfs(b, "c1") / "bin/sh") == os.readlink(rootfs(a, "c1") / "bin/sh")
    # the source is untouched, the copy is a working container
    assert container_names(a) == ["c1"] and api(a).get("/1.0/containers/c1")["snapshots"] == ["s1", "s2"]
    assert leftovers(a) == [] and leftovers(b) == []
    set_state(b, "c1", "start")
    assert exec_(b, "c1", "cat", "/root/three") == "third\n"
    set_state(b, "c1", "stop")
    # the image is cached now: no connection needed
    again = issue(a, b, "c1")
    assert pull_image(a, b, again) == {"fingerprint": fingerprint, "cached": True}


def test_copy_from_a_snapshot_of_a_running_container(pair):
    a, b, _ = pair
    set_state(a, "c1", "start")
    exec_(a, "c1", "sh", "-c", "echo before > /root/file")
    snapshot(a, "c1", "snap")
    exec_(a, "c1", "sh", "-c", "echo after > /root/file; touch /root/later")
    with pytest.raises(
        Conflict, match=r"^container c1 is running; stop it first \(or move with --stateless\)$"
    ):
        issue(a, b, "c1")
    with pytest.raises(NotFound, match="snapshot c1/nope not found"):
        issue(a, b, "c1", snapshot="nope")
    with pytest.raises(NotFound, match="container ghost not found"):
        issue(a, b, "ghost")
    migration = issue(a, b, "c1", snapshot="snap")
    assert migration["snapshots"] == []
    result = copy_with(a, b, migration, "c2")
    assert result["container"]["snapshots"] == [] and result["container"]["name"] == "c2"
    assert (rootfs(b, "c2") / "root/file").read_text() == "before\n"
    assert not (rootfs(b, "c2") / "root/later").exists()
    assert api(a).get("/1.0/containers/c1")["status"] == "Running"
    set_state(b, "c2", "start")
    assert exec_(b, "c2", "cat", "/root/file") == "before\n"


def copy_with(
    source: AgentProcess, target: AgentProcess, migration: dict[str, Any], name: str, **kw: Any
) -> dict:
    pull_image(source, target, migration)
    return wait(target, start_pull(source, target, migration, name, **kw))


def test_prefill_makes_the_transfer_small(agents, busybox_image):
    a, with_image, without_image = agents("a"), agents("b"), agents("c")
    fingerprint = import_image(a, busybox_image)
    create(a, "c1", fingerprint)
    write(a, "c1", "root/blob", os.urandom(MiB))
    unpacked = (
        sum(f.stat().st_size for f in rootfs(a, "c1").rglob("*") if f.is_file() and not f.is_symlink()) - MiB
    )
    assert unpacked > 1.5 * MiB  # busybox itself

    small = copy(a, with_image, "c1")
    big = copy(a, without_image, "c1", image=False)
    for result in (small, big):
        assert result["verified"] is True
    assert small["bytes_received"] < MiB + 256 * 1024, small  # the 1 MiB file and rsync's bookkeeping
    assert small["bytes_received"] < unpacked + 2 * MiB
    assert big["bytes_received"] > MiB + unpacked  # without the image everything travels
    assert big["bytes_received"] - small["bytes_received"] > 0.9 * unpacked
    for target in (with_image, without_image):
        assert (rootfs(target, "c1") / "root/blob").read_bytes() == (
            rootfs(a, "c1") / "root/blob"
        ).read_bytes()


def test_refresh_sends_only_the_change_and_keeps_the_target_safe(pair):
    a, b, _ = pair
    write(a, "c1", "root/big", os.urandom(4 * MiB))
    write(a, "c1", "root/small", b"v1\n")
    snapshot(a, "c1", "s1")
    first = copy(a, b, "c1")
    assert first["bytes_received"] > 4 * MiB
    snap_inode = os.stat(rootfs(b, "c1", "s1") / "root/big").st_ino

    write(a, "c1", "root/small", b"v2\n")
    snapshot(a, "c1", "s2")
    write(a, "c1", "root/small", b"v3\n")
    migration = issue(a, b, "c1")
    # refreshing a running target is refused before any connection
    set_state(b, "c1", "start")
    with pytest.raises(Conflict, match="running"):
        start_pull(a, b, migration, "c1", refresh=True)
    set_state(b, "c1", "stop")
    # without --refresh an existing name is refused
    with pytest.raises(Conflict, match="already exists"):
        start_pull(a, b, migration, "c1")
    result = wait(b, start_pull(a, b, migration, "c1", refresh=True))
    assert result["verified"] is True and result["volumes"] == 2  # s1 is skipped, s2 and the rootfs travel
    assert result["bytes_received"] < 64 * 1024, result
    assert result["container"]["snapshots"] == ["s1", "s2"]
    assert (rootfs(b, "c1") / "root/small").read_bytes() == b"v3\n"
    assert (rootfs(b, "c1", "s2") / "root/small").read_bytes() == b"v2\n"
    assert (rootfs(b, "c1", "s1") / "root/small").read_bytes() == b"v1\n"
    assert os.stat(rootfs(b, "c1", "s1") / "root/big").st_ino == snap_inode  # existing snapshot untouched
    assert leftovers(b) == []

    # a failed refresh (here: a revoked token) leaves the existing container exactly as it was
    migration = issue(a, b, "c1")
    api(a).call("DELETE", f"/1.0/migrations/{migration['id']}")
    with pytest.raises(Forbidden, match="revoked"):
        wait(b, start_pull(a, b, migration, "c1", refresh=True))
    assert (rootfs(b, "c1") / "root/small").read_bytes() == b"v3\n" and leftovers(b) == []


def test_token_replay_is_refused_and_the_first_transfer_goes_on(pair):
    a, b, _ = pair
    write(a, "c1", "root/big", os.urandom(64 * MiB))
    migration = issue(a, b, "c1")
    pull_image(a, b, migration)
    first = start_pull(a, b, migration, "c1")
    deadline = time.monotonic() + 30
    while api(b).get(first)["metadata"].get("bytes_received", 0) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with pytest.raises(Forbidden, match="migration token already used"):
        wait(b, start_pull(a, b, migration, "c2"))
    assert wait(b, first)["verified"] is True
    assert container_names(b) == ["c1"] and leftovers(b) == []
    # the image token too: one connection only
    api(b).run("DELETE", f"/1.0/images/{migration['base_image']}")
    with pytest.raises(Forbidden, match="already used"):
        pull_image(a, b, migration)


def test_the_same_pull_asked_again_is_the_same_operation(pair):
    """A worker killed between asking for the pull and recording its URL asks again after redelivery:
    while the first pull runs and after it committed, the answer is the first operation, not a second
    pull or "already exists"; another name with the same secret is still a replay."""
    a, b, _ = pair
    write(a, "c1", "root/big", os.urandom(16 * MiB))
    migration = issue(a, b, "c1")
    pull_image(a, b, migration)
    first = start_pull(a, b, migration, "c1")
    assert start_pull(a, b, migration, "c1") == first  # while it runs
    assert wait(b, first)["verified"] is True
    assert start_pull(a, b, migration, "c1") == first  # after it committed
    with pytest.raises(Forbidden, match="migration token already used"):
        wait(b, start_pull(a, b, migration, "c2"))
    assert container_names(b) == ["c1"] and leftovers(b) == []


def test_a_token_only_opens_its_own_migration(pair):
    a, b, fingerprint = pair
    create(a, "c2", fingerprint)
    for_c1, for_c2 = issue(a, b, "c1"), issue(a, b, "c2")
    crossed = {**for_c2, "secrets": for_c1["secrets"]}  # c1's fs secret on c2's migration
    with pytest.raises(Forbidden, match="invalid migration token"):
        wait(b, start_pull(a, b, crossed, "c2"))
    assert container_names(b) == [] and leftovers(b) == []
    # the data endpoints do not let in anyone else: no token, or a client that is not the target
    response = api(b).session.get(f"http://orch-agent/1.0/migrations/{for_c2['id']}/image", timeout=10)
    assert response.status_code == 403  # over the unix socket there is no certificate to check
    import requests

    plain = requests.get(f"{a.url}/1.0/migrations/{for_c2['id']}/image", verify=False, timeout=10)
    assert plain.status_code == 403 and "token" in plain.json()["error"]
    # neither token was spent by the refusals: the real target still succeeds
    assert copy_with(a, b, for_c2, "c2")["verified"] is True


def test_a_wrong_pinned_certificate_fails_before_anything_moves(pair, tmpdir755):
    a, b, _ = pair
    write(a, "c1", "root/keep", b"keep\n")
    migration = issue(a, b, "c1")
    certs.generate(tmpdir755 / "other.crt", tmpdir755 / "other.key", "someone else")
    wrong = {**migration, "certificate": (tmpdir755 / "other.crt").read_text()}
    with pytest.raises(Forbidden, match="certificate"):
        pull_image(a, b, wrong)
    with pytest.raises(Forbidden, match="certificate"):
        wait(b, start_pull(a, b, wrong, "c1"))
    assert container_names(b) == [] and leftovers(b) == [] and api(b).get("/1.0/images") == []
    assert (rootfs(a, "c1") / "root/keep").read_bytes() == b"keep\n" and leftovers(a) == []
    # the tokens were not spent by the failed handshakes
    assert copy_with(a, b, migration, "c1")["verified"] is True


def test_tokens_are_scoped_to_the_target_agent(agents, busybox_image):
    a, b, intruder = agents("a"), agents("b"), agents("c")
    fingerprint = import_image(a, busybox_image)
    create(a, "c1", fingerprint)
    create(a, "c2", fingerprint)
    migration = issue(a, b, "c1")  # issued to b
    # an agent the source never issued anything to cannot even complete the TLS handshake
    with pytest.raises(OrchError, match="closed the connection|TLS"):
        wait(intruder, start_pull(a, intruder, migration, "c1"))
    # one that got a migration of its own passes TLS, but b's token is not for it
    issue(a, intruder, "c2")
    with pytest.raises(Forbidden, match="this migration token was issued to another agent"):
        wait(intruder, start_pull(a, intruder, migration, "c1"))
    assert container_names(intruder) == [] and leftovers(intruder) == []
    assert copy_with(a, b, migration, "c1")["verified"] is True


def test_revoke_is_idempotent_and_unknown_ids_are_404(pair):
    a, b, _ = pair
    migration = issue(a, b, "c1")
    assert api(a).call("DELETE", f"/1.0/migrations/{migration['id']}") == {}
    assert api(a).call("DELETE", f"/1.0/migrations/{migration['id']}") == {}
    with pytest.raises(NotFound):
        api(a).call("DELETE", "/1.0/migrations/00000000-0000-0000-0000-000000000000")
    with pytest.raises(Forbidden, match="migration token revoked"):
        wait(b, start_pull(a, b, migration, "c1"))
    with pytest.raises(OrchError, match="ttl"):
        issue(a, b, "c1", ttl=601)


def test_btrfs_to_btrfs_sends_incremental_snapshots(agents, busybox_image):
    a, b = agents("a", fs="btrfs"), agents("b", fs="btrfs")
    info = api(a).get("/1.0")["environment"]
    assert info["storage"] == "btrfs" and info["transfer_methods"][0] == "btrfs"
    create(a, "c1", import_image(a, busybox_image))
    write(a, "c1", "root/big", os.urandom(4 * MiB))
    snapshot(a, "c1", "s1")
    write(a, "c1", "root/small", b"two\n")
    snapshot(a, "c1", "s2")
    write(a, "c1", "root/small", b"three\n")
    result = copy(a, b, "c1", image=False)
    assert result["method"] == "btrfs" and result["verified"] is True and result["volumes"] == 3
    # the first volume travels whole, the other two as small increments
    assert 4 * MiB < result["bytes_received"] < 4 * MiB + 4 * MiB, result
    assert (rootfs(b, "c1", "s1") / "root/big").read_bytes() == (rootfs(a, "c1") / "root/big").read_bytes()
    assert not (rootfs(b, "c1", "s1") / "root/small").exists()
    assert (rootfs(b, "c1", "s2") / "root/small").read_bytes() == b"two\n"
    assert (rootfs(b, "c1") / "root/small").read_bytes() == b"three\n"
    show = subprocess.run(
        ["btrfs", "subvolume", "show", str(rootfs(b, "c1", "s2"))], capture_output=True, text=True
    )
    assert "readonly" in show.stdout
    (rootfs(b, "c1") / "root/writable").write_text("yes")  # the rootfs is a writable subvolume
    assert leftovers(a, settle=5.0) == [] and leftovers(b) == []
    set_state(b, "c1", "start")
    assert exec_(b, "c1", "cat", "/root/small") == "three\n"
    set_state(b, "c1", "stop")
    # a refresh between btrfs agents uses rsync and only sends the change
    write(a, "c1", "root/small", b"four\n")
    refreshed = copy(a, b, "c1", refresh=True, image=False)
    assert refreshed["method"] == "rsync" and refreshed["bytes_received"] < 64 * 1024
    assert (rootfs(b, "c1") / "root/small").read_bytes() == b"four\n"
    api(b).run("DELETE", "/1.0/containers/c1")
    assert container_names(b) == []


def test_tar_fallback_keeps_links_modes_xattrs(agents, busybox_image):
    env = {"ORCH_AGENT_TRANSFER_METHODS": "tar"}
    a, b = agents("a", env=env), agents("b", env=env)
    assert api(a).get("/1.0")["environment"]["transfer_methods"] == ["tar"]
    create(a, "c1", import_image(a, busybox_image))
    root = rootfs(a, "c1")
    tool = write(a, "c1", "root/tool", b"#!/bin/sh\necho hi\n")
    os.chmod(tool, 0o4755)
    os.setxattr(tool, "user.note", b"kept")
    os.link(tool, root / "root/tool-link")
    os.symlink("/root/tool", root / "root/abs-link")
    os.lchown(root / "root/abs-link", ROOT_UID, ROOT_UID)
    os.mkfifo(root / "root/pipe")
    os.chown(root / "root/pipe", ROOT_UID, ROOT_UID)
    snapshot(a, "c1", "s1")
    result = copy(a, b, "c1")
    assert result["method"] == "tar" and result["verified"] is True
    got = rootfs(b, "c1") / "root"
    st = os.stat(got / "tool")
    assert st.st_mode & 0o7777 == 0o4755 and st.st_uid == ROOT_UID and st.st_nlink == 2
    assert os.stat(got / "tool-link").st_ino == st.st_ino
    assert os.getxattr(got / "tool", "user.note") == b"kept"
    assert os.readlink(got / "abs-link") == "/root/tool"
    assert os.path.exists(got / "pipe") and not os.path.isfile(got / "pipe")
    assert (rootfs(b, "c1", "s1") / "root/tool").read_bytes() == b"#!/bin/sh\necho hi\n"


@pytest.mark.parametrize(
    ("source_env", "target_env"),
    [({"ORCH_AGENT_DATA_LISTEN": "off"}, {}), ({}, {"ORCH_AGENT_DATA_LINK": "off"})],
    ids=["source-without-data-port", "target-refusing-links"],
)
@pytest.mark.parametrize("method", ["rsync", "tar"])
def test_without_a_data_link_the_bytes_take_the_websocket(
    agents, busybox_image, source_env, target_env, method
):
    methods = {"ORCH_AGENT_TRANSFER_METHODS": method}
    a, b = agents("a", env={**methods, **source_env}), agents("b", env={**methods, **target_env})
    link = api(a).get("/1.0")["environment"]["data_link"]
    assert (link["port"] is None) == ("ORCH_AGENT_DATA_LISTEN" in source_env)
    create(a, "c1", import_image(a, busybox_image))
    write(a, "c1", "root/data", os.urandom(3 * MiB))
    result = copy(a, b, "c1")
    assert result["verified"] is True and result["method"] == method and result["data_links"] == 0
    assert result["bytes_received"] > 3 * MiB
    assert (rootfs(b, "c1") / "root/data").read_bytes() == (rootfs(a, "c1") / "root/data").read_bytes()


def test_the_data_port_gives_strangers_nothing(pair):
    """Without a pending offer a connection is closed before any TLS work; an anonymous TLS client of
    an agent with offers pending fails its handshake (the port requires an agent certificate)."""
    import socket as socket_
    import ssl as ssl_

    a, _, _ = pair
    env = api(a).get("/1.0")["environment"]
    assert env["data_link"]["port"] and env["data_link"]["kernel_tls"] in (True, False)
    host = a.addr.rsplit(":", 1)[0]
    with socket_.create_connection((host, env["data_link"]["port"]), timeout=5) as raw:
        raw.settimeout(5)
        assert raw.recv(1) == b""  # closed at once
    ctx = ssl_.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl_.CERT_NONE
    with socket_.create_connection((host, env["data_link"]["port"]), timeout=5) as raw:
        with pytest.raises((ssl_.SSLError, OSError)):
            with ctx.wrap_socket(raw) as tls:
                tls.settimeout(5)
                tls.recv(1) or (_ for _ in ()).throw(OSError("closed"))


def test_a_full_target_fails_cleanly(agents, busybox_image):
    a = agents("a", env={"ORCH_AGENT_TRANSFER_METHODS": "rsync,tar"})
    small = agents("small", fs="tmpfs", size="16m")
    fingerprint = import_image(a, busybox_image)
    create(a, "big", fingerprint)
    write(a, "big", "root/data", os.urandom(40 * MiB))
    with pytest.raises(InsufficientStorage, match="^no space left on the target"):
        copy(a, small, "big")
    assert container_names(small) == [] and leftovers(small) == []
    assert container_names(a) == ["big"] and leftovers(a) == []


def test_a_target_filling_up_during_the_transfer_fails_cleanly(agents, busybox_image):
    """The size check passes, then something else fills the target's disk while the bytes arrive."""
    env = {"ORCH_AGENT_TRANSFER_METHODS": "tar"}
    a = agents("a", env=env)
    small = agents("small", fs="tmpfs", size="400m", env=env)
    fingerprint = import_image(a, busybox_image)
    create(a, "big", fingerprint)
    write(a, "big", "root/data", os.urandom(300 * MiB))
    migration = issue(a, small, "big")
    pull_image(a, small, migration)
    operation = start_pull(a, small, migration, "big")
    deadline = time.monotonic() + 60
    while api(small).get(operation)["metadata"].get("bytes_received", 0) < 8 * MiB:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    filler = small.data_dir / "filler"
    st = os.statvfs(small.data_dir)
    with open(filler, "wb") as fh:  # another tenant takes the rest of the disk
        try:
            os.posix_fallocate(fh.fileno(), 0, st.f_bavail * st.f_frsize)
        except OSError:
            pass
    with pytest.raises(InsufficientStorage, match="^no space left on the target"):
        wait(small, operation)
    assert container_names(small) == [] and leftovers(small) == []
    filler.unlink()  # and the space is free again: a small container fits
    create(a, "tiny", fingerprint)
    assert copy(a, small, "tiny")["verified"] is True


# rsync sends a sparse file's zeros on the wire and writes its full length (the per-file and wire limits
# count them): it carries holes only within the volume's allowance, hence the smaller file
@pytest.mark.parametrize(("method", "apparent"), [("tar", GiB), ("rsync", 2 * MiB)])
def test_sparse_files_travel_and_land_sparse(agents, busybox_image, method, apparent):
    """A file with 4 KiB of data among holes is sent as its data and a map (GNU tar --sparse) or with
    rsync's --sparse (asked for because the source saw holes), lands as holes, and fits the allowance
    the source declared (its size on disk)."""
    env = {"ORCH_AGENT_TRANSFER_METHODS": method}
    a, b = agents("a", env=env), agents("b", env=env)
    create(a, "s1", import_image(a, busybox_image))
    holes = write(a, "s1", "root/holes", b"")
    with open(holes, "r+b") as fh:
        fh.truncate(apparent)
        fh.seek(apparent // 2)
        fh.write(b"x" * 4096)
    result = copy(a, b, "s1")
    assert result["verified"] is True and result["method"] == method
    assert result["bytes_received"] < 16 * MiB  # not the gigabyte of zeros
    landed = os.stat(rootfs(b, "s1") / "root/holes")
    assert landed.st_size == apparent and landed.st_blocks * 512 <= 256 * 1024


def test_verification_catches_what_rsync_quick_check_misses(pair):
    """A file with the image's size and mtime but other content: rsync would skip it over the pre-filled
    image copy; the manifest comparison notices and a --checksum pass repairs it."""
    a, b, _ = pair
    hostname = rootfs(a, "c1") / "etc/hostname"
    st = os.stat(hostname)
    original = hostname.read_bytes()
    forged = bytes(reversed(original[:-1])) + b"\n"
    assert forged != original and len(forged) == len(original)
    hostname.write_bytes(forged)
    os.utime(hostname, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = copy(a, b, "c1")
    assert result["verified"] is True and result["repaired"] == ["rootfs"]
    assert (rootfs(b, "c1") / "etc/hostname").read_bytes() == forged


def test_cancelling_a_transfer_leaves_nothing(pair):
    a, b, _ = pair
    write(a, "c1", "root/big", os.urandom(256 * MiB))
    migration = issue(a, b, "c1")
    operation = start_pull(a, b, migration, "c1")
    deadline = time.monotonic() + 30
    while api(b).get(operation)["metadata"].get("bytes_received", 0) < MiB:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    progress = api(b).get(operation)["metadata"]
    assert progress["stage"] in ("rootfs", "verify") and progress["method"] == "rsync"
    assert progress["total_bytes"] > 256 * MiB and progress["volumes"] == 1
    api(b).call("DELETE", operation)
    op = api(b).get(f"{operation}/wait", params={"timeout": 30})
    assert op["status"] == "Cancelled"
    assert container_names(b) == [] and leftovers(b) == []
    # the source let go of the container: it can be started at once
    set_state(a, "c1", "start")
    set_state(a, "c1", "stop")
    assert leftovers(a) == []


def test_a_crashed_target_keeps_its_staging_and_the_next_pull_continues_it(pair):
    a, b, _ = pair
    for n in range(48):  # many files: rsync keeps the ones it completed before the crash
        write(a, "c1", f"root/part{n}", os.urandom(4 * MiB))
    operation = start_pull(a, b, issue(a, b, "c1"), "c1", method="rsync")
    deadline = time.monotonic() + 60
    while api(b).get(operation)["metadata"].get("bytes_received", 0) < 96 * MiB:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert any(e.startswith(".creating-") for e in leftovers(b))
    addr = b.addr
    b.kill()
    b.start(listen_addr=addr)
    # its journal says what the staging dir holds: kept aside, private, for the next attempt
    assert leftovers(b) == [".suspended-c1"] and container_names(b) == []
    assert (b.data_dir / "containers" / ".suspended-c1").stat().st_mode & 0o077 == 0
    [held] = api(b).get("/1.0/suspended-imports", params={"recursion": 1})
    assert held["name"] == "c1" and held["method"] == "rsync" and held["volumes_done"] == []
    # the source noticed the disconnect and released the container
    set_state(a, "c1", "start")
    set_state(a, "c1", "stop")
    result = wait(b, start_pull(a, b, issue(a, b, "c1"), "c1", method="rsync"))
    assert result["verified"] is True
    assert result["bytes_received"] < 192 * MiB - 64 * MiB, result  # the files it had were not resent
    for n in (0, 47):
        assert (rootfs(b, "c1") / f"root/part{n}").read_bytes() == (
            rootfs(a, "c1") / f"root/part{n}"
        ).read_bytes()
    assert leftovers(b) == []


def test_rename_a_stopped_container(pair):
    a, _, fingerprint = pair
    create(a, "c2", fingerprint)
    with pytest.raises(Conflict, match="container c2 already exists"):
        api(a).run("POST", "/1.0/containers/c1", json={"name": "c2"})
    result = api(a).run("POST", "/1.0/containers/c1", json={"name": "moved"})
    assert result["container"]["name"] == "moved"
    assert container_names(a) == ["c2", "moved"]
    set_state(a, "moved", "start")
    with pytest.raises(Conflict, match="running"):
        api(a).run("POST", "/1.0/containers/moved", json={"name": "again"})
    assert exec_(a, "moved", "hostname") is not None
    set_state(a, "moved", "stop")


def test_server_info_and_bad_requests(pair):
    a, b, _ = pair
    assert api(b).get("/1.0")["environment"]["transfer_methods"] == ["rsync", "tar"]
    bad = [
        ({"target_certificate": "not a pem"}, "not a valid PEM"),
        ({}, "target_certificate"),
        ({"target_certificate": target_certificate(b), "instance_only": "yes"}, "instance_only"),
        ({"target_certificate": target_certificate(b), "ttl": 0}, "ttl"),
    ]
    for body, message in bad:
        with pytest.raises(OrchError, match=message):
            api(a).call("POST", "/1.0/containers/c1/migration", json=body)
    migration = issue(a, b, "c1")
    for over, message in [
        ({"operation": "http://127.0.0.1:1/1.0/migrations/x"}, "invalid source.operation"),
        ({"mode": "sideways"}, "pull, push or relay"),
        ({"mode": "push"}, "source.operation is for pull mode"),  # a sink makes its own secret
        ({"certificate": "garbage"}, "not a valid PEM"),
    ]:
        with pytest.raises(OrchError, match=message):
            api(b).request("POST", "/1.0/containers", json=pull_body(a, migration, "c1", **over))
    response = api(b).session.post(
        "http://orch-agent/1.0/images",
        data=json.dumps({"source": {"type": "image"}}),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400


def test_recover_removes_leftover_staging_and_export_dirs(agents):
    a = agents("a")
    containers = a.data_dir / "containers"
    for leftover in (".creating-c1-0123abcd", ".exporting-c1-0123abcd"):
        (containers / leftover / "rootfs" / "etc").mkdir(parents=True)
    addr = a.addr
    a.kill()
    a.start(listen_addr=addr)
    assert leftovers(a) == [] and container_names(a) == []
