"""Redis high availability: ``ORCH_REDIS_URL=sentinel://…`` with a real primary, replica and three
sentinels on 127.0.0.1; the primary is SIGKILLed in the middle of an evacuation, which completes after
the failover with every container moved exactly once and intact."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.procs import ORCH
from tests.redislab import SentinelGroup
from tests.test_copy_move import containers, put, rootfs


@pytest.fixture
def sentinels(tmpdir755: Path):  # type: ignore[no-untyped-def]
    workdir = tmpdir755 / "redis-ha"
    workdir.mkdir()
    group = SentinelGroup(workdir).start()
    yield group
    group.stop()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_primary_killed_mid_evacuation_completes_after_failover(
    make_agent, orch, sentinels, busybox_image, tmpdir755, workers
):
    orch.env.update({"ORCH_REDIS_URL": sentinels.url, "ORCH_STATE_DIR": str(tmpdir755 / "state")})
    foo, bar, baz = make_agent("foo"), make_agent("bar"), make_agent("baz")
    for name, agent in (("foo", foo), ("bar", bar), ("baz", baz)):
        orch.add_remote(name, agent, PASSWORD)
    orch.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    names = [f"c{i}" for i in range(6)]
    sums = {}
    for name in names:
        orch.run("init", "foo:bb", f"foo:{name}")
        put(rootfs(foo, name) / "root" / "data", os.urandom(12 * 1024 * 1024))
        sums[name] = digest(rootfs(foo, name) / "root" / "data")
    w1, w2 = workers("w1"), workers("w2")
    evacuation = subprocess.Popen(
        [ORCH, "evacuate", "foo:", "--yes", "--parallel", "2", "--bwlimit", "6MB"],
        env=orch.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # some moves done, others on their way
        jobs = json.loads(orch.run("jobs", "--format", "json").stdout)
        moving = [j for j in jobs if j["status"] == "running" and j["bytes_done"]]
        if moving and any(j["status"] == "succeeded" for j in jobs):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the evacuation did not get going: {jobs}")
    promoted = sentinels.kill_primary()
    print(f"\nfailover: the replica on port {promoted} is the primary now")
    out, _ = evacuation.communicate(timeout=600)
    assert evacuation.returncode == 0, out[-3000:]
    placed = {**containers(orch, "bar"), **containers(orch, "baz")}
    assert sorted(placed) == names, placed  # every container once, on one target
    assert set(containers(orch, "bar")).isdisjoint(containers(orch, "baz"))
    assert containers(orch, "foo") == {}
    for name in names:
        host = bar if name in containers(orch, "bar") else baz
        assert digest(rootfs(host, name) / "root" / "data") == sums[name], name
    jobs = [j for j in json.loads(orch.run("jobs", "--format", "json").stdout) if j["kind"] == "move"]
    assert sorted(j["source"].split(":")[1] for j in jobs if j["status"] == "succeeded") == names
    logs = [worker.log_path.read_text() for worker in (w1, w2)]
    assert any("Connection to broker lost" in log for log in logs)  # the failover did reach the workers
    for worker, log in zip((w1, w2), logs, strict=True):
        assert worker.proc.poll() is None and "Unrecoverable error" not in log and "restarting it" not in log
