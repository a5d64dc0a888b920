"""orch between two LXD hosts: ``orch move`` per transfer method against ``lxc move``, on the same daemons.

The LXD lab of the reference half (``bench.lxd.LxdLab``: daemons a and b, image ``bb`` on both) stays up;
per pool kind, two LXD-backed agents front it (``orch-agent --runtime lxd --lxd-pool POOL`` on daemon a
and on daemon b, remotes ``la-POOL`` and ``lb-POOL``), driven by one Redis and one worker
(``bench.orch.Controller``). The containers are LXD's own: ``lxc init a:bb a:C -s POOL`` and, for the full
case, ``lxd_ref.fill`` -- the same container and content the ``lxc move`` rows moved.

For each method the pool offers (dir: rsync, lxd-migration; btrfs: btrfs, rsync, lxd-migration; tar is
left out), ``orch move la-POOL:C lb-POOL: --method M`` is timed a -> b (wall time, the ``orch`` CLI's
start-up included, as ``lxc``'s is in LXD's rows) and moved back untimed with the same method, so every
run starts from the same state. After each timed move: the job must have succeeded with method M, the
container must be in LXD b's list and gone from a's, and its tree must hash like the source's. Each
method is its own tool (``orch-lxd/M``) with LXD's case names, so the tables set it beside ``lxc move``
of the same pool and case. The job's own time (``finished_ts - started_ts``: no CLI start-up, no queue)
and ``bytes_done`` are kept as well (``JobStat``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from bench import content, lxd_ref
from bench.lxd import BTRFS_POOL, DIR_POOL, LxdLab
from bench.orch import Controller, OrchContext
from bench.stats import LXD, MOVE_EMPTY, MOVE_FULL, ORCH_LXD, RSYNC, Result, fmt_seconds, orch_lxd_tool
from tests.procs import AgentProcess

#: methods timed per pool kind (an LXD-backed agent offers tar too; it is left out here)
METHODS = {
    DIR_POOL: ("rsync", "lxd-migration"),
    BTRFS_POOL: ("btrfs", "rsync", "lxd-migration"),
}


@dataclass
class JobStat:
    """The jobs behind one result: their own durations and bytes moved, one per timed run."""

    case: str
    pool: str
    tool: str
    seconds: list[float] = field(default_factory=list)
    bytes_done: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


class LxdAgents:
    """Two LXD-backed agents on one pool kind, one per daemon, as remotes ``la-POOL`` and ``lb-POOL``."""

    def __init__(self, ctl: Controller, lab: LxdLab, pool: str) -> None:
        self.ctl, self.lab, self.pool = ctl, lab, pool
        self.remote = {side: f"l{side}-{pool}" for side in ("a", "b")}
        self.agents: list[AgentProcess] = []

    def start(self, stack: ExitStack) -> None:
        for side, remote in self.remote.items():
            args = ("--runtime", "lxd", "--lxd-socket", str(self.lab.daemons[side].dir / "unix.socket"))
            agent = AgentProcess(self.ctl.dir / remote, remote, args=(*args, "--lxd-pool", self.pool))
            stack.callback(agent.stop)  # LXD's containers are LXD's: nothing of the agent's to kill
            agent.start()
            self.agents.append(agent)
            self.ctl.add_agent(remote, agent)

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()

    def names(self, side: str) -> set[str]:
        """Instance names LXD itself lists on daemon ``side``."""
        return {i["name"] for i in json.loads(self.lab.lxc("list", f"{side}:", "--format", "json"))}


def _measure_move(
    agents: LxdAgents, method: str, case: str, runs: int, with_content: bool
) -> tuple[Result, JobStat]:
    lab, ctl, pool = agents.lab, agents.ctl, agents.pool
    tool = orch_lxd_tool(method)
    name = f"orch-{'full' if with_content else 'empty'}-{pool}-{method}"
    rootfs = lab.create("a", name, pool)
    digest = content.tree_digest(lxd_ref.fill(rootfs) if with_content else rootfs)
    there, back = f"{agents.remote['a']}:{name}", f"{agents.remote['b']}:{name}"
    result = Result(
        case,
        pool,
        tool,
        command=f"orch move {there} {agents.remote['b']}: --method {method}",
        bytes=lxd_ref.tree_bytes(rootfs),
    )
    jobs = JobStat(case, pool, tool)
    try:
        for _ in range(runs):
            subprocess.run(["sync"], check=True)  # untimed, as before LXD's timed moves
            wall, job = ctl.timed_job("move", there, f"{agents.remote['b']}:", "--method", method)
            _check_moved(agents, name, job, method, with_content, digest)
            result.add(wall)
            jobs.seconds.append(job["finished_ts"] - job["started_ts"])
            jobs.bytes_done.append(int(job["bytes_done"]))
            ctl.orch.run("move", back, f"{agents.remote['a']}:", "--method", method, timeout=1800)
            if name not in agents.names("a"):
                raise RuntimeError(f"orch move {back} {agents.remote['a']}: left no {name} on LXD a")
    finally:
        lxd_ref.delete_everywhere(lab, name)
    return result, jobs


def _check_moved(
    agents: LxdAgents, name: str, job: dict, method: str, with_content: bool, digest: str
) -> None:
    """Fail loudly unless the job used ``method`` and the container now is on b only, with its content."""
    what = f"orch move {name} on {agents.pool} --method {method} (job {job.get('id')})"
    if job.get("status") != "succeeded" or job.get("method") != method:
        raise RuntimeError(f"{what}: job {job.get('status')} with method {job.get('method')!r}: {job}")
    on_a, on_b = agents.names("a"), agents.names("b")
    if name not in on_b or name in on_a:
        raise RuntimeError(f"{what}: LXD a lists {sorted(on_a)}, LXD b lists {sorted(on_b)}")
    moved = agents.lab.rootfs("b", agents.pool, name)
    if content.tree_digest(moved / lxd_ref.CONTENT_DIR if with_content else moved) != digest:
        raise RuntimeError(f"{what}: the tree on b differs from the source")


def measure_orch_lxd(
    ctx: OrchContext, lab: LxdLab, report: Callable[[Result], object] = lambda r: r
) -> tuple[list[Result], list[JobStat]]:
    """Every method on every pool in ``ctx.pools``; ``lab`` is started and has ``bb`` on a and b.

    ``report`` sees each result as soon as it is measured. Redis, the worker and the agents are stopped
    before this returns (on an error too; at exit through ``ctx.cleanup`` if something got past that),
    so the caller can stop the LXD lab right after.
    """
    results: list[Result] = []
    jobs: list[JobStat] = []
    with ExitStack() as stack:
        ctx.cleanup.callback(stack.close)  # a no-op once the ``with`` has closed it
        ctl = Controller(ctx.workdir, stack)
        ctl.start_redis()
        ctl.start_worker()
        for pool in ctx.pools:
            agents = LxdAgents(ctl, lab, pool)
            agents.start(stack)
            for method in METHODS[pool]:
                for case, with_content in ((MOVE_FULL, True), (MOVE_EMPTY, False)):
                    result, job = _measure_move(agents, method, case, ctx.runs, with_content)
                    report(result)
                    results.append(result)
                    jobs.append(job)
            agents.stop()  # before the next pool's pair: one pair per daemon at a time
    return results, jobs


def comparison(results: list[Result], pools: list[str]) -> tuple[list[Result], tuple[str, ...]]:
    """The rows of the "orch between LXD hosts" table, by pool then case, ``lxc move`` first, and their tools.

    The rsync rows follow (not shown: ``rows`` looks them up for the "vs rsync" column).
    """
    cases = (MOVE_FULL, MOVE_EMPTY)
    shown = [r for r in results if r.pool in pools and r.case in cases and (r.tool == LXD or _is_orch_lxd(r))]
    shown.sort(key=lambda r: (pools.index(r.pool), cases.index(r.case), r.tool != LXD))  # stable otherwise
    tools = tuple(dict.fromkeys(r.tool for r in shown))
    return shown + [r for r in results if r.tool == RSYNC], tools


JOB_HEADERS = ["case", "pool", "tool", "wall", "job", "wall - job", "bytes moved"]


def job_rows(results: list[Result], jobs: list[JobStat]) -> list[list[str]]:
    """Per result: median wall time, median job time (finished - started), their gap, median bytes_done."""
    out = []
    for job in jobs:
        wall = next((r for r in results if (r.case, r.pool, r.tool) == (job.case, job.pool, job.tool)), None)
        if wall is None or not wall.samples or not job.seconds:
            continue
        moved = statistics.median(job.bytes_done)
        out.append(
            [
                job.case,
                job.pool,
                job.tool,
                fmt_seconds(wall.median),
                fmt_seconds(job.median),
                fmt_seconds(wall.median - job.median),
                f"{moved / (1 << 20):.1f} MiB",
            ]
        )
    return out


def _is_orch_lxd(r: Result) -> bool:
    return r.tool.startswith(ORCH_LXD + "/")
