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
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from pathlib import Path

from bench import celeryfloor, cpu, scalereport, scaleresults, scaletrace
from bench.cleanup import cleanup_at_exit
from bench.scalefigures import Measures, Row, figures
from bench.scalelab import REPO, Redis, SimAgents, Worker

#: what ``orch move`` records as a move's options when no flag is given
MOVE_OPTIONS = {"stateless": False, "instance_only": False, "method": None}
#: commands this harness sends itself and subtracts (INFO is never sent by orch, Celery or kombu)
EXCLUDED = ("info",)


def say(msg: str) -> None:
    print(msg, flush=True)


class Bench:
    """One worker count's set-up (Redis + workers) and its runs."""

    runs = 0

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
        Bench.runs += 1  # names unique over every run of the invocation (the containers stay moved)
        n = len(self.hosts)
        return [
            (self.hosts[i % n], self.hosts[(i + 1) % n], f"r{Bench.runs:02d}-c{i:05d}") for i in range(count)
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
        mem0 = self.redis.memory()
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
        mem1, keys1 = self.redis.memory(), r.dbsize()
        clients = int(r.info("clients")["connected_clients"])
        http1 = self.sim.stats()
        if not measured:
            return None
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(f"orch:job:{job_id}", "status", "created_ts", "started_ts", "finished_ts", "error")
        records = pipe.execute()
        m = Measures(
            t0,
            submit_s,
            mono1 - mono0,
            calls0,
            calls1,
            (mem1[0] - mem0[0], mem1[1] - mem0[1]),
            clients,
            keys1 - keys0,
            cpu0,
            cpu1,
            http0,
            http1,
            offsets,
            timed_out,
        )
        logs = [w.log for w in self.workers]
        return figures(count, ids, records, m, logs, self.idle_rate, self.own, self.args.concurrency)

    def trace(self) -> tuple[str, dict[str, int], float]:
        """One more move under MONITOR (after the measured runs: MONITOR slows Redis down)."""
        from orchestrator.refs import Ref
        from orchestrator.submit import submit

        assert self.redis is not None
        ((src, dst, name),) = self.plan(1)
        self.sim.seed({src: [name]})
        deletes0 = self.sim.stats()["deletes"]
        monitor = scaletrace.Monitor(self.redis.port)
        monitor.start()
        t0 = time.monotonic()
        job = submit("move", Ref(src, name), Ref(dst, name), dict(MOVE_OPTIONS))
        self.wait_all([job.id], deletes0, 1)
        counts = monitor.stop()
        seconds = time.monotonic() - t0
        text = scaletrace.report(counts, seconds)
        return text, {f"{cmd} {key}".rstrip(): n for (cmd, key), n in counts.most_common()}, seconds

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


def rerender(args: argparse.Namespace) -> int:
    """The output of an earlier run from its --json file (after a change to the report, say), with the
    reproduce command and settings it recorded."""
    run = scaleresults.load(args.from_json)
    for key, value in run.get("settings", {}).items():
        setattr(args, key, value)
    say(scalereport.table(run["rows"]) + "\n\n" + scalereport.top_commands(run["rows"]))
    if args.markdown:
        scaleresults.write_markdown(Path(args.markdown), run, args)
        say(f"wrote {args.markdown}")
    return 0


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
    p.add_argument(
        "--largest-with",
        default="",
        help="run the largest --jobs count only with these worker counts (default: with all)",
    )
    p.add_argument("--quick", action="store_true", help="--jobs 100,1000 --workers 1,4 --idle 5")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument(
        "--markdown",
        nargs="?",
        const=str(REPO / "docs" / "benchmarks.md"),
        help="fill the 'Orchestrator at scale' section of this file (default docs/benchmarks.md)",
    )
    p.add_argument("--tmp", default=tempfile.gettempdir())
    p.add_argument("--no-trace", action="store_true", help="skip the one job traced with MONITOR")
    p.add_argument(
        "--from-json",
        type=Path,
        help="run nothing: print and write (--markdown) the figures of an earlier --json file again",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for inspection")
    p.add_argument("--no-floor", action="store_true", help="skip the Celery floor (bench/celeryfloor)")
    p.add_argument("--floor-chains", type=int, default=2000, help="chains the Celery floor runs")
    args = p.parse_args(argv)
    if args.from_json:
        return rerender(args)
    if args.quick:
        args.jobs, args.workers, args.idle = "100,1000", "1,4", min(args.idle, 5.0)
    jobs, workers = parse_list(args.jobs), parse_list(args.workers)
    largest_with = parse_list(args.largest_with)
    if not jobs or not workers or min(jobs + workers) < 1 or args.hosts < 2:
        p.error("--jobs and --workers need counts >= 1, --hosts at least 2")
    stack, close = cleanup_at_exit()
    rows: list[Row] = []
    trace, trace_counts, trace_seconds = "", {}, 0.0
    floor: list[dict[str, float]] = []
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
                if n == max(jobs) and largest_with and w not in largest_with and len(jobs) > 1:
                    continue
                row = bench.run(n)
                assert row is not None
                rows.append(row)
                say("   " + scalereport.line(row))
                for e in row.errors:
                    say(f"   ! {e}")
            if not args.no_trace and not trace:
                trace, trace_counts, trace_seconds = bench.trace()
            bench.stop()
        if not args.no_floor:  # Celery's own cost of the same chain, in the same run (bench/celeryfloor)
            say(f"== the Celery floor: {args.floor_chains} chains of five no-op tasks, 4 workers")
            floor = celeryfloor.floor(args.floor_chains, [4], args.concurrency)
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
        f"--hosts {args.hosts} --idle {args.idle:g} --warmup {args.warmup}"
        + (f" --largest-with {args.largest_with}" if args.largest_with else "")
        + " --markdown"
    )
    run = {
        "environment": scalereport.machine(),
        "command": cmd,
        "idle_rates": idle,
        "trace": trace_counts,
        "trace_seconds": trace_seconds,
        "settings": {k: getattr(args, k) for k in ("concurrency", "hosts", "idle", "warmup")},
        "rows": rows,
        "floor": floor,
    }
    if args.json:
        scaleresults.save(args.json, run)
        say(f"wrote {args.json}")
    if args.markdown:
        scaleresults.write_markdown(Path(args.markdown), {**run, "trace": trace_counts}, args)
        say(f"wrote {args.markdown}")
    return 0 if all(r.failed == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
