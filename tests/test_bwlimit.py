"""Bandwidth limits with real agents, a real worker and every method: a job's --bwlimit, and an agent's
total (migration.bwlimit) shared by its transfers. The rate is measured by the test from the job's own
byte counter while bytes move, not taken from the code under test."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from tests.conftest import PASSWORD
from tests.procs import ORCH

MIB = 1024 * 1024


def cluster(agents, orch_env, busybox_image, tmpdir755, fs: str = "dir", env=None, bar_env=None):  # type: ignore[no-untyped-def]
    """Agents foo and bar as remotes (``bar_env``: bar's own environment), the image bb on foo."""
    foo, bar = agents("foo", fs=fs, env=env), agents("bar", fs=fs, env=env if bar_env is None else bar_env)
    for name, agent in (("foo", foo), ("bar", bar)):
        agent.set_trust_password(PASSWORD, tmpdir755 / f"admin-{name}")
        orch_env.add_remote(name, agent)
    orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    return foo, bar


def _container(orch_env, foo, name: str, mib: int) -> None:  # type: ignore[no-untyped-def]
    orch_env.run("init", "foo:bb", f"foo:{name}")
    blob = foo.data_dir / "containers" / name / "rootfs" / "root" / "blob"
    blob.write_bytes(os.urandom(mib * MIB))
    owner = blob.parent.stat()
    os.chown(blob, owner.st_uid, owner.st_gid)


def _jobs(orch_env) -> list[dict]:  # type: ignore[no-untyped-def]
    return json.loads(orch_env.run("jobs", "--format", "json").stdout)


def _measured_rate(orch_env, run) -> tuple[float, list[dict]]:  # type: ignore[no-untyped-def]
    """Run ``run()`` (which moves data) while sampling every job's bytes; the summed rate in the steady
    part of the transfer (from the sample where 10 % of the bytes had moved to the one where 90 % had:
    the start and a bucket's burst would otherwise skew a short transfer's figure by several per cent),
    and the final job records."""
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), sum(j["bytes_done"] for j in _jobs(orch_env))))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run()
    finally:
        done.set()
        sampler.join()
    final = samples[-1][1]
    moving = [t for t, b in samples if 0 < b < final]
    assert len(moving) >= 10, samples  # seconds of transfer, sampled often
    # each value when it first appeared (the job's record changes every half second), fitted by least
    # squares: the slope is the rate, robust to the jitter of any one reading
    points = [(t, b) for i, (t, b) in enumerate(samples) if 0.1 * final <= b <= 0.9 * final
              and (i == 0 or samples[i - 1][1] != b)]  # fmt: skip
    assert len(points) >= 5, samples
    mt = sum(t for t, _ in points) / len(points)
    mb = sum(b for _, b in points) / len(points)
    slope = sum((t - mt) * (b - mb) for t, b in points) / sum((t - mt) ** 2 for t, _ in points)
    return slope, _jobs(orch_env)


@pytest.mark.parametrize(
    ("method", "fs", "env"),
    [
        ("rsync", "dir", None),
        ("tar", "dir", {"ORCH_AGENT_DATA_LINK": "off"}),  # the websocket path
        ("btrfs", "btrfs", None),
    ],
)
def test_a_jobs_bwlimit_holds_for_every_method(agents, orch_env, busybox_image, tmpdir755, start_worker,
                                               method, fs, env):  # fmt: skip
    foo, _ = cluster(agents, orch_env, busybox_image, tmpdir755, fs, env)
    start_worker("w1")
    _container(orch_env, foo, "c1", 20)
    rate, jobs = _measured_rate(
        orch_env, lambda: orch_env.run("copy", "foo:c1", "bar:", "--bwlimit", "2MiB", "--method", method)
    )
    assert jobs[0]["status"] == "succeeded" and jobs[0]["method"] == method, jobs[0]
    assert jobs[0]["bytes_done"] >= 20 * MIB
    print(f"{method} under --bwlimit 2MiB: {rate / MIB:.2f} MiB/s")
    assert 0.9 * 2 * MIB <= rate <= 1.1 * 2 * MIB, f"{method}: {rate / MIB:.2f} MiB/s"


def test_an_agents_total_is_shared_by_its_parallel_transfers(agents, orch_env, busybox_image, tmpdir755,
                                                             start_worker):  # fmt: skip
    foo, _ = cluster(agents, orch_env, busybox_image, tmpdir755)
    start_worker("w1")
    orch_env.run("config", "set", "foo:", "migration.bwlimit", "3MiB")
    assert orch_env.run("config", "get", "foo:", "migration.bwlimit").stdout.strip() == "3MiB"
    for name in ("c1", "c2"):
        _container(orch_env, foo, name, 15)

    def both() -> None:
        pipes = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        moves = [
            subprocess.Popen([ORCH, "move", f"foo:{n}", "bar:"], env=orch_env.env, **pipes)
            for n in ("c1", "c2")
        ]
        for move in moves:
            assert move.wait(180) == 0, move.stderr.read() if move.stderr else ""

    rate, jobs = _measured_rate(orch_env, both)
    assert all(j["status"] == "succeeded" for j in jobs[:2]), jobs[:2]
    print(f"two moves under a 3MiB total: {rate / MIB:.2f} MiB/s together")
    assert 0.9 * 3 * MIB <= rate <= 1.1 * 3 * MIB, f"together {rate / MIB:.2f} MiB/s under a 3 MiB/s total"


def test_bad_limits_are_one_line_and_change_nothing(agents, orch_env, busybox_image, tmpdir755):
    cluster(agents, orch_env, busybox_image, tmpdir755)
    assert "is not a bandwidth" in orch_env.fails("copy", "foo:c1", "bar:", "--bwlimit", "fast")
    assert "below the least accepted" in orch_env.fails("move", "foo:c1", "bar:", "--bwlimit", "1KiB")
    assert "is not a bandwidth" in orch_env.fails("config", "set", "foo:", "migration.bwlimit", "lots")
    assert orch_env.run("config", "get", "foo:", "migration.bwlimit").stdout.strip() == ""
    assert _jobs(orch_env) == []
