"""``orch copy``, ``orch move``, ``orch worker`` and ``orch flower`` (``orch jobs``: joblist.py)."""

from __future__ import annotations

from typing import Any

import click

from orchapi.errors import BadRequest, Conflict
from orchestrator.cli.completion import containers
from orchestrator.cli.context import Context, pass_ctx
from orchestrator.cli.output import human_size
from orchestrator.refs import Ref, parse, parse_container


def job_store():  # type: ignore[no-untyped-def]
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
    src = parse_container(source, ctx.config, allow_snapshot=(kind == "copy"))
    dst = _destination(ctx, src, target)
    return submit_and_follow(kind, src, dst, options, wait)


def submit_and_follow(kind: str, src: Ref, dst: Ref, options: dict[str, Any], wait: bool) -> int:
    """Record the job, hand it to the workers, and (``wait``) follow it to its end."""
    from orchestrator.cli.follow import JobFailed, follow
    from orchestrator.submit import submit

    # no request to any agent here (a running source, a missing target...): verify_target checks it all
    # within milliseconds of the hand-off, and the job's one-line error says what to do
    job = submit(kind, src, dst, options)
    if not wait:
        click.echo(job.id)
        return 0
    click.echo(f"Job {job.id}: {job.kind} {job.label}")
    store = job_store()
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
    skipped = int(done.state.skipped_bytes or 0)
    resumed = f", {human_size(skipped)} resumed from an earlier attempt" if skipped else ""
    click.echo(f"Job {done.id} succeeded: {done.label} ({moved} transferred{resumed})")
    return 0


def resume_job(job_id: str, wait: bool) -> int:
    """``orch jobs resume``: the failed copy or move again, as a new job; the target resumes what the
    failed one's transfer had kept (hostagent/migration/target/resume.py)."""
    from orchestrator.jobs import FAILED

    old = job_store().get(job_id)
    if old.kind not in ("copy", "move"):
        raise BadRequest(f"job {job_id} is a {old.kind}: only copies and moves are resumed")
    if old.status != FAILED:
        hint = f"follow it: orch jobs show {job_id}" if not old.finished else ""
        raise Conflict(f"job {job_id} is {old.status}: only a failed job is resumed", hint)
    s = old.state
    src = Ref(s.source_remote, s.source_name, s.source_snapshot or "")
    dst = Ref(s.target_remote, s.target_name)
    options = {**old.options, "resumed_from": job_id}
    return submit_and_follow(old.kind, src, dst, options, wait)


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


def parse_rate_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from orchapi.rates import parse_rate

    return parse_rate(value) if value else None


bwlimit_option = click.option(
    "--bwlimit",
    metavar="RATE",
    callback=parse_rate_option,
    help="At most this bandwidth for the transfer, e.g. 50MiB (per second); the agents' own limits hold too.",
)
compress_option = click.option(
    "--compress",
    "compression",
    type=click.Choice(["auto", "zstd", "none"]),
    default="auto",
    show_default=True,
    help="Compress the streams with zstd (auto: when a bandwidth limit applies); "
    "uncompressed where an agent lacks zstd.",
)


mode_option = click.option(
    "--mode",
    type=click.Choice(["auto", "pull", "push", "relay"]),
    default="auto",
    show_default=True,
    help="Who dials whom: the target the source (pull), the source the target (push), or this side "
    "both, carrying the data (relay); auto tries them in turn when the agents cannot connect.",
)


def transfer_options(bwlimit: int | None, compression: str, mode: str = "auto") -> dict[str, object]:
    """The job options of ``--bwlimit``, ``--compress`` and ``--mode`` (the defaults are left out)."""
    options: dict[str, object] = {}
    if bwlimit:
        options["bwlimit"] = bwlimit
    if compression != "auto":
        options["compression"] = compression
    if mode != "auto":
        options["mode"] = mode
    return options


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
@mode_option
@bwlimit_option
@compress_option
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
    mode: str,
    bwlimit: int | None,
    compression: str,
    allow_privileged: bool,
    no_wait: bool,
) -> int:
    """Copy a container (or a snapshot: REMOTE:NAME/SNAP) to [REMOTE:][NAME]."""
    options = {"refresh": refresh, "instance_only": instance_only, "method": method}
    options.update(transfer_options(bwlimit, compression, mode))
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
@mode_option
@bwlimit_option
@compress_option
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
    mode: str,
    bwlimit: int | None,
    compression: str,
    allow_privileged: bool,
    no_wait: bool,
) -> int:
    """Move a container to [REMOTE:][NAME] (a rename when the remote is the same)."""
    options = {"stateless": stateless, "instance_only": instance_only, "method": method}
    options.update(transfer_options(bwlimit, compression, mode))
    if allow_privileged:
        options["allow_privileged"] = True
    return _submit_and_follow(ctx, "move", source, target, options, not no_wait)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--concurrency", "-c", default=8, show_default=True, help="Parallel tasks.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.option("--name", "-n", help="Worker name (default: orch@<hostname>).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(concurrency: int, loglevel: str, name: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker with orch's configuration (extra arguments go to `celery worker`)."""
    from orchestrator.workers.main import run_worker

    run_worker(concurrency, loglevel, name, list(celery_args))


COMMANDS = [copy, move, worker]


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
    redis_url(Settings.from_env())  # the embedded Redis, started if it is the one (the app knows its URL)
    argv = ["celery", "--app", "orchestrator.celeryapp:app", "flower",
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
