"""``orch hosts``, ``cordon``, ``uncordon``, ``evacuate`` and ``restore``: draining hosts for maintenance."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from orchapi.api.containers import StateChange
from orchapi.errors import BadRequest, Conflict, NotFound, OrchError
from orchestrator.cli.completion import containers, remotes
from orchestrator.cli.context import Context, pass_ctx
from orchestrator.cli.jobs import compress_option, mode_option, parse_rate_option, transfer_options
from orchestrator.cli.output import emit, format_option, human_size, table
from orchestrator.refs import Ref, parse_remote

if TYPE_CHECKING:
    from orchestrator.hostid import Host  # the CLI imports requests only for commands that talk


def _handles():  # type: ignore[no-untyped-def]
    from orchestrator.evacuation.hosts import HostStates
    from orchestrator.jobs import JobStore
    from orchestrator.redisserver import WORKER_PATIENCE, connect, redis_url
    from orchestrator.settings import Settings

    # patient: an evacuation is followed for as long as it runs, through a Redis restart or failover
    client = connect(redis_url(Settings.from_env()), WORKER_PATIENCE)
    return client, HostStates(client), JobStore(client)


def _host(ctx: Context, target: str, states) -> tuple[str, Host]:  # type: ignore[no-untyped-def]
    """The remote named by ``target`` and the host (agent) it is a name of, its old records adopted."""
    from orchestrator.hostid import host_of

    remote = parse_remote(target, ctx.config)
    host = host_of(ctx.config, remote)
    states.adopt_legacy(host.id, host.names)
    return remote, host


@click.command()
@format_option
@pass_ctx
def hosts(ctx: Context, fmt: str) -> None:
    """Every host (an agent, with all the remote names it has): status (online/offline/cordoned/
    evacuating/evacuated), containers, space, jobs."""
    from orchestrator.evacuation.runner import host_info, unknown_host_info
    from orchestrator.hostid import group, identities

    _, states, store = _handles()
    known, unknown = identities(ctx.config)
    infos = []
    for host in group(known):
        states.adopt_legacy(host.id, host.names)
        infos.append(host_info(ctx.config, states, store, host))
    infos += [unknown_host_info(name, why) for name, why in unknown.items()]
    infos.sort(key=lambda i: i.remote)
    rows = [
        [", ".join(i.names), i.status.upper(), i.runtime,
         f"{i.containers} ({i.running} running)" if i.online else "",
         human_size(i.used) if i.online else "", human_size(i.free) if i.online else "", i.jobs]
        for i in infos
    ]  # fmt: skip
    objects = [{**i.__dict__, "names": list(i.names), "methods": list(i.methods)} for i in infos]
    emit(fmt, ["REMOTE", "STATUS", "RUNTIME", "CONTAINERS", "USED", "FREE", "JOBS"], rows, objects)


def _set(ctx: Context, target: str, status: str) -> None:
    from orchestrator.evacuation.hosts import mirror_quietly

    _, states, _ = _handles()
    remote, host = _host(ctx, target, states)
    problem = mirror_quietly(states, host.id, status, ctx.client(remote))
    if problem:
        click.echo(f"Warning: recorded, but the agent could not be told: {problem}", err=True)


@click.command()
@click.argument("target", shell_complete=remotes)
@pass_ctx
def cordon(ctx: Context, target: str) -> None:
    """Stop scheduling onto REMOTE: (no copy or move will target it)."""
    _set(ctx, target, "cordoned")


@click.command()
@click.argument("target", shell_complete=remotes)
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
@click.argument("source", shell_complete=remotes)
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
@click.option(
    "--allow-privileged",
    is_flag=True,
    help="Let the targets accept privileged containers, raw.* config or host devices from this host.",
)
@click.option("--bwlimit", metavar="RATE", callback=parse_rate_option,
              help="At most this bandwidth per move, e.g. 50MiB (per second).")  # fmt: skip
@compress_option
@mode_option
@click.option("--yes", "-y", is_flag=True, help="Don't ask for confirmation.")
@format_option
@pass_ctx
def evacuate(
    ctx: Context, source: str, to: str | None, parallel: int, per_host: int, action: str | None,
    plan_only: bool, allow_privileged: bool, bwlimit: int | None, compression: str, mode: str, yes: bool,
    fmt: str,
) -> int:  # fmt: skip
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
    wanted = [parse_remote(t.strip(), ctx.config) for t in to.split(",") if t.strip()] if to else None
    client, states, store = _handles()
    host, source_host = _host(ctx, source, states)
    targets, skipped = choose_targets(ctx.config, states, store, source_host, wanted, host)
    candidates, methods = gather_candidates(ctx.config, host)
    placements = plan(candidates, targets, action, methods)
    rate = recent_rate(store)
    if bwlimit:
        rate = min(rate, bwlimit)  # no move goes faster than its limit
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
        return 0
    if not yes:
        if not sys.stdin.isatty():
            raise BadRequest("refusing to evacuate without confirmation", "pass --yes")
        if not click.confirm(f"Evacuate {host} as planned?", default=False):
            raise BadRequest("evacuation not started")
    record = EvacuationRecord(client, source_host.id)
    options = {"parallel": parallel, "per_host": per_host, "action": action, "to": wanted}
    if not record.load():
        record.start(options, placements)
    from orchestrator.evacuation.hosts import mirror_quietly

    mirror_quietly(states, source_host.id, "evacuating", ctx.client(host))
    target_ids = {t.remote: t.host_id for t in targets}
    jobs = _submit_evacuation_jobs(
        host, source_host.id, target_ids, placements, record, store, parallel, per_host, allow_privileged,
        transfer_options(bwlimit, compression, mode),
    )  # fmt: skip
    earlier = record.outcomes()  # a rerun: what an interrupted run stopped must still be restarted
    try:
        for p in placements:
            if p.action == STOP and p.state == "RUNNING":
                # recorded first: if this run is interrupted mid-stop, `orch restore` still restarts it
                record.set_outcome(p.container, "stopped")
                try:
                    ctx.client(host).change_state(p.container, StateChange("stop"))
                except OrchError as exc:
                    record.set_outcome(p.container, f"stop failed: {exc}")
            elif p.action != MIGRATE and earlier.get(p.container) != "stopped":
                record.set_outcome(p.container, p.action + (f": {p.reason}" if p.reason else ""))
        failures = _follow_and_summarize(store, jobs, record, placements)
    except KeyboardInterrupt:  # the moves are the workers'; they go on, and a rerun picks them up
        running = sum(1 for j in jobs.values() if not store.get(j).finished)
        click.echo(
            f"\n{host} stays EVACUATING: {running} of {len(jobs)} move(s) continue in the background "
            f"(`orch jobs` to follow them); run `orch evacuate {host}:` again to continue",
            err=True,
        )
        return 130
    mirror_quietly(states, source_host.id, "evacuated" if not failures else "evacuating", ctx.client(host))
    if failures:
        raise OrchError(
            f"{failures} container(s) could not be moved; run `orch evacuate {host}:` again to retry"
        )
    return 0


def _submit_evacuation_jobs(host, host_id, target_ids, placements, record, store, parallel, per_host,  # type: ignore[no-untyped-def]
                            allow_privileged=False, transfer=None):  # fmt: skip
    """One move chain per container to migrate; jobs of an earlier run are reused (idempotent).

    The slots and the recorded origin are keyed by host identity, so limits hold across a host's names
    and ``orch restore`` finds the containers through any of them."""
    from orchestrator.evacuation.hosts import evacuation_slot, host_slot
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
        slots = [
            (evacuation_slot(host_id), parallel),
            (host_slot(host_id), per_host),
            (host_slot(target_ids[p.target]), per_host),
        ]
        options = {"stateless": True, "origin": host_id, **(transfer or {})}
        if allow_privileged:  # and `orch restore` moves them back with the same opt-in (the origin says)
            options["allow_privileged"] = True
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
@click.argument("target", shell_complete=containers)
@click.argument("snapshot", required=False)
@click.option(
    "--parallel", default=4, show_default=True, help="Host restore: at most this many moves at once."
)
@click.option("--per-host", default=2, show_default=True, help="Host restore: at most this many per host.")
@click.option("--bwlimit", metavar="RATE", callback=parse_rate_option,
              help="Host restore: at most this bandwidth per move, e.g. 50MiB (per second).")  # fmt: skip
@compress_option
@mode_option
@pass_ctx
def restore(
    ctx: Context, target: str, snapshot: str | None, parallel: int, per_host: int, bwlimit: int | None,
    compression: str, mode: str,
) -> int:  # fmt: skip
    """Restore a container to a snapshot (orch restore [REMOTE:]NAME SNAPSHOT), or a host after
    maintenance (orch restore REMOTE:): move back what was evacuated, restart what ran, uncordon."""
    moving = bwlimit is not None or compression != "auto" or mode != "auto"
    if moving and (snapshot is not None or not target.endswith(":")):
        raise BadRequest(
            "--bwlimit, --compress and --mode are for a host restore (orch restore REMOTE:)",
            "a snapshot restore moves no data",
        )
    if snapshot is not None or not target.endswith(":"):
        from orchestrator.cli.containers import restore_snapshot

        if snapshot is None:
            raise BadRequest(
                "which snapshot?", "orch restore [REMOTE:]NAME SNAPSHOT, or orch restore REMOTE: for a host"
            )
        restore_snapshot(ctx, target, snapshot)
        return 0
    return restore_host(ctx, target, parallel, per_host, transfer_options(bwlimit, compression, mode))


def restore_host(
    ctx: Context, target: str, parallel: int, per_host: int, transfer: dict[str, object] | None = None
) -> int:
    from orchestrator.cli.follow import follow_many
    from orchestrator.evacuation.hosts import host_slot, mirror_quietly, restore_slot
    from orchestrator.evacuation.runner import EvacuationRecord
    from orchestrator.hostid import identify
    from orchestrator.submit import submit

    client, states, store = _handles()
    host, restored = _host(ctx, target, states)
    origins = states.origins(restored.id)
    mirror_quietly(states, restored.id, "restoring", ctx.client(host))
    jobs: dict[str, str] = {}
    for name, entry in sorted(origins.items()):
        try:
            slots = [
                (restore_slot(restored.id), parallel),
                (host_slot(restored.id), per_host),
                (host_slot(identify(ctx.config, entry["target"])), per_host),
            ]
            options: dict[str, object] = {"stateless": True, "restore": True, **(transfer or {})}
            if entry.get("allow_privileged"):  # it came here with the operator's opt-in; it goes back so
                options["allow_privileged"] = True
            job = submit("move", Ref(entry["target"], name), Ref(host, name), options, slots)
        except OrchError as exc:
            click.echo(f"{name}: not submitted: {exc}", err=True)
            continue
        jobs[name] = job.id
    try:
        final = follow_many(store, jobs) if jobs else {}
    except KeyboardInterrupt:
        click.echo(
            f"\nThe moves back to {host} continue in the background (`orch jobs` to follow them); "
            f"run `orch restore {host}:` again to finish the restore",
            err=True,
        )
        return 130
    failed: dict[str, str] = {}
    for name, job in final.items():
        if job.status == "succeeded":
            states.forget_origin(restored.id, name)
        else:
            failed[name] = job.error
    rows = [
        [name, origins[name]["target"], "FAILED: " + failed[name] if name in failed else "moved back"]
        for name in sorted(jobs)
    ]
    record = EvacuationRecord(client, restored.id)
    for name, outcome in sorted(record.outcomes().items()):
        if outcome == "stopped":  # policy stop: it ran before the evacuation, so it runs again
            rows.append([name, "-", _restart(ctx, host, name, failed)])
    if rows:
        click.echo(table(["CONTAINER", "FROM", "OUTCOME"], rows))
    if failed:
        mirror_quietly(states, restored.id, "evacuated", ctx.client(host))
        raise OrchError(f"{len(failed)} container(s) could not be restored: {', '.join(sorted(failed))}")
    record.clear()
    mirror_quietly(states, restored.id, "online", ctx.client(host))
    click.echo(f"{host} restored and uncordoned")
    return 0


def _restart(ctx: Context, host: str, name: str, failed: dict[str, str]) -> str:
    """Start a container the evacuation stopped; the outcome as the restore table shows it."""
    try:
        ctx.client(host).change_state(name, StateChange("start"))
        return "restarted"
    except Conflict:
        return "running already"
    except NotFound:
        return "gone (deleted since the evacuation)"
    except OrchError as exc:
        failed[name] = str(exc)
        return f"FAILED: could not restart: {exc}"


COMMANDS = [hosts, cordon, uncordon, evacuate, restore]
