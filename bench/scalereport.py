"""What ``bench/scale`` prints and writes: the table, the top Redis commands, the Markdown section with
the machine, the reproduce command and a paper estimate for a large evacuation from the measured figures.

Apart from bench/scale.py so the measuring code stays readable; nothing here touches a process.
"""

from __future__ import annotations

import datetime
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from bench.scalefigures import Row

HEADERS = [
    "workers",
    "jobs",
    "ok",
    "jobs/s",
    "cmds/job",
    "mem/job",
    "data/job",
    "e2e p50",
    "e2e p99",
    "run p50",
    "run p99",
    "CPU workers",
    "CPU redis",
    "CPU sim",
    "CPU harness",
    "CPU other",
    "wall s",
]
STEPS = ("verify_target", "issue_token", "pull_image", "transfer_delta", "delete_source")
#: the estimate's fleet: 1,000 hosts of 50 containers, 50 hosts evacuated at once
HOSTS, PER_HOST, EVACUATED = 1000, 50, 50


def cells(r: Row) -> list[str]:
    return [
        f"{r.workers}×{r.concurrency}",
        str(r.jobs),
        str(r.succeeded),
        f"{r.jobs_per_s:.1f}",
        f"{r.cmds_per_job:.0f}",
        f"{r.mem_per_job / 1024:.1f} KiB",
        f"{r.dataset_per_job / 1024:.1f} KiB",
        f"{r.e2e_p50:.2f} s",
        f"{r.e2e_p99:.2f} s",
        f"{r.run_p50 * 1000:.0f} ms",
        f"{r.run_p99 * 1000:.0f} ms",
        f"{r.cpu_workers:.1f} s",
        f"{r.cpu_redis:.1f} s",
        f"{r.cpu_sim:.1f} s",
        f"{r.cpu_harness:.1f} s",
        f"{r.cpu_machine - r.cpu_workers - r.cpu_redis - r.cpu_sim - r.cpu_harness:.1f} s",
        f"{r.wall:.1f}",
    ]


def line(r: Row) -> str:
    return "  ".join(f"{h}={c}" for h, c in zip(HEADERS, cells(r), strict=True))


def table(rows: list[Row]) -> str:
    grid = [HEADERS] + [cells(r) for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(HEADERS))]
    out = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in grid]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def top_commands(rows: list[Row]) -> str:
    out = []
    for r in rows:
        top = ", ".join(f"{name} {n:.1f}" for name, n in r.top_cmds)
        out.append(f"{r.workers}×{r.concurrency} {r.jobs} jobs: {r.cmds_per_job:.0f}/job: {top}")
    return "\n".join(out)


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def config_parse_ms(remotes: int, repeat: int = 5) -> float:
    """Milliseconds one parse of a config.yml with ``remotes`` remotes takes (``ClientConfig()``; the
    workers parse it once per change of the file: ``ClientConfig.current()``)."""
    from orchestrator.clientconfig import ClientConfig, Remote

    with tempfile.TemporaryDirectory() as d:
        config = ClientConfig(Path(d))
        for i in range(remotes):
            config.add(Remote(f"host{i:04d}", f"https://10.0.{i // 250}.{i % 250}:8443"))
        config.save()
        t0 = time.perf_counter()
        for _ in range(repeat):
            ClientConfig(Path(d))
        return (time.perf_counter() - t0) / repeat * 1000


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def estimate(rows: list[Row], hosts_here: int) -> str:
    """The paper estimate: 2,500 moves through the control plane, from the best measured row."""
    moves = EVACUATED * PER_HOST
    best = max(rows, key=lambda r: (r.jobs, r.jobs_per_s))  # the largest run's figures: closest to scale
    four = [r for r in rows if r.workers == 4 and r.jobs == best.jobs] or [best]
    ref = four[0]
    cpu_job = ref.cpu_workers / ref.jobs
    redis_job = ref.cpu_redis / ref.jobs
    wall = moves / ref.jobs_per_s if ref.jobs_per_s else float("inf")
    cores = os.cpu_count() or 1
    per_req_ms = config_parse_ms(HOSTS)
    here_ms = config_parse_ms(hosts_here)
    title = f"{HOSTS:,} hosts × {PER_HOST} containers, {EVACUATED} hosts evacuated at once"
    return f"""### Paper estimate: {title}

{moves:,} moves, from the {ref.workers}×{ref.concurrency} run of {ref.jobs:,} jobs above ({ref.jobs_per_s:.1f}
jobs/s, {ref.cmds_per_job:.0f} Redis commands and {ref.mem_per_job / 1024:.1f} KiB of Redis memory per job,
{cpu_job * 1000:.0f} ms of worker CPU and {redis_job * 1000:.1f} ms of redis-server CPU per job), with
transfers that take no time (the data plane is not in this figure):

- **Control plane time**: {moves:,} / {ref.jobs_per_s:.1f} jobs/s ≈ **{wall / 60:.1f} min** on this
  {cores}-core machine; the workers' CPU alone is {moves * cpu_job / 60:.1f} CPU-min
  ({moves * cpu_job / cores / 60:.1f} min spread over {cores} cores), so more worker *hosts* scale it
  until Redis saturates: redis-server needs {moves * redis_job:.0f} CPU-s in total, one core, i.e. about
  {1 / redis_job if redis_job else float("inf"):.0f} jobs/s at most per Redis.
- **With the fleet's config.yml** ({HOSTS:,} remotes): one parse costs {per_req_ms:.0f} ms ({here_ms:.1f} ms
  with the {hosts_here} remotes here), paid once per worker process and change of the file
  (`ClientConfig.current()`: every agent request stats the file and reuses the parsed config), so
  not per job.
- **Redis**: {moves:,} × {ref.mem_per_job / 1024:.1f} KiB ≈ **{_mib(moves * ref.mem_per_job)}** kept (job
  records with their step markers, kept until `orch jobs prune`; no Celery results) and
  **{moves * ref.cmds_per_job / 1e6:.2f} M commands**, plus the idle load of every worker (BRPOP/BLMOVE
  loops, heartbeats, kombu's sweep every second), which grows with the number of worker processes, not
  with jobs.
- **What would limit it first**:
  1. Celery itself: a chain of five tasks costs its workers and kombu what "The Celery floor" above
     says before orch's steps do anything; fewer Redis commands or more jobs per second than that
     floor need fewer tasks per job, not cheaper steps;
  2. the per-thread agent clients (one `requests.Session` per remote and timeout per thread, kept for
     the worker's life): with {HOSTS:,} remotes a 4-thread worker may hold up to {4 * 3 * HOSTS:,} TLS
     connections, past the default `ulimit -n` of 1024;
  3. a real transfer keeps a step busy for its whole duration: the follow loop
     (orchestrator/transfers/follow.py) polls every 0.5 s and writes the job each time, so commands per
     job grow with the transfer time, and throughput is bounded by threads / transfer time
     (`--parallel` and `--per-host` of the evacuation on top);
  4. Redis itself, at the rate above, and its memory if job records are never pruned (`orch jobs prune`).
"""


def growth(rows: list[Row]) -> str:
    """How commands per job change from the smallest to the largest run of the same workers."""
    four = sorted((r for r in rows if r.workers == 4), key=lambda r: r.jobs) or sorted(
        rows, key=lambda r: r.jobs
    )
    small, large = four[0], four[-1]
    if large.cmds_per_job <= small.cmds_per_job * 1.05:
        return f"per-job cost flat from {small.jobs:,} to {large.jobs:,} jobs."
    return (
        f"per-job cost **not flat**: {small.cmds_per_job:.0f} commands at {small.jobs:,} jobs, "
        f"{large.cmds_per_job:.0f} at {large.jobs:,} (the extra `get`/`pexpire`/`evalsha` are lock "
        "renewals: in a big burst a job waits long between its steps, and each step renews the job's "
        "locks once a quarter of their lease has passed)."
    )


def findings(rows: list[Row]) -> str:
    """The measured figures against the targets (≥ 200 jobs/s with 4 workers, ≤ 50 commands per job,
    flat per-job cost), and whether the machine was the limit."""
    big = max(rows, key=lambda r: (r.jobs, r.workers == 4))
    cores = os.cpu_count() or 1
    used = big.cpu_machine / (cores * big.wall) if big.wall else 0.0
    ours = big.cpu_workers + big.cpu_redis + big.cpu_sim + big.cpu_harness
    four = [r.jobs_per_s for r in rows if r.workers == 4]
    cmds = [r.cmds_per_job for r in rows]
    mems = [r.mem_per_job / 1024 for r in rows if r.jobs >= 1000]
    per_job = ours / big.jobs if big.jobs else 0.0
    return (
        "Against the targets: "
        f"**{max(four) if four else 0:.1f} jobs/s** with 4 workers (target ≥ 200); "
        f"**{min(cmds):.0f}–{max(cmds):.0f} Redis commands per job** (target ≤ 50); {growth(rows)} "
        f"Memory: {min(mems or [0]):.1f}–{max(mems or [0]):.1f} KiB per job from 1,000 "
        f"jobs on (smaller runs scatter with Redis's hash-table growth). The {big.workers}×{big.concurrency} "
        f"run of {big.jobs:,} jobs kept the machine {used * 100:.0f} % busy ({big.cpu_machine:.0f} CPU-s in "
        f"{big.wall:.0f} s on {cores} cores), {per_job * 1000:.0f} ms of CPU per job in the processes"
        f" measured ({big.cpu_workers / big.jobs * 1000:.0f} ms of it in the workers): on this box the "
        f"control plane is CPU-bound at about {cores / per_job if per_job else 0:.0f} jobs/s "
        "whatever the worker count, so more workers only add queueing "
        "(step run times grow with the threads sharing the cores). "
        "Because every job's five steps go through one FIFO queue, a burst advances in lockstep: the "
        "median job ends near the end of the burst (e2e p50 close to the wall time), not after its own "
        "~0.3 s of steps.\n"
    )


def floor_text(rows: list[Row], floor: list[dict[str, float]]) -> str:
    """Orch's chain against Celery's own cost of a five-task chain, both measured in this run."""
    if not floor:
        return ""
    f = max(floor, key=lambda r: r["workers"])
    same = [r for r in rows if r.workers == f["workers"]]
    if not same:
        return ""
    r = min(same, key=lambda x: abs(x.jobs - f["chains"]))  # the run of about the floor's size
    cpu_ms = r.cpu_workers / r.jobs * 1000
    return (
        f"**The Celery floor, same run** (bench/celeryfloor.py: orch's Celery app, settings, worker "
        f"arguments and heartbeat, {int(f['chains']):,} chains of five tasks that do nothing, "
        f"{int(f['workers'])}×{int(f['concurrency'])} workers): **{f['chains_per_s']:.1f} chains/s, "
        f"{f['cmds_per_chain']:.0f} Redis commands and {f['worker_cpu_ms']:.1f} ms of worker CPU per "
        f"chain** ({f['redis_cpu_ms']:.2f} ms of redis-server). Orch's chain of the {r.jobs:,}-job run "
        f"above: {r.jobs_per_s:.1f} jobs/s ({r.jobs_per_s / f['chains_per_s']:.2f} × the floor's rate), "
        f"{r.cmds_per_job:.0f} commands ({r.cmds_per_job - f['cmds_per_chain']:.0f} of them orch's own: "
        f"job records, run leases, locks, secrets, the hand-off) and {cpu_ms:.0f} ms of worker CPU "
        f"({cpu_ms - f['worker_cpu_ms']:.0f} ms more: what orch's steps do, {r.http_per_job:.0f} HTTPS "
        "requests to agents and the commands above per job). The targets (≤ 50 commands, ≥ 200 jobs/s "
        "with 4 workers) lie below what Celery and kombu alone take for five tasks on this machine: "
        "reaching them needs fewer tasks per job or another broker, not cheaper steps.\n"
    )


def markdown(
    rows: list[Row],
    idle: dict[int, dict[str, float]],
    env: dict[str, str],
    cmd: str,
    args: argparse.Namespace,
    trace: str = "",
    floor: list[dict[str, float]] | None = None,
) -> str:
    head = (
        f"Measured {env['date']} on {env['nproc']} × {env['cpu']} (kernel {env['kernel']}, Python "
        f"{env['python']}): the real chain (verify_target → issue_token → pull_image → transfer_delta → "
        f"delete_source) in W real `orch worker --concurrency {args.concurrency}` processes on a real "
        f"redis-server, against {args.hosts} simulated agents (bench/simagent.py: one process, one HTTPS "
        "port and P-384 certificate per host, every transfer verified at once, the image always cached on "
        "the target), jobs submitted in-process with `orchestrator.submit.submit` (what `orch move "
        "--no-wait` runs), round-robin hK → hK+1. A warm-up of "
        f"{args.warmup} jobs per worker count is not measured.\n\n"
        "jobs/s = jobs / (last `finished_ts` − first submit). cmds/job = `INFO commandstats` growth minus "
        "the harness's own commands minus the idle rate (same workers, no jobs, "
        f"{args.idle:.0f} s) × the run's duration, divided by jobs; the submit's commands are included. "
        "mem/job = `used_memory` growth / jobs (nothing pruned); data/job the same of "
        "`used_memory_dataset` (without Redis's own overhead: client buffers, the keyspace's hash tables, "
        "which double in steps, so small runs scatter). e2e = `finished_ts − created_ts` "
        "(queueing behind the burst included); run = `finished_ts − started_ts` (first step started → "
        "end, the waits between steps included). CPU = utime+stime of each process tree "
        "(`/proc/<pid>/stat`); the harness submits; CPU other = the machine's busy time (`/proc/stat`) "
        "less those: anything else running meanwhile (on a shared box it shows when a run was disturbed). "
        "The machine has 2 cores: a run whose CPU sum nears 2 × wall is CPU-bound.\n\n"
        f"Reproduce: `{cmd}`\n\n"
    )
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---:" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    steps = [
        "",
        'Step run times (Celery\'s "succeeded in", p50 / p99 ms), agent requests and Redis keys per job:',
        "",
        "| workers | jobs | " + " | ".join(STEPS) + " | HTTP/job | keys/job | retries |",
        "|" + "---|" * (len(STEPS) + 5),
    ]
    for r in rows:
        spans = [f"{r.step_p50.get(s, 0) * 1000:.1f} / {r.step_p99.get(s, 0) * 1000:.1f}" for s in STEPS]
        steps.append(
            f"| {r.workers}×{r.concurrency} | {r.jobs} | "
            + " | ".join(spans)
            + f" | {r.http_per_job:.1f} | {r.keys_per_job:.1f} | {r.retries} |"
        )
    top = [
        "",
        "Redis commands per job, the ten most frequent (idle rate subtracted; target ≤ 50 per job):",
        "",
    ]
    top += [
        f"- {r.workers}×{r.concurrency}, {r.jobs} jobs — **{r.cmds_per_job:.0f}** ({r.raw_cmds_per_job:.0f} "
        "before the idle subtraction): " + ", ".join(f"`{n}` {v:.1f}" for n, v in r.top_cmds)
        for r in rows
    ]
    idle_lines = [
        "",
        "Idle Redis load (commands/s, no jobs): "
        + "; ".join(
            f"{w} worker(s): {sum(rates.values()):.1f} ("
            + ", ".join(f"{k} {v:.1f}" for k, v in sorted(rates.items(), key=lambda kv: -kv[1])[:4])
            + ")"
            for w, rates in idle.items()
        ),
    ]
    http = [
        "",
        "Agent requests per job (the simulated agents' counters, last run): "
        + ", ".join(f"`{k}` {v:.1f}" for k, v in rows[-1].http_calls.items()),
    ]
    failures = [f"- {r.workers}×{r.concurrency} {r.jobs}: {e}" for r in rows for e in r.errors]
    failed = ["", "Problems seen:", "", *failures] if failures else []
    return "\n".join(
        [
            head,
            *lines,
            "",
            findings(rows),
            floor_text(rows, floor or []),
            *steps,
            *top,
            *idle_lines,
            *http,
            *failed,
            "",
            trace,
            "",
            estimate(rows, args.hosts),
        ]
    )
