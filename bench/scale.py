"""``bench/scale``: the orchestrator alone, at scale — many moves through the real chain, simulated agents.

A real ``redis-server`` (127.0.0.1, a free port, no persistence), W real ``orch worker --concurrency C``
processes from the venv, and one process of simulated agents (bench/simagent.py: one HTTPS port and
certificate per host, transfers that succeed at once). Jobs are submitted in this process through the
real ``orchestrator.submit.submit`` (what ``orch move --no-wait`` calls, without the CLI's start-up),
``move hK:NAME h(K+1):``, round-robin over the hosts; every job runs verify_target → issue_token →
pull_image → transfer_delta → delete_source against the simulated agents.

Per (workers, jobs) run it measures:

- jobs/s: jobs / (the last job's ``finished_ts`` − the first submit);
- Redis commands per job: ``INFO commandstats`` after − before, minus this harness's own commands
  (counted exactly: ``INFO``, the ``EXISTS`` polls for the jobs' end keys), minus the idle rate × the
  run's duration (the idle rate is measured once per worker count, with the same workers up and no jobs,
  for ``--idle`` seconds: BRPOP/BLMOVE loops, heartbeats, kombu's sweeps); the submit's own commands
  count (they are the job's). Per command too: the top ten per job;
- Redis memory per job: ``used_memory`` after − before / jobs (the records, results and keys are kept);
- latency: per job ``finished_ts − created_ts`` (submit to end, queueing included) and
  ``finished_ts − started_ts`` (first step started to end); per step, the run time Celery logs in
  "Task orch.<step>[id] succeeded in Xs" (a step's own work, not its wait in the queue);
- CPU-seconds of the workers' process trees, redis-server, the simulated agents and this harness
  (``/proc/<pid>/stat``), beside the machine's busy time and the wall time.

A short warm-up (``--warmup`` jobs, not measured) runs first for each worker count, so the runs measure
steady state rather than imports and first TLS handshakes.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import cpu, scalereport
from bench.scalelab import REPO, Redis, SimAgents, Worker

#: what ``orch move`` records as a move's options when no flag is given
MOVE_OPTIONS = {"stateless": False, "instance_only": False, "method": None}
STEP_LINE = re.compile(rb"Task orch\.(\w+)\[[0-9a-f-]+\] succeeded in ([0-9.e+-]+)s")
RETRY_LINE = re.compile(rb"Task orch\.(\w+)\[[0-9a-f-]+\] retry")
#: commands this harness sends itself and subtracts (INFO is never sent by orch, Celery or kombu)
EXCLUDED = ("info",)


def say(msg: str) -> None:
    print(msg, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@dataclass
class Row:
    """One (workers, jobs) run."""

    workers: int
    concurrency: int
    jobs: int
    succeeded: int
    failed: int
    wall: float  # first submit → last finished_ts
    submit_s: float  # time spent submitting (in this process)
    jobs_per_s: float
    cmds_per_job: float
    raw_cmds_per_job: float  # before the idle subtraction
    top_cmds: list[tuple[str, float]]
    mem_per_job: float
    keys_per_job: float
    e2e_p50: float
    e2e_p99: float
    run_p50: float
    run_p99: float
    step_p50: dict[str, float]
    step_p99: dict[str, float]
    retries: int
    cpu_workers: float
    cpu_redis: float
    cpu_sim: float
    cpu_harness: float
    cpu_machine: float
    http_per_job: float
    http_calls: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Bench:
    """One worker count's set-up (Redis + workers) and its runs."""

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        sim: SimAgents,
        hosts: list[str],
        env: dict[str, str],
        stack: ExitStack,
    ) -> None:
        self.args, self.dir, self.sim, self.hosts, self.env, self.stack = (
            args,
            workdir,
            sim,
            hosts,
            env,
            stack,
        )
        self.run_no = 0
        self.own: Counter[str] = Counter()  # commands this harness sent since the last snapshot
        self.idle_rate: dict[str, float] = {}
        self.idle_window = 0.0
        self.redis: Redis | None = None
        self.workers: list[Worker] = []

    def start(self, count: int) -> None:
        self.redis = Redis(self.dir / f"redis-w{count}")
        self.stack.callback(self.redis.stop)
        self.env["ORCH_REDIS_URL"] = os.environ["ORCH_REDIS_URL"] = self.redis.url
        for i in range(count):
            w = Worker(dict(self.env), self.dir / f"worker-w{count}-{i}.log", f"w{i}", self.args.concurrency)
            self.stack.callback(w.stop)
            self.workers.append(w)
        for w in self.workers:
            w.wait_ready()

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        if self.redis is not None:
            self.redis.stop()

    def calls(self) -> dict[str, int]:
        assert self.redis is not None
        return {k: v for k, v in self.redis.calls().items() if k not in EXCLUDED}

    def measure_idle(self, seconds: float) -> None:
        """The commands the idle workers send per second (subtracted from every run)."""
        c0, t0 = self.calls(), time.monotonic()
        time.sleep(seconds)
        c1, t1 = self.calls(), time.monotonic()
        self.idle_window = t1 - t0
        self.idle_rate = {k: (c1.get(k, 0) - c0.get(k, 0)) / self.idle_window for k in c1}
        self.idle_rate = {k: v for k, v in self.idle_rate.items() if v > 0}
        busiest = sorted(self.idle_rate.items(), key=lambda kv: -kv[1])[:6]
        text = ", ".join(f"{k} {v:.1f}" for k, v in busiest)
        say(f"   idle: {sum(self.idle_rate.values()):.1f} commands/s ({text})")

    def plan(self, count: int) -> list[tuple[str, str, str]]:
        """(source host, target host, container) for ``count`` moves, round-robin over the hosts."""
        self.run_no += 1
        n = len(self.hosts)
        return [
            (self.hosts[i % n], self.hosts[(i + 1) % n], f"r{self.run_no:02d}-c{i:05d}") for i in range(count)
        ]

    def run(self, count: int, measured: bool = True) -> Row | None:
        from orchestrator.refs import Ref
        from orchestrator.submit import submit

        assert self.redis is not None
        moves = self.plan(count)
        seeds: dict[str, list[str]] = defaultdict(list)
        for src, _dst, name in moves:
            seeds[src].append(name)
        self.sim.seed(seeds)
        r = self.redis.client
        offsets = [w.log.stat().st_size for w in self.workers]
        http0, keys0 = self.sim.stats(), r.dbsize()
        mem0 = self.redis.used_memory()
        calls0 = self.calls()
        self.own = Counter()
        cpu0 = self.cpu()
        t0, mono0 = time.time(), time.monotonic()
        ids = [
            submit("move", Ref(src, name), Ref(dst, name), dict(MOVE_OPTIONS)).id for src, dst, name in moves
        ]
        submit_s = time.monotonic() - mono0
        timed_out = not self.wait_all(ids, http0["deletes"], count)
        mono1 = time.monotonic()
        cpu1 = self.cpu()
        calls1 = self.calls()
        mem1, keys1 = self.redis.used_memory(), r.dbsize()
        http1 = self.sim.stats()
        if not measured:
            return None
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"orch:job:{job_id}", "status", "created_ts", "started_ts", "finished_ts", "error")
        records = pipe.execute()
        return self.row(
            count,
            ids,
            records,
            t0,
            submit_s,
            mono1 - mono0,
            calls0,
            calls1,
            mem1 - mem0,
            keys1 - keys0,
            cpu0,
            cpu1,
            http0,
            http1,
            offsets,
            timed_out,
        )

    def wait_all(self, ids: list[str], deletes0: int, count: int) -> bool:
        """Until every job has ended: the simulated deletes (free to read) say when to look in Redis,
        where one ``EXISTS`` over all the jobs' end keys (counted as ours) says whether all ended;
        failed jobs never delete, so Redis is also looked at every few seconds."""
        assert self.redis is not None
        ended_keys = [f"orch:job:{i}:ended" for i in ids]
        deadline = time.monotonic() + self.args.timeout + count * 0.2
        next_look = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            done = self.sim.stats()["deletes"] - deletes0 >= count
            if done or time.monotonic() >= next_look:
                self.own["exists"] += 1
                if self.redis.client.exists(*ended_keys) >= count:
                    return True
                next_look = time.monotonic() + 3.0
            time.sleep(0.05 if done else 0.1)
        say(f"   timed out waiting for {count} jobs")
        return False

    def cpu(self) -> dict[str, float]:
        assert self.redis is not None
        own = os.times()
        return {
            "workers": sum(w.cpu() for w in self.workers),
            "redis": self.redis.cpu(),
            "sim": self.sim.cpu(),
            "harness": own.user + own.system,
            "machine": cpu.busy_seconds(),
        }

    def row(
        self,
        count: int,
        ids: list[str],
        records: list[list[str | None]],
        t0: float,
        submit_s: float,
        duration: float,
        calls0: dict[str, int],
        calls1: dict[str, int],
        mem: int,
        keys: int,
        cpu0: dict[str, float],
        cpu1: dict[str, float],
        http0: dict[str, Any],
        http1: dict[str, Any],
        offsets: list[int],
        timed_out: bool,
    ) -> Row:
        ok = [rec for rec in records if rec[0] == "succeeded"]
        bad = [(i, rec) for i, rec in zip(ids, records, strict=True) if rec[0] != "succeeded"]
        errors = [f"job {i}: {rec[0]}: {rec[4]}" for i, rec in bad[:5]]
        if timed_out:
            errors.insert(0, "timed out")
        finished = [float(rec[3]) for rec in records if rec[3]]
        wall = (max(finished) - t0) if finished else duration
        e2e = [float(rec[3]) - float(rec[1]) for rec in ok]
        run = [float(rec[3]) - float(rec[2]) for rec in ok if rec[2]]
        per_cmd: dict[str, float] = {}
        raw = 0
        for name in set(calls1) | set(self.idle_rate):
            delta = calls1.get(name, 0) - calls0.get(name, 0) - self.own.get(name, 0)
            raw += delta
            per_cmd[name] = (delta - self.idle_rate.get(name, 0.0) * duration) / count
        top = sorted(per_cmd.items(), key=lambda kv: -kv[1])[:10]
        steps: dict[str, list[float]] = defaultdict(list)
        retries = 0
        for w, offset in zip(self.workers, offsets, strict=True):
            with open(w.log, "rb") as fh:
                fh.seek(offset)
                text = fh.read()
            for m in STEP_LINE.finditer(text):
                steps[m.group(1).decode()].append(float(m.group(2)))
            retries += len(RETRY_LINE.findall(text))
        calls = Counter(http1["calls"])
        calls.subtract(http0["calls"])
        http = {k: v / count for k, v in sorted(calls.items()) if v}
        if http1["unexpected"]:
            errors.append(f"calls the simulated agents do not know: {http1['unexpected']}")
        d = {k: cpu1[k] - cpu0[k] for k in cpu0}
        return Row(
            workers=len(self.workers),
            concurrency=self.args.concurrency,
            jobs=count,
            succeeded=len(ok),
            failed=count - len(ok),
            wall=wall,
            submit_s=submit_s,
            jobs_per_s=len(ok) / wall if wall else 0.0,
            cmds_per_job=sum(per_cmd.values()),
            raw_cmds_per_job=raw / count,
            top_cmds=top,
            mem_per_job=mem / count,
            keys_per_job=keys / count,
            e2e_p50=pct(e2e, 0.5),
            e2e_p99=pct(e2e, 0.99),
            run_p50=pct(run, 0.5),
            run_p99=pct(run, 0.99),
            step_p50={s: pct(v, 0.5) for s, v in steps.items()},
            step_p99={s: pct(v, 0.99) for s, v in steps.items()},
            retries=retries,
            cpu_workers=d["workers"],
            cpu_redis=d["redis"],
            cpu_sim=d["sim"],
            cpu_harness=d["harness"],
            cpu_machine=d["machine"],
            http_per_job=sum(http.values()),
            http_calls=http,
            errors=errors,
        )


def write_client_config(config_dir: Path, sim: SimAgents) -> list[str]:
    """What ``orch remote add hK https://127.0.0.1:PORT --accept-certificate`` leaves behind, through
    the same API (orchestrator/clientconfig.py): config.yml, servercerts/hK.crt; the client certificate
    exists already (made first, so the simulated agents can trust it)."""
    from orchestrator.clientconfig import ClientConfig, Remote

    config = ClientConfig(config_dir)
    for host in sim.ready["hosts"]:
        config.add(Remote(host["name"], f"https://127.0.0.1:{host['port']}"))
        config.save_server_cert(host["name"], host["cert"])
    config.save()
    return [h["name"] for h in sim.ready["hosts"]]


def parse_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", default="100,1000,10000", help="comma-separated job counts per run")
    p.add_argument("--workers", default="1,2,4,8", help="comma-separated numbers of orch worker processes")
    p.add_argument(
        "--concurrency", type=int, default=4, help="threads per worker (orch worker --concurrency)"
    )
    p.add_argument("--hosts", type=int, default=10, help="simulated hosts (moves go hK -> hK+1)")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of the idle-rate measurement")
    p.add_argument("--warmup", type=int, default=40, help="jobs run before measuring, per worker count")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds (+0.2 s per job) a run may take")
    p.add_argument("--quick", action="store_true", help="--jobs 100,1000 --workers 1,4 --idle 5")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument(
        "--markdown",
        nargs="?",
        const=str(REPO / "docs" / "benchmarks.md"),
        help="fill the 'Orchestrator at scale' section of this file (default docs/benchmarks.md)",
    )
    p.add_argument("--tmp", default=tempfile.gettempdir())
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for inspection")
    args = p.parse_args(argv)
    if args.quick:
        args.jobs, args.workers, args.idle = "100,1000", "1,4", min(args.idle, 5.0)
    jobs, workers = parse_list(args.jobs), parse_list(args.workers)
    if not jobs or not workers or min(jobs + workers) < 1 or args.hosts < 2:
        p.error("--jobs and --workers need counts >= 1, --hosts at least 2")
    stack, closed = ExitStack(), []

    def close() -> None:
        if not closed:
            closed.append(True)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stack.close()

    atexit.register(close)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    rows: list[Row] = []
    idle: dict[int, dict[str, float]] = {}
    try:
        workdir = Path(tempfile.mkdtemp(prefix="orch-scale-", dir=args.tmp))
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        env = dict(
            os.environ,
            XDG_CONFIG_HOME=str(workdir / "config"),
            ORCH_STATE_DIR=str(workdir / "state"),
            PYTHONPATH=str(REPO),
        )
        env.pop("ORCH_REDIS_URL", None)
        os.environ.update(XDG_CONFIG_HOME=env["XDG_CONFIG_HOME"], ORCH_STATE_DIR=env["ORCH_STATE_DIR"])
        from orchestrator.clientconfig import ClientConfig

        client_crt, _key = ClientConfig(workdir / "config" / "orch").client_cert()
        say(f"== {args.hosts} simulated hosts, workdir {workdir}")
        sim = SimAgents(workdir / "sim", args.hosts, client_crt, env)
        stack.callback(sim.stop)
        hosts = write_client_config(workdir / "config" / "orch", sim)
        for w in workers:
            bench = Bench(args, workdir, sim, hosts, env, stack)
            say(f"== {w} worker(s) x {args.concurrency} threads")
            bench.start(w)
            if args.warmup:
                bench.run(args.warmup, measured=False)
            bench.measure_idle(args.idle)
            idle[w] = bench.idle_rate
            for n in jobs:
                row = bench.run(n)
                assert row is not None
                rows.append(row)
                say("   " + scalereport.line(row))
                for e in row.errors:
                    say(f"   ! {e}")
            bench.stop()
    except KeyboardInterrupt:
        say("\ninterrupted; stopping everything")
        return 130
    finally:
        close()
    if not rows:
        return 1
    say("\n" + scalereport.table(rows))
    say("\n" + scalereport.top_commands(rows))
    cmd = (
        f"bench/scale --jobs {args.jobs} --workers {args.workers} --concurrency {args.concurrency} "
        f"--hosts {args.hosts} --idle {args.idle:g} --warmup {args.warmup} --markdown"
    )
    env_info = scalereport.machine()
    if args.json:
        import json

        args.json.write_text(
            json.dumps(
                {
                    "environment": env_info,
                    "command": cmd,
                    "idle_rates": idle,
                    "rows": [asdict(r) for r in rows],
                },
                indent=2,
            )
            + "\n"
        )
        say(f"wrote {args.json}")
    if args.markdown:
        from bench import stats

        path = Path(args.markdown)
        stats.write_markdown_section(
            path,
            "scale",
            scalereport.markdown(rows, idle, env_info, cmd, args),
            heading="## Orchestrator at scale (bench/scale)",
        )
        say(f"wrote {path}")
    return 0 if all(r.failed == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
