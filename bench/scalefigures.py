"""The figures of one ``bench/scale`` run, from what it read before and after itself, the job records
and the workers' logs (the arithmetic apart from the processes, so it can be read on its own).

Commands per job: the growth of ``INFO commandstats`` per command, less the harness's own commands,
less the idle rate × the run's duration, over the jobs. Step run times: Celery's own log line per
task, "Task orch.<step>[id] succeeded in Xs" (the step's work in its thread, not its wait in the queue).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEP_LINE = re.compile(rb"Task orch\.(\w+)\[[0-9a-f-]+\] succeeded in ([0-9.e+-]+)s")
RETRY_LINE = re.compile(rb"Task orch\.(\w+)\[[0-9a-f-]+\] retry")


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
    mem_per_job: float  # used_memory growth / jobs
    dataset_per_job: float  # used_memory_dataset growth / jobs
    redis_clients: int  # connected clients after the run (the workers' pools; submit's, if not closed)
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
    cmds: dict[str, float] = field(default_factory=dict)  # every command's calls per job (idle subtracted)
    errors: list[str] = field(default_factory=list)


@dataclass
class Measures:
    """What one run read before and after itself."""

    t0: float
    submit_s: float
    duration: float
    calls0: dict[str, int]
    calls1: dict[str, int]
    mem: tuple[int, int]  # growth of used_memory, used_memory_dataset
    clients: int
    keys: int
    cpu0: dict[str, float]
    cpu1: dict[str, float]
    http0: dict[str, Any]
    http1: dict[str, Any]
    offsets: list[int]
    timed_out: bool


def figures(
    count: int,
    ids: list[str],
    records: list[list[str | None]],
    m: Measures,
    logs: list[Path],
    idle_rate: dict[str, float],
    own: Counter[str],
    concurrency: int,
) -> Row:
    """The figures of one run from its job records, its before/after measures and the workers' logs."""
    t0, duration, calls0, calls1 = m.t0, m.duration, m.calls0, m.calls1
    cpu0, cpu1, http0, http1, timed_out = m.cpu0, m.cpu1, m.http0, m.http1, m.timed_out
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
    for name in set(calls1) | set(idle_rate):
        delta = calls1.get(name, 0) - calls0.get(name, 0) - own.get(name, 0)
        raw += delta
        per_cmd[name] = (delta - idle_rate.get(name, 0.0) * duration) / count
    top = sorted(per_cmd.items(), key=lambda kv: -kv[1])[:10]
    steps: dict[str, list[float]] = defaultdict(list)
    retries = 0
    for log, offset in zip(logs, m.offsets, strict=True):
        with open(log, "rb") as fh:
            fh.seek(offset)
            text = fh.read()
        for hit in STEP_LINE.finditer(text):
            steps[hit.group(1).decode()].append(float(hit.group(2)))
        retries += len(RETRY_LINE.findall(text))
    calls = Counter(http1["calls"])
    calls.subtract(http0["calls"])
    http = {k: v / count for k, v in sorted(calls.items()) if v}
    if http1["unexpected"]:
        errors.append(f"calls the simulated agents do not know: {http1['unexpected']}")
    d = {k: cpu1[k] - cpu0[k] for k in cpu0}
    return Row(
        workers=len(logs),
        concurrency=concurrency,
        jobs=count,
        succeeded=len(ok),
        failed=count - len(ok),
        wall=wall,
        submit_s=m.submit_s,
        jobs_per_s=len(ok) / wall if wall else 0.0,
        cmds_per_job=sum(per_cmd.values()),
        raw_cmds_per_job=raw / count,
        top_cmds=top,
        cmds={k: round(v, 2) for k, v in sorted(per_cmd.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.005},
        mem_per_job=m.mem[0] / count,
        dataset_per_job=m.mem[1] / count,
        redis_clients=m.clients,
        keys_per_job=m.keys / count,
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
