"""Resume after an interrupted transfer, through the agents' API: a fault proxy on 127.0.0.1 between the
agents cuts the migration's connection mid-snapshot; the next pull sends only what was not verified yet.

Real agents, real TLS (end to end through the proxy), real rsync, tar and btrfs (loop-mounted)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import pytest

from orchapi.errors import BadRequest, NotFound
from tests.faultproxy import FaultProxy
from tests.procs import as_nobody
from tests.test_metrics import scrape, value
from tests.test_migration_api import (
    MiB,
    api,
    container_names,
    create,
    import_image,
    issue,
    leftovers,
    pull_image,
    rootfs,
    snapshot,
    start_pull,
    wait,
    write,
)

#: bytes of fresh random data each snapshot (and the current state) adds
STEP = 8 * MiB


def three_snapshots(agent) -> None:
    """c1 with s1, s2, s3, each adding STEP fresh bytes, and more since s3."""
    for n, snap in enumerate(("s1", "s2", "s3", None), 1):
        write(agent, "c1", f"root/f{n}", os.urandom(STEP))
        if snap:
            snapshot(agent, "c1", snap)


def upstream(agent) -> tuple[str, int]:
    host, port = agent.addr.rsplit(":", 1)
    return host, int(port)


def contents(agent, name: str = "c1") -> dict[tuple[str | None, int], str]:
    """The SHA-256 of every file three_snapshots wrote, in every snapshot and the rootfs."""
    out = {}
    for snap in ("s1", "s2", "s3", None):
        for n in range(1, 5):
            path = rootfs(agent, name, snap) / f"root/f{n}"
            if path.exists():
                out[(snap, n)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_same_files(a, b, name: str = "c1") -> None:
    assert contents(a) == contents(b, name) and len(contents(a)) == 10


def via(proxy: FaultProxy, migration: dict[str, Any]) -> str:
    return f"{proxy.url}/1.0/migrations/{migration['id']}"


def pull_through(a, b, proxy: FaultProxy, method: str) -> dict[str, Any]:
    """Issue a migration and pull it through the proxy; the operation as it ended."""
    migration = issue(a, b, "c1")
    op = start_pull(a, b, migration, "c1", operation=via(proxy, migration), method=method)
    return api(b).get(f"{op}/wait", params={"timeout": 120})


def cut_once(a, b, method: str = "tar") -> dict[str, Any]:
    """A pull through a proxy that cuts it in snapshot 2; the operation as it ended (a failure)."""
    proxy = FaultProxy(upstream(a), cut_after=STEP + 4 * MiB)
    try:
        first = pull_through(a, b, proxy, method)
    finally:
        proxy.stop()
    assert first["status"] == "Failure" and proxy.cut == 1, first
    return first


def wait_op(b, op: str) -> dict[str, Any]:
    return api(b).get(f"{op}/wait", params={"timeout": 120})


def suspended(b) -> list[dict[str, Any]]:
    return api(b).get("/1.0/suspended-imports", params={"recursion": 1})


@pytest.fixture
def setup(agents, busybox_image):
    def make(fs: str, **env: str):
        a = agents("a", fs=fs)
        b = agents("b", fs=fs, env={"ORCH_AGENT_DATA_LINK": "off", **env})  # every byte through the proxy
        create(a, "c1", import_image(a, busybox_image))
        three_snapshots(a)
        return a, b

    return make


@pytest.mark.parametrize(
    "fs, method", [("dir", "rsync"), ("dir", "tar"), ("btrfs", "btrfs")], ids=["rsync", "tar", "btrfs"]
)
def test_a_cut_in_snapshot_2_resumes_without_resending_snapshot_1(setup, method, fs):
    a, b = setup(fs)
    if method == "rsync":
        pull_image(a, b, issue(a, b, "c1"))  # the pre-fill rsync starts from
    proxy = FaultProxy(upstream(a), cut_after=STEP + 4 * MiB)
    try:
        first = pull_through(a, b, proxy, method)
        assert first["status"] == "Failure" and proxy.cut == 1, first
        assert first["metadata"].get("suspended") is True, (first["err"], first["metadata"])
        held = suspended(b)
        assert [(s["name"], s["method"], s["volumes_done"]) for s in held] == [("c1", method, ["s1"])]
        assert container_names(b) == []
        # nobody but root can reach what was received
        aside = b.data_dir / "containers" / ".suspended-c1"
        assert (aside.stat().st_mode & 0o077) == 0
        for path in (aside, aside / "resume.json", aside / "snapshots" / "s1" / "rootfs" / "root" / "f1"):
            seen = as_nobody(f"ls {path} || cat {path}")
            assert seen.returncode != 0 and "Permission denied" in seen.stderr, (path, seen)

        second = pull_through(a, b, proxy, method)
        assert second["status"] == "Success", second
        result = second["metadata"]
    finally:
        proxy.stop()
    assert result["verified"] is True and result["method"] == method
    assert result["resumed_volumes"] == ["s1"], result
    assert result["skipped_bytes"] >= STEP, result
    # snapshot 1 sent 0 bytes: it is not among the volumes received this time
    received = {v["volume"]: v["bytes"] for v in result["received_volumes"]}
    assert list(received) == ["snapshot s2", "snapshot s3", "rootfs"], received
    assert received["snapshot s3"] >= STEP and received["rootfs"] >= STEP, received  # their fresh bytes
    if method == "rsync":  # continued over the part of s2 the cut attempt had received (--partial)
        assert received["snapshot s2"] < STEP, received
    else:  # tar and btrfs send the interrupted volume again
        assert received["snapshot s2"] >= STEP, received
    assert proxy.carried[0] >= STEP + 4 * MiB - 64 * 1024  # the cut attempt had moved that much
    # less than a whole resend: a full copy of the same container, now, moves snapshot 1 too
    full = wait(b, start_pull(a, b, issue(a, b, "c1"), "c2", method=method))
    assert full["resumed_volumes"] == [] and len(full["received_volumes"]) == 4
    assert result["bytes_received"] < full["bytes_received"] - STEP, (result, full)
    if method != "tar":  # the resumed s2 went as a delta against the kept s1, as in a whole transfer
        whole = {v["volume"]: v["bytes"] for v in full["received_volumes"]}
        assert received["snapshot s2"] < whole["snapshot s2"] + 256 * 1024, (received, whole)
    api(b).run("DELETE", "/1.0/containers/c2")
    assert_same_files(a, b)
    assert suspended(b) == [] and leftovers(b) == []


def test_a_snapshot_changed_between_attempts_is_resent(setup):
    a, b = setup("dir")
    cut_once(a, b)
    assert [s["volumes_done"] for s in suspended(b)] == [["s1"]]
    # s1 is replaced by another snapshot of the same name (a new creation date, other content)
    api(a).run("DELETE", "/1.0/containers/c1/snapshots/s1")
    write(a, "c1", "root/f1", os.urandom(STEP))
    snapshot(a, "c1", "s1")
    second = wait_op(b, start_pull(a, b, issue(a, b, "c1"), "c1", method="tar"))
    assert second["status"] == "Success", second
    result = second["metadata"]
    assert result["resumed_volumes"] == [] and result["skipped_bytes"] == 0
    assert [v["volume"] for v in result["received_volumes"]] == [
        "snapshot s2",
        "snapshot s3",
        "snapshot s1",
        "rootfs",
    ]
    new_s1 = rootfs(a, "c1", "s1") / "root/f1"
    assert (rootfs(b, "c1", "s1") / "root/f1").read_bytes() == new_s1.read_bytes()
    assert suspended(b) == [] and leftovers(b) == []


def test_a_suspended_import_expires_at_the_next_start_and_leaves_nothing(setup):
    a, b = setup("dir")  # the periodic sweep every 600 s: only the start can collect it here
    api(b).call("PATCH", "/1.0", json={"config": {"migration.resume_ttl": "2s"}})
    cut_once(a, b)
    assert len(suspended(b)) == 1
    time.sleep(2.5)
    assert len(suspended(b)) == 1  # expired, not yet collected
    addr = b.addr
    b.kill()
    b.start(listen_addr=addr)
    assert suspended(b) == [] and leftovers(b) == [] and container_names(b) == []
    with pytest.raises(NotFound, match="no suspended import of c1"):
        api(b).call("DELETE", "/1.0/suspended-imports/c1")


def test_a_suspended_import_expires_by_the_periodic_sweep(setup):
    a, b = setup("dir", ORCH_AGENT_GC_INTERVAL="1")
    api(b).call("PATCH", "/1.0", json={"config": {"migration.resume_ttl": "2s"}})
    cut_once(a, b)
    assert len(suspended(b)) == 1
    deadline = time.monotonic() + 10
    while suspended(b):
        assert time.monotonic() < deadline, "the sweep did not remove the expired import"
        time.sleep(0.2)
    assert leftovers(b) == [] and container_names(b) == []


def test_a_cancel_keeps_only_if_it_says_it_is_an_interruption_and_a_kept_one_can_be_discarded(setup):
    a, b = setup("dir")
    cut_once(a, b)
    assert len(suspended(b)) == 1
    api(b).call("DELETE", "/1.0/suspended-imports/c1")
    assert suspended(b) == [] and leftovers(b) == []
    # a client's cancel is not an interruption: nothing is kept
    write(a, "c1", "root/big", os.urandom(128 * MiB))
    op = start_pull(a, b, issue(a, b, "c1"), "c1", method="tar")
    deadline = time.monotonic() + 30
    while api(b).get(op)["metadata"].get("bytes_received", 0) < STEP + MiB:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    api(b).call("DELETE", op)
    ended = api(b).get(f"{op}/wait", params={"timeout": 30})
    assert ended["status"] == "Cancelled", (ended, b.log_tail(4000))
    assert suspended(b) == [] and leftovers(b) == [], b.log_tail(6000)
    # a cancel that says it is an interruption (the worker's, when the other side failed) keeps it
    op = start_pull(a, b, issue(a, b, "c1"), "c1", method="tar")
    deadline = time.monotonic() + 30
    while api(b).get(op)["metadata"].get("volume", 0) < 2:  # snapshot 1 is verified and placed
        assert time.monotonic() < deadline
        time.sleep(0.02)
    api(b).call("DELETE", op, params={"resumable": "1"})
    ended = api(b).get(f"{op}/wait", params={"timeout": 30})
    assert ended["status"] == "Cancelled" and ended["metadata"]["suspended"] is True, ended
    assert [s["volumes_done"][:1] for s in suspended(b)] == [["s1"]]


def test_bad_ttl_is_refused(setup):
    _, b = setup("dir")
    for bad in ("soon", "-5m", "1w", "2.5h"):
        with pytest.raises(BadRequest, match="not a duration"):
            api(b).call("PATCH", "/1.0", json={"config": {"migration.resume_ttl": bad}})


def test_resume_turned_off_keeps_nothing(setup):
    a, b = setup("dir")
    api(b).call("PATCH", "/1.0", json={"config": {"migration.resume_ttl": "off"}})
    proxy = FaultProxy(upstream(a), cut_after=STEP + 4 * MiB)
    try:
        first = pull_through(a, b, proxy, "tar")
        assert first["status"] == "Failure" and first["metadata"].get("suspended") is False, first
        assert suspended(b) == [] and leftovers(b) == []
        second = pull_through(a, b, proxy, "tar")
    finally:
        proxy.stop()
    assert second["status"] == "Success" and second["metadata"]["resumed_volumes"] == []
    assert len(second["metadata"]["received_volumes"]) == 4


# ---------------------------------------------------------------------------------- whole jobs


def proxied(make_agent, orch_env, busybox_image, cuts: int = 1):  # type: ignore[no-untyped-def]
    """foo (with c1 of three_snapshots) and bar as remotes; the worker and bar reach foo through a
    fault proxy that cuts the first ``cuts`` big streams in snapshot 2 (foo's data port is off, so every
    byte of a transfer takes the proxy). The caller stops the proxy."""
    from tests.conftest import PASSWORD

    foo = make_agent("foo", args=("--data-listen", "off"))
    bar = make_agent("bar")
    proxy = FaultProxy(upstream(foo), cut_after=STEP + 4 * MiB, cuts=cuts)
    orch_env.run(
        "remote", "add", "foo", f"127.0.0.1:{proxy.port}", "--accept-certificate", "--password", PASSWORD
    )
    orch_env.add_remote("bar", bar)
    orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    orch_env.run("init", "foo:bb", "foo:c1")
    three_snapshots(foo)
    return foo, bar, proxy


def test_a_copy_cut_mid_snapshot_2_succeeds_by_resuming(
    make_agent, orch_env, busybox_image, start_worker, metrics_url
):
    """The worker's retry after the cut resumes: the CLI, `orch jobs show` and the metrics tell what
    was skipped."""
    foo, bar, proxy = proxied(make_agent, orch_env, busybox_image)
    try:
        start_worker("w1")
        out = orch_env.run("copy", "foo:c1", "bar:", "--method", "tar").stdout
        assert proxy.cut == 1
    finally:
        proxy.stop()
    record = json.loads(orch_env.run("jobs", "--format", "json").stdout)[0]
    assert record["status"] == "succeeded" and record["attempts"] >= 2, record
    assert record["resumed_volumes"] == ["s1"] and record["skipped_bytes"] >= STEP, record
    assert "resumed from an earlier attempt" in out, out
    shown = orch_env.run("jobs", "show", record["id"]).stdout
    assert "Resumed volumes: s1" in shown and "Skipped bytes: " in shown, shown
    assert value(scrape(metrics_url), "orch_resume_skipped_bytes_total") == record["skipped_bytes"]
    assert_same_files(foo, bar)
    assert suspended(bar) == [] and leftovers(bar) == []


def test_a_failed_job_is_resumed_later_or_its_kept_transfer_cancelled(
    make_agent, orch_env, busybox_image, start_worker
):
    """The retry budget spent (two cuts, one retry): `orch jobs resume` completes it as a new job that
    skips the snapshot the failed one verified; `orch jobs cancel` of a failed job removes what its
    target kept."""
    foo, bar, proxy = proxied(make_agent, orch_env, busybox_image, cuts=2)
    try:
        orch_env.env["ORCH_MAX_RETRIES"] = "1"
        start_worker("w1")
        sent = contents(foo)
        line = orch_env.fails("move", "foo:c1", "bar:", "--method", "tar")
        failed = json.loads(orch_env.run("jobs", "--format", "json").stdout)[0]
        assert "kept to resume it" in line and f"orch jobs resume {failed['id']}" in line, line
        assert failed["status"] == "failed" and proxy.cut == 2, failed
        # (tar sends s2 whole: the retry's cut fell in s2 again)
        assert [s["volumes_done"] for s in suspended(bar)] == [["s1"]]
        listed = json.loads(orch_env.run("list", "foo:", "--format", "json").stdout)
        assert "c1" in {c["name"] for c in listed}

        out = orch_env.run("jobs", "resume", failed["id"]).stdout
        resumed = json.loads(orch_env.run("jobs", "--format", "json").stdout)[0]
        assert resumed["id"] != failed["id"] and resumed["resumed_from"] == failed["id"], resumed
        assert resumed["status"] == "succeeded" and resumed["kind"] == "move", resumed
        assert resumed["resumed_volumes"] == ["s1"], resumed
        assert "resumed from an earlier attempt" in out
        assert contents(bar) == sent and len(sent) == 10
        assert suspended(bar) == [] and leftovers(bar) == []
        line = orch_env.fails("jobs", "resume", resumed["id"])
        assert "only a failed job is resumed" in line, line

        # cancelling a failed job removes what its target kept
        orch_env.run("copy", "bar:c1", "foo:c2", "--method", "tar")  # foo:c2 is sent from foo ...
        proxy.cuts_left = 2
        orch_env.fails("copy", "foo:c2", "bar:c3", "--method", "tar")
        again = json.loads(orch_env.run("jobs", "--format", "json").stdout)[0]
        assert again["status"] == "failed" and len(suspended(bar)) == 1, again
        out = orch_env.run("jobs", "cancel", again["id"]).stdout
        assert "kept to resume it was removed" in out, out
        assert suspended(bar) == [] and leftovers(bar) == []
        assert "keeps nothing of it to resume" in orch_env.fails("jobs", "cancel", again["id"])
    finally:
        proxy.stop()


def test_rsync_continues_a_file_the_cut_left_half_received(agents, busybox_image):
    """A single 64 MiB file cut at ~40 MiB: rsync kept the part (--partial) in the suspended staging,
    and the resumed transfer sends only the rest."""
    a = agents("a")
    b = agents("b", env={"ORCH_AGENT_DATA_LINK": "off"})
    create(a, "c1", import_image(a, busybox_image))
    pull_image(a, b, issue(a, b, "c1"))
    write(a, "c1", "root/big", os.urandom(64 * MiB))
    proxy = FaultProxy(upstream(a), cut_after=40 * MiB)
    try:
        first = pull_through(a, b, proxy, "rsync")
        assert first["status"] == "Failure" and first["metadata"]["suspended"] is True, first
        second = pull_through(a, b, proxy, "rsync")
    finally:
        proxy.stop()
    assert second["status"] == "Success", second
    assert second["metadata"]["bytes_received"] < 40 * MiB, second["metadata"]
    assert (rootfs(b, "c1") / "root/big").read_bytes() == (rootfs(a, "c1") / "root/big").read_bytes()
    assert suspended(b) == [] and leftovers(b) == []


def test_an_interrupted_refresh_keeps_the_target_whole_and_resumes(agents, busybox_image):
    """--refresh of an existing copy, cut mid-transfer: the target container is untouched (its old
    content, nothing new), the refresh is suspended beside it, and the retry resumes."""
    a = agents("a")
    b = agents("b", env={"ORCH_AGENT_DATA_LINK": "off"})
    create(a, "c1", import_image(a, busybox_image))
    write(a, "c1", "root/old", b"before\n")
    snapshot(a, "c1", "s0")
    first_copy = start_pull(a, b, issue(a, b, "c1"), "c1", method="rsync")
    assert wait(b, first_copy)["verified"] is True
    before = (rootfs(b, "c1") / "root/old").read_bytes()
    for n, snap in enumerate(("s1", "s2", None), 1):  # what the refresh brings: two snapshots and more
        write(a, "c1", f"root/new{n}", os.urandom(STEP))
        if snap:
            snapshot(a, "c1", snap)
    proxy = FaultProxy(upstream(a), cut_after=STEP + 4 * MiB)
    try:
        migration = issue(a, b, "c1")
        op = start_pull(a, b, migration, "c1", operation=via(proxy, migration), method="rsync", refresh=True)
        first = api(b).get(f"{op}/wait", params={"timeout": 120})
        assert first["status"] == "Failure" and first["metadata"]["suspended"] is True, first
        # the existing copy is whole and unchanged: its old snapshot, its old content, nothing new
        assert container_names(b) == ["c1"]
        assert (rootfs(b, "c1") / "root/old").read_bytes() == before
        assert not (rootfs(b, "c1") / "root/new1").exists()
        assert [s["volumes_done"] for s in suspended(b)] == [["s1"]]
        migration = issue(a, b, "c1")
        op = start_pull(a, b, migration, "c1", operation=via(proxy, migration), method="rsync", refresh=True)
        second = api(b).get(f"{op}/wait", params={"timeout": 120})
    finally:
        proxy.stop()
    assert second["status"] == "Success", second
    assert second["metadata"]["resumed_volumes"] == ["s1"], second["metadata"]
    for snap in ("s1", "s2", None):
        for n in (1, 2, 3):
            theirs, ours = rootfs(a, "c1", snap) / f"root/new{n}", rootfs(b, "c1", snap) / f"root/new{n}"
            assert theirs.exists() == ours.exists(), (snap, n)
            assert not ours.exists() or ours.read_bytes() == theirs.read_bytes(), (snap, n)
    assert suspended(b) == [] and leftovers(b) == []
