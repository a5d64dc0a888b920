"""The cost of an interruption: a copy whose connection is cut in its third snapshot, resumed vs rerun.

Two native agents on the dir pool; the target reaches the source through a fault proxy on 127.0.0.1
(tests/faultproxy.py) that resets the migration's connection once a set number of bytes went through it;
the source's data port is off, so every byte takes the proxy. The container has three snapshots and a
current state, each adding ``STEP`` of fresh random files. Each run copies it three ways, timed from the
CLI (the cut attempt and the worker's retry included):

- **uninterrupted**: no cut, the reference;
- **resumed**: the cut falls in snapshot 3; the worker's retry resumes (snapshots 1 and 2 are kept, rsync
  continues over the partial snapshot 3);
- **rerun**: the same cut with the target's ``migration.resume_ttl`` off, so the retry starts over, as
  every transfer did before resume.

Wire bytes are what the proxy carried from the source in that copy, both attempts together.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.cpu import measure
from bench.orch import PASSWORD, Controller, OrchContext
from bench.stats import fmt_seconds, md_table, text_table
from tests.faultproxy import FaultProxy
from tests.procs import AgentProcess

MiB = 1 << 20
#: fresh random bytes each snapshot (and the current state) adds, in 8 MiB files
STEP = 64 * MiB
#: where the cut falls: half way into snapshot 3 (the busybox base adds ~3 MiB to snapshot 1)
CUT_AFTER = 2 * STEP + STEP // 2
WAYS = ("uninterrupted", "resumed", "rerun")
HEADERS = ["copy", "median", "min", "max", "runs", "CPU-s", "wire MiB", "vs uninterrupted"]


@dataclass
class Way:
    name: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    wire: list[int] = field(default_factory=list)


def _fill(rootfs: Path, tag: str) -> None:
    """STEP bytes of new random files, owned as the container's root owns its rootfs."""
    owner = rootfs.stat()
    for n in range(STEP // (8 * MiB)):
        path = rootfs / "root" / f"{tag}-{n}"
        path.write_bytes(os.urandom(8 * MiB))
        os.chown(path, owner.st_uid, owner.st_gid)


def measure_resume(ctx: OrchContext, report=print) -> list[Way]:  # type: ignore[no-untyped-def]
    """Every way, ``ctx.runs`` times."""
    work = ctx.workdir / "resume"
    work.mkdir(mode=0o755)
    ctl = Controller(work, ctx.cleanup)
    agents = {}
    for name, args in (("a", ("--data-listen", "off")), ("b", ())):
        data = work / name
        data.mkdir(mode=0o755)
        agent = AgentProcess(data, name, args=args).start()
        ctx.cleanup.callback(agent.stop, kill_containers=True)
        agents[name] = agent
    host, port = agents["a"].addr.rsplit(":", 1)
    proxy = FaultProxy((host, int(port)), CUT_AFTER, cuts=0)
    ctx.cleanup.callback(proxy.stop)
    ctl.start_redis()
    ctl.orch.env["ORCH_RETRY_BASE"] = "0.2"
    agents["a"].set_trust_password(PASSWORD, work / "admin-a")
    via_proxy = f"127.0.0.1:{proxy.port}"  # the worker and the target reach a through the proxy
    ctl.orch.run("remote", "add", "a", via_proxy, "--accept-certificate", "--password", PASSWORD)
    ctl.add_agent("b", agents["b"])
    ctl.orch.run("image", "import", str(ctx.image), "a:", "--alias", "bb")
    ctl.orch.run("image", "import", str(ctx.image), "b:", "--alias", "bb")
    ctl.start_worker()
    ctl.orch.run("init", "a:bb", "a:big")
    rootfs = agents["a"].data_dir / "containers" / "big" / "rootfs"
    for snap in ("s1", "s2", "s3", None):
        _fill(rootfs, snap or "current")
        if snap:
            ctl.orch.run("snapshot", "a:big", snap)
    ways = {name: Way(name) for name in WAYS}
    for run in range(ctx.runs):
        for way in WAYS:
            ctl.orch.run("config", "set", "b:", "migration.resume_ttl", "off" if way == "rerun" else "24h")
            proxy.cuts_left = 0 if way == "uninterrupted" else 1
            before = len(proxy.carried)
            subprocess.run(["sync"], check=True)
            target = f"b:{way}-{run}"
            sample = measure(ctl.orch.run, "copy", "a:big", target, timeout=1800)
            time.sleep(1)  # the proxy counts a connection once it has closed
            job = ctl.last_job()
            if job["status"] != "succeeded" or (way != "uninterrupted" and proxy.cuts_left):
                raise RuntimeError(f"bench resume: {way} copy did not go as planned: {job}")
            if way == "resumed" and job.get("resumed_volumes") != ["s1", "s2"]:
                raise RuntimeError(f"bench resume: the retry did not resume s1 and s2: {job}")
            ways[way].wall.append(sample.wall)
            ways[way].cpu.append(sample.cpu)
            ways[way].wire.append(sum(proxy.carried[before:]))
            ctl.orch.run("delete", target)
            report(f"   resume {way:13} run {run + 1}: {fmt_seconds(sample.wall)}")
    ctl.orch.run("config", "set", "b:", "migration.resume_ttl", "24h")
    return list(ways.values())


def rows(ways: list[Way]) -> list[list[str]]:
    base = statistics.median(ways[0].wall)
    return [
        [
            w.name,
            fmt_seconds(statistics.median(w.wall)),
            fmt_seconds(min(w.wall)),
            fmt_seconds(max(w.wall)),
            str(len(w.wall)),
            f"{statistics.median(w.cpu):.2f}",
            f"{statistics.median(w.wire) / MiB:.0f}",
            f"{statistics.median(w.wall) / base:.2f}x",
        ]
        for w in ways
    ]


def saved(ways: list[Way]) -> str:
    """What resuming saved against a rerun, in words."""
    by = {w.name: w for w in ways}
    bytes_saved = statistics.median(by["rerun"].wire) - statistics.median(by["resumed"].wire)
    time_saved = statistics.median(by["rerun"].wall) - statistics.median(by["resumed"].wall)
    return (
        f"Resuming instead of rerunning saved {bytes_saved / MiB:.0f} MiB on the wire and "
        f"{fmt_seconds(time_saved)} (container: 4 x {STEP // MiB} MiB of fresh data, cut after "
        f"{CUT_AFTER // MiB} MiB, in snapshot 3)."
    )


def text(ways: list[Way]) -> str:
    return text_table(HEADERS, rows(ways)) + "\n" + saved(ways)


def markdown(ways: list[Way]) -> str:
    return md_table(HEADERS, rows(ways)) + "\n\n" + saved(ways)
