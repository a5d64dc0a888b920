"""``orch copy``, ``orch move``, ``orch jobs`` and ``orch worker``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import click

from orchapi.errors import BadRequest, Conflict, Unavailable
from orchestrator.cli.completion import containers
from orchestrator.cli.context import Context, pass_ctx
from orchestrator.cli.output import emit, format_option, human_size
from orchestrator.refs import Ref, parse, parse_container


def _store():  # type: ignore[no-untyped-def]
    from orchestrator.jobs import JobStore
    from orchestrator.redisserver import connect, redis_url
    from orchestrator.settings import Settings

    return JobStore(connect(redis_url(Settings.from_env())))


def _destination(ctx: Context, src: Ref, text: str) -> Ref:
    """``bar:`` keeps the source's name; ``c3`` means the default remote."""
    if ":" not in text and text in ctx.config.remotes:
        default = ctx.config.default_remote
        raise BadRequest(
            f"{text!r} is a remote: did you mean {text}:?",
            f"write {text}: to keep the name {src.name} there, or {default}:{text} for a container "
            f"named {text} on {default}",
        )
    dst = parse(text, ctx.config)
    if dst.snapshot:
        raise BadRequest("the target of a copy or move can't be a snapshot")
    return dst if dst.name else Ref(dst.remote, src.name)


#: the exit status of a command the operator interrupted (128 + SIGINT, as a shell reports it)
INTERRUPTED = 130


def _submit_and_follow(
    ctx: Context, kind: str, source: str, target: str, options: dict[str, Any], wait: bool
) -> int:
    from orchestrator.cli.follow import JobFailed, follow
    from orchestrator.submit import submit

    src = parse_container(source, ctx.config, allow_snapshot=(kind == "copy"))
    dst = _destination(ctx, src, target)
    # no request to any agent here (a running source, a missing target...): verify_target checks it all
    # within milliseconds of the hand-off, and the job's one-line error says what to do
    job = submit(kind, src, dst, options)
    if not wait:
        click.echo(job.id)
        return 0
    click.echo(f"Job {job.id}: {job.kind} {job.label}")
    store = _store()
    try:
        done = follow(store, job.id)
    except JobFailed:
        _forget_if_refused(store, job.id)
        raise
    except KeyboardInterrupt:  # the operator stops watching; the job is the workers', it goes on
        click.echo(
            f"\nJob {job.id} continues in the background: `orch jobs show {job.id}` to follow, "
            f"`orch jobs cancel {job.id}` to stop it",
            err=True,
        )
        return INTERRUPTED
    moved = human_size(done.bytes_done)
    click.echo(f"Job {done.id} succeeded: {done.label} ({moved} transferred)")
    return 0


def _forget_if_refused(store, job_id: str) -> None:  # type: ignore[no-untyped-def]
    """A job refused by its first check (no such source, name taken, a remote unreachable or not
    trusting us) did nothing: the one-line error is all there is to it, so no FAILED record is left."""
    from orchestrator.jobs import FAILED

    job = store.get(job_id)
    if job.status == FAILED and job.step == "verify_target" and not job.steps_done:
        store.delete(job_id)


wait_option = click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
allow_privileged_option = click.option(
    "--allow-privileged",
    is_flag=True,
    help="Let the target accept a privileged container, raw.* config or host devices for this job.",
)
method_option = click.option(
    "--method",
    type=click.Choice(["btrfs", "rsync", "tar", "lxd-migration"]),
    help="Transfer method (default: the best both agents support; lxd-migration lets LXD move the data).",
)


@click.command()
@click.argument("source", shell_complete=containers)
@click.argument("target", shell_complete=containers)
@click.option("--refresh", is_flag=True, help="Update an existing copy with only what changed.")
@click.option("--instance-only", is_flag=True, help="Copy without snapshots.")
@method_option
@allow_privileged_option
@wait_option
@pass_ctx
def copy(
    ctx: Context,
    source: str,
    target: str,
    refresh: bool,
    instance_only: bool,
    method: str | None,
    allow_privileged: bool,
    no_wait: bool,
) -> int:
    """Copy a container (or a snapshot: REMOTE:NAME/SNAP) to [REMOTE:][NAME]."""
    options = {"refresh": refresh, "instance_only": instance_only, "method": method}
    if allow_privileged:
        options["allow_privileged"] = True
    return _submit_and_follow(ctx, "copy", source, target, options, not no_wait)


@click.command()
@click.argument("source", shell_complete=containers)
@click.argument("target", shell_complete=containers)
@click.option("--stateless", is_flag=True, help="Stop a running container, move it, start it on the target.")
@click.option(
    "--instance-only", is_flag=True, help="Move without snapshots (they are deleted with the source)."
)
@method_option
@allow_privileged_option
@wait_option
@pass_ctx
def move(
    ctx: Context,
    source: str,
    target: str,
    stateless: bool,
    instance_only: bool,
    method: str | None,
    allow_privileged: bool,
    no_wait: bool,
) -> int:
    """Move a container to [REMOTE:][NAME] (a rename when the remote is the same)."""
    options = {"stateless": stateless, "instance_only": instance_only, "method": method}
    if allow_privileged:
        options["allow_privileged"] = True
    return _submit_and_follow(ctx, "move", source, target, options, not no_wait)


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


@click.group(invoke_without_command=True)
@format_option
@click.option("--limit", default=50, show_default=True, help="How many recent jobs to show.")
@click.pass_context
def jobs(click_ctx: click.Context, fmt: str, limit: int) -> None:
    """Running and recent jobs."""
    if click_ctx.invoked_subcommand is not None:
        return
    records = _store().list(limit)
    rows = [
        [
            j.id,
            j.kind,
            j.label,
            j.status.upper(),
            j.step + (f" ({j.stage})" if j.stage and not j.finished else ""),
            _progress(j),
            _age(j.created_at),
        ]
        for j in records
    ]
    emit(
        fmt,
        ["ID", "KIND", "SOURCE → TARGET", "STATUS", "STEP", "PROGRESS", "AGE"],
        rows,
        [j.public() for j in records],
    )


@jobs.command("show")
@click.argument("job_id")
@format_option
def jobs_show(job_id: str, fmt: str) -> None:
    """Details of one job."""
    job = _store().get(job_id)
    if fmt != "table":
        emit(fmt, [], [list(job.public().values())], job.public())
        return
    for key, value in job.public().items():
        click.echo(f"{key.replace('_', ' ').capitalize()}: {_readable(key, value)}")


def _readable(key: str, value: Any) -> str:
    """One field of `orch jobs show` as an operator reads it: units, no Python notation."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if key in ("bytes_done", "bytes_total"):
        return f"{human_size(int(value))} ({int(value):,} bytes)"
    if key == "rate":
        return f"{human_size(int(value))}/s"
    if key == "duration":
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
    store = _store()
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
    from orchestrator.jobs import CANCELLED, QUEUED

    store = _store()
    job = store.request_cancel(job_id)
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


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", default=8, show_default=True, help="Parallel tasks.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--name", "-n", help="Worker name (default: orch@<hostname>).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int, loglevel: str, name: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker with orch's configuration (extra arguments go to `celery worker`)."""
    from orchestrator.workers.main import run_worker

    run_worker(concurrency, loglevel, name, list(celery_args))


COMMANDS = [copy, move, jobs, worker]


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5555, show_default=True, help="Port of Flower's web UI and API.")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(port: int, address: str, flower_args: tuple[str, ...]) -> None:
    """Run Flower, the web monitor of orch's workers and tasks, on orch's broker."""
    import os
    import shutil
    import sys

    from orchestrator.redisserver import redis_url
    from orchestrator.settings import Settings

    _check_free(address, port)
    url = redis_url(Settings.from_env())
    argv = ["celery", "--app", "orchestrator.celeryapp:app", "--broker", url, "flower",
            f"--port={port}", f"--address={address}", *flower_args]  # fmt: skip
    if not any(a == "--conf" or a.startswith("--conf=") for a in flower_args):
        from orchestrator import flowerconfig

        argv.append(f"--conf={flowerconfig.__file__}")  # job labels and live progress in the task list
    beside = os.path.join(os.path.dirname(sys.executable), "celery")  # the venv's own celery first
    celery = beside if os.path.exists(beside) else shutil.which("celery")
    if celery is None:
        raise click.ClickException("celery is not installed (pip install 'orch[...]' or scripts/bootstrap)")
    os.execv(celery, argv)


def _check_free(address: str, port: int) -> None:
    """One clear line when Flower could not listen (it would print a long traceback)."""
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Tornado does
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise Conflict(
                f"Flower cannot listen on {address}:{port}: {exc.strerror or exc}",
                "is another Flower running? pick another port with --port",
            ) from None


COMMANDS.append(flower)
