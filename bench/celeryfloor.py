"""``bench/celeryfloor``: what a chain of five tasks costs Celery and kombu alone, on this machine.

The same Celery app, settings, worker arguments and bootsteps as ``orch worker`` (bench/floorapp.py), a
real redis-server, W worker processes × C threads; N chains of five tasks that do nothing (the last one
INCRs a counter) are published at once and timed until the counter reaches N. What bench/scale measures
for orch's real chain, less what this measures, is what orch's steps (job records, leases, agent
requests) add: the floor no change to orch's steps can go below without fewer tasks per job.

Figures: chains/s = N / (time of the last end − first publish); Redis commands per chain
(``INFO commandstats`` growth, the idle rate of the same workers over the run subtracted); CPU-ms per
chain of the workers (supervisor-less: the Celery processes) and of redis-server; the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import stats
from bench.cleanup import cleanup_at_exit
from bench.scalelab import REPO, Proc, Redis, _wait_for
from bench.scalereport import machine

SECTION_HEADING = "## The Celery floor (bench/celeryfloor)"


def start_workers(stack: Any, workdir: Path, url: str, count: int, concurrency: int) -> list[Proc]:
    from orchestrator.workers.main import celery_argv

    env = {**os.environ, "ORCH_REDIS_URL": url, "PYTHONPATH": str(REPO)}
    workdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(count):
        argv = celery_argv(concurrency, "info", f"floor{i}", [])
        proc = Proc([sys.executable, "-m", "bench.floorapp", json.dumps(argv)], workdir / f"w{i}.log", env)
        stack.callback(proc.stop)
        procs.append(proc)
    for proc in procs:
        _wait_for("floor worker", lambda p=proc: b" ready." in p.log.read_bytes(), 60, proc)
    return procs


def measure(redis: Redis, workers: list[Proc], chains: int, idle_rate: float) -> dict[str, float]:
    from bench.floorapp import DONE, chain_of

    r = redis.client
    r.set(DONE, 0)
    calls0, cpu0, red0 = redis.calls(), sum(w.cpu() for w in workers), redis.cpu()
    t0 = time.monotonic()
    for n in range(chains):
        chain_of(n).apply_async()
    while int(r.get(DONE) or 0) < chains:
        if time.monotonic() - t0 > 60 + chains * 0.2:
            raise RuntimeError(f"only {r.get(DONE)} of {chains} chains ended")
        time.sleep(0.01)
    wall = time.monotonic() - t0
    calls1, cpu1, red1 = redis.calls(), sum(w.cpu() for w in workers), redis.cpu()
    grown = sum((Counter(calls1) - Counter(calls0)).values()) - 4  # the harness's set, get and INFOs
    return {
        "chains": chains,
        "chains_per_s": chains / wall,
        "cmds_per_chain": (grown - idle_rate * wall) / chains,
        "worker_cpu_ms": 1000 * (cpu1 - cpu0) / chains,
        "redis_cpu_ms": 1000 * (red1 - red0) / chains,
        "wall_s": wall,
    }


def idle(redis: Redis, seconds: float) -> float:
    calls0 = redis.calls()
    time.sleep(seconds)
    return (sum((Counter(redis.calls()) - Counter(calls0)).values()) - 1) / seconds


def floor(chains: int, worker_counts: list[int], concurrency: int) -> list[dict[str, float]]:
    """The floor's figures with each number of worker processes (its own Redis and temp dir)."""
    stack, close = cleanup_at_exit()
    rows = []
    try:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orch-floor-")))
        redis = Redis(workdir / "redis")
        stack.callback(redis.stop)
        os.environ["ORCH_REDIS_URL"] = redis.url  # the publishing app (bench.floorapp) reads it
        for count in worker_counts:
            workers = start_workers(stack, workdir / f"{count}", redis.url, count, concurrency)
            rate = idle(redis, 5)
            measure(redis, workers, 50, rate)  # warm-up
            row = {"workers": count, "concurrency": concurrency, **measure(redis, workers, chains, rate)}
            rows.append({**row, "idle": rate})
            print(
                f"   floor {count}×{concurrency}: {row['chains_per_s']:.1f} chains/s, "
                f"{row['cmds_per_chain']:.0f} Redis commands/chain, worker CPU {row['worker_cpu_ms']:.1f} ms"
                f"/chain, redis-server {row['redis_cpu_ms']:.2f} ms/chain",
                flush=True,
            )
            for w in workers:
                w.stop()
    finally:
        close()
        os.environ.pop("ORCH_REDIS_URL", None)
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/celeryfloor", description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=2000)
    parser.add_argument("--workers", default="1,4", help="comma-separated worker process counts")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--markdown", nargs="?", const="docs/benchmarks.md", default=None)
    args = parser.parse_args(argv)
    rows = floor(args.chains, [int(w) for w in args.workers.split(",")], args.concurrency)
    if args.markdown:
        stats.write_markdown_section(
            Path(args.markdown), "floor", report(rows, args), heading=SECTION_HEADING
        )
        print(f"wrote {args.markdown}")
    return 0


def report(rows: list[dict[str, float]], args: argparse.Namespace) -> str:
    env = machine()
    head = (
        f"Measured {env['date']} on {env['nproc']} × {env['cpu']} (Python {env['python']}): "
        f"{args.chains} chains of five no-op tasks through orch's Celery app and worker (acks late, "
        "visibility leases and their heartbeat, task events, no results), published at once.\n\n"
        f"Reproduce: `bench/celeryfloor --chains {args.chains} --workers {args.workers} "
        f"--concurrency {args.concurrency} --markdown`\n\n"
    )
    body = [
        [
            f"{int(r['workers'])}×{args.concurrency}",
            f"{r['chains_per_s']:.1f}",
            f"{r['cmds_per_chain']:.0f}",
            f"{r['worker_cpu_ms']:.1f}",
            f"{r['redis_cpu_ms']:.2f}",
            f"{r['idle']:.1f}",
            f"{r['wall_s']:.1f}",
        ]
        for r in rows
    ]
    headers = ["workers", "chains/s", "cmds/chain", "worker CPU ms/chain", "redis CPU ms/chain",
               "idle cmds/s", "wall s"]  # fmt: skip
    return head + stats.md_table(headers, body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
