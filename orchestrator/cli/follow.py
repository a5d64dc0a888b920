"""Following a job until it ends: a progress bar (bytes, rate, %, ETA) on a terminal, one line otherwise."""

from __future__ import annotations

import sys
import time

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from orchapi.errors import OrchError
from orchestrator.jobs import SUCCEEDED, Job, JobStore

POLL = 0.2
NO_WORKER_HINT_AFTER = 5.0


class JobFailed(OrchError):
    """A followed job ended without success."""


def follow(store: JobStore, job_id: str) -> Job:
    """Block until the job ends; raise :class:`JobFailed` unless it succeeded."""
    started = time.monotonic()
    hinted = False
    if sys.stderr.isatty():
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=True) as progress:
            bar = progress.add_task("queued", total=None)
            while True:
                job = store.get(job_id)
                total = max(job.bytes_total, job.bytes_done) or None
                label = f"{job.step or job.status}" + (f" ({job.stage})" if job.stage else "")
                progress.update(bar, description=label, completed=job.bytes_done, total=total)
                if job.finished:
                    break
                hinted = _hint(job, started, hinted)
                time.sleep(POLL)
    else:
        while not (job := store.get(job_id)).finished:
            hinted = _hint(job, started, hinted)
            time.sleep(POLL)
    if job.status != SUCCEEDED:
        raise JobFailed(f"job {job.id} {job.status}: {job.error}")
    return job


def _hint(job: Job, started: float, hinted: bool) -> bool:
    if not hinted and job.status == "queued" and time.monotonic() - started > NO_WORKER_HINT_AFTER:
        click.echo("Waiting for a worker to pick the job up (start one with `orch worker`)...", err=True)
        return True
    return hinted
