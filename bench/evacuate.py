"""``orch evacuate`` throughput: N small stopped containers drained from a to b and c, per worker count.

Three real agents (a, b, c), a real Redis and W real ``orch worker --concurrency 4`` processes (the test
suite's helpers, as in ``bench/orch.py``). The busybox image is imported on every agent so each move is
pre-filled from it and only ~100 KiB of random bytes per container travels. For each W the evacuation
``orch evacuate a: --yes --parallel 4 --per-host 4`` is timed (wall time, CLI start-up included); then
every move job of that run is read back (``orch jobs --format json``) for its duration
(finished_ts - started_ts), the parallel efficiency is sum(job durations) / (wall x concurrency) with
concurrency = min(4, 4 W), and Redis cost is the growth of ``INFO commandstats`` calls per job.
``orch restore a:`` (untimed) brings everything back before the next W.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from bench import stats  # noqa: E402
from bench.cleanup import cleanup_at_exit  # noqa: E402
from tests.procs import AgentProcess, Orch, RedisServer, WorkerProcess  # noqa: E402

PASSWORD = "bench-password"
AGENTS = ("a", "b", "c")
PAYLOAD = 100 * 1024
PARALLEL = 4
PER_HOST = 4
HEADERS = ["workers", "wall s", "jobs", "mean job s", "parallel eff. %", "redis cmds/job"]


@dataclass
class Row:
    workers: int
    wall: float
    jobs: int
    mean_job: float
    efficiency: float
    cmds_per_job: float
    failed: int = 0

    def cells(self) -> list[str]:
        jobs = f"{self.jobs}" + (f" ({self.failed} failed)" if self.failed else "")
        return [str(self.workers), f"{self.wall:.2f}", jobs, f"{self.mean_job:.2f}",
                f"{self.efficiency * 100:.0f}", f"{self.cmds_per_job:.0f}"]  # fmt: skip


def say(msg: str) -> None:
    print(msg, flush=True)


class EvacLab:
    def __init__(self, workdir: Path, cleanup: ExitStack) -> None:
        self.dir, self.cleanup = workdir, cleanup
        self.orch = Orch(workdir / "client")
        self.agents: dict[str, AgentProcess] = {}
        self.redis: RedisServer | None = None

    def start(self, image: Path) -> None:
        for name in AGENTS:
            data = self.dir / name
            data.mkdir(mode=0o755)
            agent = AgentProcess(data, name).start()
            self.cleanup.callback(agent.stop, kill_containers=True)
            self.agents[name] = agent
        self.redis = RedisServer(self.dir).start()
        self.cleanup.callback(self.redis.stop)
        self.orch.env.update({"ORCH_REDIS_URL": self.redis.url, "ORCH_STATE_DIR": str(self.dir / "state")})
        for name, agent in self.agents.items():
            agent.set_trust_password(PASSWORD, self.dir / f"admin-{name}")
            self.orch.add_remote(name, agent, PASSWORD)
        for name in AGENTS:
            self.orch.run("image", "import", str(image), f"{name}:", "--alias", "bb")

    def create(self, count: int) -> None:
        for i in range(count):
            name = f"c{i:02d}"
            self.orch.run("init", "a:bb", f"a:{name}")
            root = self.agents["a"].data_dir / "containers" / name / "rootfs" / "root"
            st = root.stat()
            path = root / "payload.bin"
            path.write_bytes(os.urandom(PAYLOAD))
            os.chown(path, st.st_uid, st.st_gid)

    def redis_calls(self) -> int:
        import redis

        assert self.redis is not None
        info = redis.Redis(port=self.redis.port).info("commandstats")
        return sum(int(v["calls"]) for v in info.values())

    def move_jobs(self, since: float, until: float) -> list[dict]:
        out = self.orch.run("jobs", "--format", "json", "--limit", "500").stdout
        jobs = json.loads(out)
        return [j for j in jobs if j["kind"] == "move" and since <= (j["started_ts"] or 0) <= until]

    def measure(self, workers: int, count: int) -> Row:
        started: list[WorkerProcess] = []
        try:
            for i in range(workers):
                w = WorkerProcess(dict(self.orch.env), self.dir / f"worker-{workers}-{i}.log",
                                  name=f"bench{workers}x{i}", concurrency=4).start()  # fmt: skip
                started.append(w)
                self.cleanup.callback(w.stop)
            calls0 = self.redis_calls()
            t0 = time.time()
            wall0 = time.perf_counter()
            proc = self.orch.run("evacuate", "a:", "--yes", "--parallel", str(PARALLEL),
                                 "--per-host", str(PER_HOST), check=False, timeout=1800)  # fmt: skip
            wall = time.perf_counter() - wall0
            t1 = time.time()
            calls1 = self.redis_calls()
            if proc.returncode != 0:
                say(f"   orch evacuate exited {proc.returncode}: {proc.stderr.strip()[-3000:]}")
            jobs = self.move_jobs(t0, t1)
            done = [j for j in jobs if j["finished_ts"] and j["started_ts"]]
            durations = [j["finished_ts"] - j["started_ts"] for j in done]
            failed = [j for j in jobs if j["status"] != "succeeded"]
            for j in failed[:5]:
                say(f"   job {j['id']} {j['source']} -> {j['target']}: {j['status']}: {j['error']}")
            concurrency = min(PARALLEL, workers * 4)
            n = len(jobs)
            row = Row(workers, wall, n, sum(durations) / len(durations) if durations else 0.0,
                      sum(durations) / (wall * concurrency) if wall else 0.0,
                      (calls1 - calls0) / n if n else 0.0, len(failed))  # fmt: skip
            if n != count:
                say(f"   note: {n} move jobs found for {count} containers")
            restore = self.orch.run("restore", "a:", check=False, timeout=1800)
            if restore.returncode != 0:
                say(f"   orch restore a: exited {restore.returncode}: {restore.stderr.strip()[-3000:]}")
            left = self.orch.run("list", "a:", "--format", "json", check=False)
            if left.returncode == 0:
                try:
                    on_a = len(json.loads(left.stdout))
                    if on_a != count:
                        say(f"   note: {on_a} containers on a after restore (expected {count})")
                except ValueError:
                    pass
            return row
        finally:
            for w in started:
                w.stop()


def format_table(rows: list[Row]) -> str:
    table = [HEADERS] + [r.cells() for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows: list[Row], count: int, worker_list: str) -> str:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = (
        f"Measured {date}, kernel {platform.release()}, cpus {os.cpu_count()}: `orch evacuate a: --yes "
        f"--parallel {PARALLEL} --per-host {PER_HOST}` of {count} stopped busybox containers (each with "
        f"{PAYLOAD // 1024} KiB of random bytes; the image is on every agent, so moves are pre-filled) from "
        "a to b and c, with W `orch worker --concurrency 4` processes. Wall time includes the CLI; job "
        "durations are finished_ts - started_ts; parallel efficiency = sum(job durations) / (wall × "
        "min(4, 4W)); Redis commands per job from `INFO commandstats` around the run (CLI, workers and "
        "agents' job updates included).\n\n"
        f"Reproduce: `bench/evacuate --containers {count} --workers {worker_list} --markdown`\n\n"
    )
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return head + "\n".join(lines)


def build_image(workdir: Path) -> Path:
    image = workdir / "busybox.tar.gz"
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    subprocess.run([str(REPO / "scripts" / "build-busybox-image"), str(image)], check=True, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return image


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/evacuate", description=__doc__.split("\n\n")[0])
    p.add_argument("--containers", type=int, default=60)
    p.add_argument("--workers", default="1,2,4", help="comma-separated worker counts (default 1,2,4)")
    p.add_argument("--markdown", nargs="?", const=str(REPO / "docs" / "benchmarks.md"),
                   help="write the table into this file (default docs/benchmarks.md)")  # fmt: skip
    p.add_argument("--tmp", default="/var/tmp")
    args = p.parse_args(argv)
    workers = [int(x) for x in args.workers.split(",") if x.strip()]
    if args.containers < 1 or not workers or min(workers) < 1:
        p.error("--containers and every --workers count must be >= 1")
    if os.geteuid() != 0:
        print("bench/evacuate needs root (agents run runc containers)", file=sys.stderr)
        return 2
    cleanup, close = cleanup_at_exit()
    rows: list[Row] = []
    try:
        workdir = Path(tempfile.mkdtemp(prefix="orch-evac-", dir=args.tmp))
        workdir.chmod(0o755)
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        say(f"== setting up 3 agents, redis, {args.containers} containers in {workdir}")
        image = build_image(workdir)
        lab = EvacLab(workdir, cleanup)
        lab.start(image)
        lab.create(args.containers)
        for w in workers:
            say(f"== {w} worker(s)")
            row = lab.measure(w, args.containers)
            rows.append(row)
            say("   " + "  ".join(f"{h}={c}" for h, c in zip(HEADERS, row.cells(), strict=True)))
    except KeyboardInterrupt:
        say("\ninterrupted; cleaning up")
        return 130
    finally:
        close()
    say("\n" + format_table(rows))
    if args.markdown and rows:
        path = Path(args.markdown)
        stats.write_markdown_section(path, "evacuate", markdown(rows, args.containers, args.workers),
                                     heading="## orch evacuate: parallel efficiency")  # fmt: skip
        say(f"wrote {path}")
    return 0
