"""Following a job until it ends: a progress bar (bytes, rate, %, ETA) on a terminal, one line otherwise."""

from __future__ import annotations

import sys
import time

import click

from orchapi.errors import OrchError
from orchestrator.cli.progress import job_progress, transfer_progress
from orchestrator.jobs import FAILED, SUCCEEDED, Job, JobStore
from orchestrator.jobtext import progress_text, step_words
from orchestrator.units import human_rate

#: how often a terminal's progress bar is refreshed; the end of the job itself is noticed at once (a blocking
#: read on its "ended" list), so this is no latency
REFRESH = 0.25
#: without a terminal: how long each blocking wait lasts before the record is read again
WAIT = 2.0
NO_WORKER_HINT_AFTER = 5.0
#: without a terminal, at most one progress line this often
LINE_EVERY = 5.0
POLL_MANY = 0.25  # following many jobs: one HGETALL per job per poll


class JobFailed(OrchError):
    """A followed job ended without success."""


def follow(store: JobStore, job_id: str) -> Job:
    """Block until the job ends; raise :class:`JobFailed` unless it succeeded.

    On a terminal: a live bar whose label is the step in words, with the bytes moved, the rate measured
    since the first byte and, when the bytes that will travel are known, a percentage and ETA (else the
    bar pulses: a delta's size is not known before it is sent). Without one (logs, CI): a line every
    :data:`LINE_EVERY` seconds while something changes.
    """
    started = time.monotonic()
    hinted = False
    if sys.stderr.isatty():
        with job_progress() as progress:
            bar = progress.add_task("queued", total=None, rate="")
            while True:
                job = store.get(job_id)
                total = job.bytes_total if job.bytes_total >= job.bytes_done else None
                progress.update(bar, description=_words(job), completed=job.bytes_done, total=total or None,
                                rate=human_rate(job.rate) if job.rate else "")  # fmt: skip
                if job.finished:
                    break
                hinted = _hint(job, started, hinted)
                store.wait_end(job_id, REFRESH)
    else:
        last_line, last_time = "", time.monotonic()  # a job over in seconds prints no progress at all
        while not (job := store.get(job_id)).finished:
            hinted = _hint(job, started, hinted)
            line = f"Job {job.id}: {_words(job)}"
            if job.bytes_done:
                line += f": {progress_text(job.bytes_done, job.bytes_total, job.rate)}"
            if line != last_line and time.monotonic() - last_time >= LINE_EVERY:
                click.echo(line, err=True)
                last_line, last_time = line, time.monotonic()
            store.wait_end(job_id, WAIT)
    if job.status != SUCCEEDED:
        # the target kept what an interrupted transfer had verified: say how to go on from there
        kept = job.status == FAILED and bool(job.state.transfer_kept)
        hint = f"continue it with `orch jobs resume {job.id}`, or drop it with `orch jobs cancel {job.id}`"
        raise JobFailed(f"job {job.id} {job.status}: {job.error}", hint if kept else "")
    return job


def _words(job: Job) -> str:
    return step_words(job.step, job.stage) if job.step else job.status


def _hint(job: Job, started: float, hinted: bool) -> bool:
    if not hinted and job.status == "queued" and time.monotonic() - started > NO_WORKER_HINT_AFTER:
        click.echo("Waiting for a worker to pick the job up (start one with `orch worker`)...", err=True)
        return True
    return hinted


def follow_many(store: JobStore, jobs: dict[str, str], on_done=None) -> dict[str, Job]:  # type: ignore[no-untyped-def]
    """Follow several jobs (container → job id) until all end: one live line per running transfer and an
    overall bar (containers done / total, bytes moved / total, ETA). Returns the final records."""
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table

    from orchestrator.cli.output import human_size

    final: dict[str, Job] = {}
    overall = transfer_progress(percent=False)
    bar = overall.add_task("", total=None)
    tty = sys.stderr.isatty()

    def render(current: dict[str, Job]) -> Group:
        table = Table(box=None, show_header=True, pad_edge=False)
        for column in ("CONTAINER", "TARGET", "STEP", "MOVED", "RATE"):
            table.add_column(column)
        for name, job in current.items():
            if job.status == "running":
                moved = human_size(job.bytes_done)
                if job.bytes_total:
                    moved += f"/{human_size(job.bytes_total)}"
                table.add_row(name, job.target, _words(job), moved, human_rate(job.rate) if job.rate else "")
        return Group(table, overall)

    def poll() -> dict[str, Job]:
        current = {name: store.get(job_id) for name, job_id in jobs.items()}
        done = [n for n, j in current.items() if j.finished]
        for name in done:
            if name not in final:
                final[name] = current[name]
                if on_done:
                    on_done(name, current[name])
        total = sum(max(j.bytes_total, j.bytes_done) for j in current.values())
        moved = sum(j.bytes_done for j in current.values())
        label = f"{len(done)}/{len(jobs)} containers"
        overall.update(bar, description=label, completed=moved, total=total or None)
        return current

    if tty:
        with Live(render(poll()), refresh_per_second=4, transient=True) as live:
            while len(final) < len(jobs):
                time.sleep(POLL_MANY)
                live.update(render(poll()))
    else:
        while len(final) < len(jobs):
            poll()
            time.sleep(POLL_MANY)
    return final
