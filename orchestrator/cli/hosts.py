"""``orch hosts``, ``cordon``, ``uncordon``, ``evacuate`` and ``restore``: draining hosts for maintenance."""

from __future__ import annotations

import sys

import click

from orchapi.errors import BadRequest, OrchError
from orchestrator.cli.context import Context, pass_ctx
from orchestrator.cli.output import emit, format_option, human_size, table
from orchestrator.refs import Ref, parse_remote


def _handles():  # type: ignore[no-untyped-def]
    from orchestrator.evacuation.hosts import HostStates
    from orchestrator.jobs import JobStore
    from orchestrator.redisserver import connect, redis_url
    from orchestrator.settings import Settings

    client = connect(redis_url(Settings.from_env()))
    return client, HostStates(client), JobStore(client)


@click.command()
@format_option
@pass_ctx
def hosts(ctx: Context, fmt: str) -> None:
    """Every remote: status (online/offline/cordoned/evacuating/evacuated), containers, space, jobs."""
    from orchestrator.evacuation.runner import host_info

    _, states, store = _handles()
    infos = [host_info(ctx.config, states, store, name) for name in sorted(ctx.config.remotes)]
    rows = [
        [i.remote, i.status.upper(), i.runtime, f"{i.containers} ({i.running} running)" if i.online else "",
         human_size(i.used) if i.online else "", human_size(i.free) if i.online else "", i.jobs]
        for i in infos
    ]  # fmt: skip
    objects = [{**i.__dict__, "methods": list(i.methods)} for i in infos]
    emit(fmt, ["REMOTE", "STATUS", "RUNTIME", "CONTAINERS", "USED", "FREE", "JOBS"], rows, objects)


def _set(ctx: Context, target: str, status: str) -> None:
    from orchestrator.evacuation.hosts import mirror_quietly

    remote = parse_remote(target, ctx.config)
    _, states, _ = _handles()
    problem = mirror_quietly(states, remote, status, ctx.client(remote))
    if problem:
        click.echo(f"Warning: recorded, but the agent could not be told: {problem}", err=True)


@click.command()
@click.argument("target")
@pass_ctx
def cordon(ctx: Context, target: str) -> None:
    """Stop scheduling onto REMOTE: (no copy or move will target it)."""
    _set(ctx, target, "cordoned")


@click.command()
@click.argument("target")
@pass_ctx
def uncordon(ctx: Context, target: str) -> None:
    """Allow scheduling onto REMOTE: again."""
    _set(ctx, target, "online")


PLAN_HEADERS = [
    "CONTAINER",
    "SIZE",
    "STATE",
    "POLICY",
    "ACTION",
    "TARGET",
    "METHOD",
    "BYTES TO MOVE",
    "EST. TIME",
]


@click.command()
@click.argument("source")
@click.option(
    "--to", "to", help="Comma-separated target remotes (default: every other online, uncordoned one)."
)
@click.option("--parallel", default=4, show_default=True, help="At most this many moves at once.")
@click.option(
    "--per-host", default=2, show_default=True, help="At most this many moves per source/target host."
)
@click.option(
    "--action", type=click.Choice(["migrate", "stop", "skip"]), help="Override every container's policy."
)
@click.option("--plan", "plan_only", is_flag=True, help="Only show the plan; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Don't ask for confirmation.")
@format_option
@pass_ctx
def evacuate(
    ctx: Context, source: str, to: str | None, parallel: int, per_host: int, action: str | None,
    plan_only: bool, yes: bool, fmt: str,
) -> None:  # fmt: skip
    """Drain SOURCE: (cordon it, move its containers away, restart on the targets what ran)."""
    from orchestrator.evacuation.placement import MIGRATE, STOP, plan
    from orchestrator.evacuation.runner import (
        EvacuationRecord,
        choose_targets,
        gather_candidates,
        recent_rate,
    )

    if parallel < 1 or per_host < 1:
        raise BadRequest("--parallel and --per-host must be at least 1")
    host = parse_remote(source, ctx.config)
    wanted = [parse_remote(t.strip(), ctx.config) for t in to.split(",") if t.strip()] if to else None
    client, states, store = _handles()
    candidates, methods = gather_candidates(ctx.config, host)
    targets, skipped = choose_targets(ctx.config, states, store, host, wanted)
    placements = plan(candidates, targets, action, methods)
    rate = recent_rate(store)
    rows = [
        [p.container, human_size(p.size), p.state, p.policy, p.action.upper(), p.target or "-",
         p.method or "-", human_size(p.size) if p.action == MIGRATE else "-",
         f"{p.size / rate:.1f}s" if p.action == MIGRATE else "-" + (f" ({p.reason})" if p.reason else "")]
        for p in placements
    ]  # fmt: skip
    emit(fmt, PLAN_HEADERS, rows, [p.__dict__ for p in placements])
    for reason in skipped:
        click.echo(f"Not a target: {reason}", err=True)
    if plan_only:
        return
    if not yes:
        if not sys.stdin.isatty():
            raise BadRequest("refusing to evacuate without confirmation", "pass --yes")
        if not click.confirm(f"Evacuate {host} as planned?", default=False):
            raise BadRequest("evacuation not started")
    record = EvacuationRecord(client, host)
    options = {"parallel": parallel, "per_host": per_host, "action": action, "to": wanted}
    if not record.load():
        record.start(options, placements)
    from orchestrator.evacuation.hosts import mirror_quietly

    mirror_quietly(states, host, "evacuating", ctx.client(host))
    jobs = _submit_evacuation_jobs(ctx, host, placements, record, store, parallel, per_host)
    for p in placements:
        if p.action == STOP and p.state == "RUNNING":
            try:
                ctx.client(host).run("PUT", f"/1.0/containers/{p.container}/state", json={"action": "stop"})
                record.set_outcome(p.container, "stopped")
            except OrchError as exc:
                record.set_outcome(p.container, f"stop failed: {exc}")
        elif p.action != MIGRATE:
            record.set_outcome(p.container, p.action + (f": {p.reason}" if p.reason else ""))
    failures = _follow_and_summarize(store, jobs, record, placements)
    mirror_quietly(states, host, "evacuated" if not failures else "evacuating", ctx.client(host))
    if failures:
        raise OrchError(
            f"{failures} container(s) could not be moved; run `orch evacuate {host}:` again to retry"
        )


def _submit_evacuation_jobs(ctx, host, placements, record, store, parallel, per_host):  # type: ignore[no-untyped-def]
    """One move chain per container to migrate; jobs of an earlier run are reused (idempotent)."""
    from orchestrator.evacuation.placement import MIGRATE
    from orchestrator.submit import submit

    existing = record.jobs()
    jobs: dict[str, str] = {}
    for p in placements:
        if p.action != MIGRATE:
            continue
        previous = existing.get(p.container)
        if previous:
            try:
                job = store.get(previous)
                if not job.finished or job.status == "succeeded":
                    jobs[p.container] = previous
                    continue
            except OrchError:
                pass
        slots = [(f"evac:{host}", parallel), (f"host:{host}", per_host), (f"host:{p.target}", per_host)]
        options = {"stateless": True, "origin": host}
        try:
            job = submit("move", Ref(host, p.container), Ref(p.target, p.container), options, slots)
        except OrchError as exc:
            record.set_outcome(p.container, f"not submitted: {exc}")
            continue
        record.set_job(p.container, job.id)
        jobs[p.container] = job.id
    return jobs


def _follow_and_summarize(store, jobs, record, placements) -> int:  # type: ignore[no-untyped-def]
    from orchestrator.cli.follow import follow_many

    def done(name, job):  # type: ignore[no-untyped-def]
        outcome = f"moved to {job.target}" if job.status == "succeeded" else f"{job.status}: {job.error}"
        record.set_outcome(name, outcome)
        if not sys.stderr.isatty():
            click.echo(f"{name}: {outcome}", err=True)

    final = follow_many(store, jobs, done) if jobs else {}
    outcomes = record.outcomes()
    rows = [
        [p.container, p.action.upper(), p.target or "-", outcomes.get(p.container, "")] for p in placements
    ]
    click.echo(table(["CONTAINER", "ACTION", "TARGET", "OUTCOME"], rows))
    failed = [n for n, j in final.items() if j.status != "succeeded"]
    failed += [n for n, o in outcomes.items() if o.startswith("not submitted")]
    return len(failed)


@click.command()
@click.argument("target")
@click.argument("snapshot", required=False)
@click.option(
    "--parallel", default=4, show_default=True, help="Host restore: at most this many moves at once."
)
@click.option("--per-host", default=2, show_default=True, help="Host restore: at most this many per host.")
@pass_ctx
def restore(ctx: Context, target: str, snapshot: str | None, parallel: int, per_host: int) -> None:
    """Restore a container to a snapshot (orch restore [REMOTE:]NAME SNAPSHOT), or a host after
    maintenance (orch restore REMOTE:): move back what was evacuated, restart what ran, uncordon."""
    if snapshot is not None or not target.endswith(":"):
        from orchestrator.cli.containers import restore_snapshot

        if snapshot is None:
            raise BadRequest(
                "which snapshot?", "orch restore [REMOTE:]NAME SNAPSHOT, or orch restore REMOTE: for a host"
            )
        restore_snapshot(ctx, target, snapshot)
        return
    restore_host(ctx, target, parallel, per_host)


def restore_host(ctx: Context, target: str, parallel: int, per_host: int) -> None:
    from orchestrator.cli.follow import follow_many
    from orchestrator.evacuation.hosts import mirror_quietly
    from orchestrator.evacuation.runner import EvacuationRecord
    from orchestrator.submit import submit

    host = parse_remote(target, ctx.config)
    client, states, store = _handles()
    origins = states.origins(host)
    mirror_quietly(states, host, "restoring", ctx.client(host))
    jobs: dict[str, str] = {}
    for name, entry in sorted(origins.items()):
        slots = [
            (f"restore:{host}", parallel),
            (f"host:{host}", per_host),
            (f"host:{entry['target']}", per_host),
        ]
        try:
            job = submit("move", Ref(entry["target"], name), Ref(host, name),
                         {"stateless": True, "restore": True}, slots)  # fmt: skip
        except OrchError as exc:
            click.echo(f"{name}: not submitted: {exc}", err=True)
            continue
        jobs[name] = job.id
    final = follow_many(store, jobs) if jobs else {}
    failed: dict[str, str] = {}
    for name, job in final.items():
        if job.status == "succeeded":
            states.forget_origin(host, name)
        else:
            failed[name] = job.error
    rows = [
        [name, origins[name]["target"], "FAILED: " + failed[name] if name in failed else "moved back"]
        for name in sorted(jobs)
    ]
    if rows:
        click.echo(table(["CONTAINER", "FROM", "OUTCOME"], rows))
    if failed:
        mirror_quietly(states, host, "evacuated", ctx.client(host))
        raise OrchError(f"{len(failed)} container(s) could not be moved back: {', '.join(sorted(failed))}")
    EvacuationRecord(client, host).clear()
    mirror_quietly(states, host, "online", ctx.client(host))
    click.echo(f"{host} restored and uncordoned")


COMMANDS = [hosts, cordon, uncordon, evacuate, restore]
