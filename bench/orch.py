"""The orch half of the benchmark: ``orch move`` / ``orch copy --refresh`` between two real agents.

Same content and cases as the LXD half (``bench/lxd_ref.py``): a stopped container made from the busybox
image, filled with ``lxd_ref.fill`` (50 x 1 MiB + 500 x 4 KiB random files), moved a → b (timed) and
back (untimed); an empty one; a refresh after changing 1 % of the files; and, on the dir pool, a 1 GiB
container compared with raw rsync, sampling both agents' memory (RSS) during the move to show that they
stream rather than buffer. Wall times include the ``orch`` CLI's own start-up, as LXD's include ``lxc``'s;
``chain empty`` is the job's own duration (submitted → finished, from its record in Redis), i.e. the
chain's overhead without CLI start-up.

The agents, Redis and the worker are real processes, started with the test suite's helpers.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench import content, lxd_ref
from bench.cpu import Sample, measure
from bench.stats import (
    CHAIN_EMPTY,
    MOVE_EMPTY,
    MOVE_FULL,
    MOVE_GIB,
    ORCH,
    ORCH_PUSH,
    ORCH_RELAY,
    REFRESH,
    Result,
)
from tests.procs import AgentProcess, Orch, RedisServer, WorkerProcess

PASSWORD = "bench-password"


@dataclass
class OrchContext:
    """What ``bench/run`` hands the orch half."""

    repo: Path  # the repository root
    workdir: Path  # a 0755 scratch dir of its own, removed at exit
    image: Path  # the busybox image tarball LXD imported (scripts/build-busybox-image)
    runs: int  # samples per case
    pools: list[str]  # "dir" and/or "btrfs"
    cleanup: ExitStack  # stop/unmount callbacks; closed at exit, Ctrl-C included
    gib: bool = True  # also the 1 GiB case (dir pool)


class Controller:
    """What drives agents: a Redis, an ``orch`` client config that knows them, and a worker.

    Shared by the native half (``OrchLab``) and the LXD-backed one (``bench.orch_lxd``). Every process is
    stopped through ``cleanup``. The worker re-reads the client config, so agents may join after it started.
    """

    def __init__(self, workdir: Path, cleanup: ExitStack) -> None:
        self.dir, self.cleanup = workdir, cleanup
        self.orch = Orch(workdir / "client")

    def start_redis(self) -> None:
        redis = RedisServer(self.dir).start()
        self.cleanup.callback(redis.stop)
        self.orch.env.update({"ORCH_REDIS_URL": redis.url, "ORCH_STATE_DIR": str(self.dir / "state")})

    def add_agent(self, remote: str, agent: AgentProcess) -> None:
        """Set the agent's trust password (as its admin would) and add it as ``remote``."""
        agent.set_trust_password(PASSWORD, self.dir / f"admin-{remote}")
        self.orch.add_remote(remote, agent, PASSWORD)

    def start_worker(self) -> None:
        worker = WorkerProcess(dict(self.orch.env), self.dir / "worker.log").start()
        self.cleanup.callback(worker.stop)

    def timed(self, *args: str) -> Sample:
        return measure(self.orch.run, *args, timeout=1800)

    def timed_job(self, *args: str) -> tuple[Sample, dict]:
        """Wall time and CPU-seconds of ``orch ARGS`` (a copy or move that waits) and its job's record."""
        ran: list[str] = []
        sample = measure(lambda: ran.append(self.orch.run(*args, timeout=1800).stdout))
        out = ran[0]
        found = re.match(r"Job (\S+):", out)
        if not found:
            raise RuntimeError(f"orch {' '.join(args)}: no job id in its output: {out!r}")
        return sample, self.job(found.group(1))

    def job(self, job_id: str) -> dict:
        return json.loads(self.orch.run("jobs", "show", job_id, "--format", "json").stdout)

    def last_job(self) -> dict:
        return json.loads(self.orch.run("jobs", "--format", "json", "--limit", "1").stdout)[0]


class OrchLab:
    """Two agents on one pool kind, a Redis, a worker, and a client config that knows both agents."""

    def __init__(self, ctx: OrchContext, pool: str) -> None:
        self.ctx, self.pool = ctx, pool
        self.dir = ctx.workdir / pool
        self.dir.mkdir(mode=0o755)
        self.ctl = Controller(self.dir, ctx.cleanup)
        self.orch = self.ctl.orch
        self.agents: dict[str, AgentProcess] = {}

    def start(self) -> None:
        ctx = self.ctx
        for name in ("a", "b"):
            data = self.dir / name
            data.mkdir(mode=0o755)
            if self.pool == "btrfs":
                _mount_btrfs(data, self.dir / f"{name}.img", ctx.cleanup)
            agent = AgentProcess(data, name).start()
            ctx.cleanup.callback(agent.stop, kill_containers=True)
            self.agents[name] = agent
        self.ctl.start_redis()
        for name, agent in self.agents.items():
            self.ctl.add_agent(name, agent)
        self.orch.run("image", "import", str(ctx.image), "a:", "--alias", "bb")
        self.orch.run("image", "import", str(ctx.image), "b:", "--alias", "bb")
        self.ctl.start_worker()

    def rootfs(self, agent: str, name: str) -> Path:
        return self.agents[agent].data_dir / "containers" / name / "rootfs"

    def timed(self, *args: str) -> Sample:
        return self.ctl.timed(*args)

    def last_job(self) -> dict:
        return self.ctl.last_job()


def _mount_btrfs(mountpoint: Path, image: Path, cleanup: ExitStack) -> None:
    subprocess.run(["truncate", "-s", "4G", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    mountpoint.chmod(0o755)
    cleanup.callback(subprocess.run, ["umount", "-l", str(mountpoint)], check=False)


MODE_TOOLS = {"push": ORCH_PUSH, "relay": ORCH_RELAY}


def _measure_move(
    lab: OrchLab, case: str, runs: int, spec: content.TreeSpec | None, mode: str | None = None
) -> list[Result]:
    """``orch move`` a → b (timed; with ``--mode MODE`` if given), then back (untimed)."""
    name = "full" if spec is content.SMALL else ("gib" if spec else "empty")
    lab.orch.run("init", "a:bb", f"a:{name}")
    rootfs = lab.rootfs("a", name)
    if spec is not None:
        lxd_ref.fill(rootfs, spec)
    digest = content.tree_digest(rootfs / lxd_ref.CONTENT_DIR if spec else rootfs)
    args = ["move", f"a:{name}", "b:", *(["--mode", mode] if mode else [])]
    tool = MODE_TOOLS[mode] if mode else ORCH
    result = Result(case, lab.pool, tool, command="orch " + " ".join(args), bytes=lxd_ref.tree_bytes(rootfs))
    chain = Result(CHAIN_EMPTY, lab.pool, ORCH, command="job duration of orch move a:empty b:")
    for _ in range(runs):
        subprocess.run(["sync"], check=True)
        result.add(lab.timed(*args))
        chain.samples.append(lab.last_job()["duration"])
        moved = lab.rootfs("b", name)
        if content.tree_digest(moved / lxd_ref.CONTENT_DIR if spec else moved) != digest:
            raise RuntimeError(f"orch move {name} on {lab.pool}: target tree differs from the source")
        lab.orch.run("move", f"b:{name}", "a:")
    lab.orch.run("delete", f"a:{name}")
    return [result, chain] if spec is None else [result]


def _measure_refresh(lab: OrchLab, runs: int) -> Result:
    lab.orch.run("init", "a:bb", "a:refresh")
    payload = lxd_ref.fill(lab.rootfs("a", "refresh"))
    lab.orch.run("copy", "a:refresh", "b:")
    result = Result(REFRESH, lab.pool, ORCH, command="orch copy a:refresh b: --refresh")
    for i in range(runs):
        content.change_fraction(payload, 0.01, seed=i + 1)
        subprocess.run(["sync"], check=True)
        result.add(lab.timed("copy", "a:refresh", "b:", "--refresh"))
    if content.tree_digest(lab.rootfs("b", "refresh") / lxd_ref.CONTENT_DIR) != content.tree_digest(payload):
        raise RuntimeError(f"orch copy --refresh on {lab.pool}: target differs from the source")
    lab.orch.run("delete", "a:refresh", "b:refresh")
    return result


class RssSampler:
    """Peak resident memory of some processes, sampled every 50 ms in a thread."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = self.base = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for pid in self.pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure_orch(ctx: OrchContext) -> list[Result]:
    """Every orch case on every pool in ``ctx``."""
    results: list[Result] = []
    for pool in ctx.pools:
        lab = OrchLab(ctx, pool)
        lab.start()
        results += _measure_move(lab, MOVE_FULL, ctx.runs, content.SMALL)
        if pool == "dir":  # the other transfer modes beside pull, on the same tree
            results += _measure_move(lab, MOVE_FULL, ctx.runs, content.SMALL, "push")
            results += _measure_move(lab, MOVE_FULL, ctx.runs, content.SMALL, "relay")
        results += _measure_move(lab, MOVE_EMPTY, ctx.runs, None)
        results.append(_measure_refresh(lab, ctx.runs))
        if pool == "dir" and ctx.gib:
            pids = [agent.proc.pid for agent in lab.agents.values() if agent.proc]
            with RssSampler(pids) as rss:
                gib = _measure_move(lab, MOVE_GIB, max(1, min(ctx.runs, 3)), content.GIB)[0]
            mib = 2**20
            gib.command += f" (agents' RSS: {rss.base / mib:.0f} MiB before, peak {rss.peak / mib:.0f} MiB)"
            gib.rss = (rss.base, rss.peak)
            results.append(gib)
    return results
