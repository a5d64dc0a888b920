"""``orch jobs``: the job list (``--watch``: live), and ``show``, ``cancel``, ``resume``, ``prune``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click

from orchapi.errors import BadRequest, Conflict, Unavailable
from orchestrator.cli.jobs import job_store
from orchestrator.cli.output import emit, format_option, human_size
from orchestrator.jobtext import step_words
from orchestrator.units import human_rate


def _age(iso: str) -> str:
    if not iso:
        return ""
    seconds = (datetime.now(UTC) - datetime.fromisoformat(iso.replace("Z", "+00:00"))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _progress(job) -> str:  # type: ignore[no-untyped-def]
    if job.finished:  # pre-fill makes the bytes moved a small part of the size: show what moved
        return f"{human_size(job.bytes_done)} moved" if job.bytes_done else ""
    if job.bytes_total:
        pct = min(100, 100 * job.bytes_done // max(job.bytes_total, 1))
        return f"{human_size(job.bytes_done)}/{human_size(job.bytes_total)} {pct}%"
    return human_size(job.bytes_done) if job.bytes_done else ""


HEADERS = [
    "ID",
    "KIND",
    "SOURCE → TARGET",
    "STATUS",
    "STEP",
    "PROGRESS",
    "RATE",
    "ETA",
    "METHOD",
    "DURATION",
    "AGE",
]
#: how often `orch jobs --watch` redraws
WATCH_EVERY = 1.0


def _seconds(value: float) -> str:
    if value < 10:
        return f"{value:.1f}s"  # most moves are over in seconds: "0s" would say nothing
    value = int(value)
    if value >= 3600:
        return f"{value // 3600}h{value % 3600 // 60:02d}m"
    return f"{value // 60}m{value % 60:02d}s" if value >= 60 else f"{value}s"


def _row(j) -> list[str]:  # type: ignore[no-untyped-def]
    running = not j.finished
    eta = ""
    if running and j.rate and j.bytes_total > j.bytes_done:
        eta = _seconds((j.bytes_total - j.bytes_done) / j.rate)
    started = j.started_ts or j.created_ts
    duration = (j.finished_ts if j.finished else time.time()) - started if started else 0
    return [
        j.id,
        j.kind,
        j.label,
        j.status.upper(),
        step_words(j.step, j.stage) if j.step and running else (j.step or ""),
        _progress(j),
        human_rate(j.rate) if running and j.rate else "",
        eta,
        j.state.method,
        _seconds(duration) if started else "",
        _age(j.created_at),
    ]


@click.group(invoke_without_command=True)
@format_option
@click.option("--limit", default=50, show_default=True, help="How many recent jobs to show.")
@click.option("--watch", "-w", is_flag=True, help="Redraw the table every second until Ctrl-C.")
@click.pass_context
def jobs(click_ctx: click.Context, fmt: str, limit: int, watch: bool) -> int:
    """Running and recent jobs (with --watch, live)."""
    if click_ctx.invoked_subcommand is not None:
        return 0
    store = job_store()
    if not watch:
        records = store.list(limit)
        emit(fmt, HEADERS, [_row(j) for j in records], [j.public() for j in records])
        return 0
    if fmt != "table":
        raise BadRequest("--watch draws a table", "leave out --format, or use it without --watch")
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from orchestrator.cli.output import table

    def render() -> Text:
        stamp = datetime.now().strftime("%H:%M:%S")
        body = table(HEADERS, [_row(j) for j in store.list(limit)])
        return Text(f"{stamp}  orch jobs (Ctrl-C to stop)\n{body}")

    try:
        with Live(render(), console=Console(), refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(WATCH_EVERY)
                live.update(render())
    except KeyboardInterrupt:
        return 0


@jobs.command("show")
@click.argument("job_id")
@format_option
def jobs_show(job_id: str, fmt: str) -> None:
    """Details of one job."""
    job = job_store().get(job_id)
    if fmt != "table":
        emit(fmt, [], [list(job.public().values())], job.public())
        return
    for key, value in job.public().items():
        click.echo(f"{key.replace('_', ' ').capitalize()}: {_readable(key, value)}")


def _readable(key: str, value: Any) -> str:
    """One field of `orch jobs show` as an operator reads it: units, no Python notation."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if key in ("bytes_done", "bytes_total", "wire_bytes", "payload_bytes", "skipped_bytes"):
        return f"{human_size(int(value))} ({int(value):,} bytes)"
    if key == "rate":
        return f"{human_size(int(value))}/s"
    if key in ("duration", "throttled_seconds"):
        return f"{float(value):.1f} s"
    if isinstance(value, dict):
        shown = {k: v for k, v in value.items() if v not in (None, False, "")}
        return ", ".join(k if v is True else f"{k}={v}" for k, v in shown.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


@jobs.command("prune")
@click.option("--older-than", default="7d", show_default=True, metavar="AGE",
              help="Remove finished jobs that ended longer ago than this (e.g. 90m, 12h, 7d).")  # fmt: skip
def jobs_prune(older_than: str) -> None:
    """Remove the records of finished jobs (running and queued ones are never removed)."""
    seconds = _duration(older_than)
    store = job_store()
    cutoff = time.time() - seconds
    old = [j for j in store.list(limit=1_000_000) if j.finished and (j.finished_ts or j.created_ts) < cutoff]
    for job in old:
        store.delete(job.id)
    click.echo(f"Removed {len(old)} finished job(s) older than {older_than}")


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.replace(".", "", 1).isdigit():
        raise BadRequest(f"{text!r} is not an age", "use a number and s, m, h or d: 90m, 12h, 7d")
    return float(number) * units[unit]


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--wait/--no-wait", default=True, help="Wait until the job has rolled back.")
def jobs_cancel(job_id: str, wait: bool) -> None:
    """Cancel a job: its transfer stops and what it created is removed; the source is kept.

    A job no worker has started is cancelled at once; a running one rolls back first (waited for unless
    --no-wait). The exit status says whether the job ended cancelled."""
    from orchestrator import dispatch
    from orchestrator.jobs import CANCELLED, FAILED, QUEUED

    store = job_store()
    job = store.request_cancel(job_id)
    if job.status == FAILED and job.kind in ("copy", "move") and job.state.migration_id:
        _discard_kept(job)
        return
    if job.finished:
        raise Conflict(f"job {job_id} already {job.status}")
    if job.status == QUEUED and dispatch.withdraw(store.r, job_id):
        click.echo(f"Job {job_id} cancelled (it had not started)")
        return
    if not wait:
        click.echo(f"Job {job_id}: cancel requested; `orch jobs show {job_id}` to follow")
        return
    deadline = time.monotonic() + 120
    while not (job := store.get(job_id)).finished and time.monotonic() < deadline:
        store.wait_end(job_id, 1.0)
    if job.status == CANCELLED:
        click.echo(f"Job {job_id} cancelled" + (f": {job.error}" if job.error else ""))
    elif job.finished:
        raise Conflict(f"job {job_id} {job.status} before the cancel took effect")
    else:
        raise Unavailable(
            f"job {job_id} has not stopped yet (its cancel is requested)",
            f"follow it: orch jobs show {job_id}",
        )


def _discard_kept(job) -> None:  # type: ignore[no-untyped-def]
    """A failed job is over, but its target may keep what the transfer received, to be resumed: the
    cancel removes that."""
    from orchestrator.clientconfig import ClientConfig
    from orchestrator.connect import connect
    from orchestrator.suspended import discard_suspended

    remote, name = job.state.target_remote, job.state.target_name
    if discard_suspended(connect(ClientConfig(), remote), name, strict=True):
        click.echo(f"Job {job.id} had failed; the transfer {remote}: kept to resume it was removed")
        return
    raise Conflict(f"job {job.id} already failed", f"{remote}: keeps nothing of it to resume")


@jobs.command("resume")
@click.argument("job_id")
@click.option("--no-wait", is_flag=True, help="Print the new job's id and return at once.")
def jobs_resume(job_id: str, no_wait: bool) -> int:
    """Run a failed copy or move again as a new job: the target resumes what the failed transfer had
    received and verified (kept for the target's migration.resume_ttl, 24 h by default)."""
    from orchestrator.cli.jobs import resume_job

    return resume_job(job_id, not no_wait)


COMMANDS = [jobs]
