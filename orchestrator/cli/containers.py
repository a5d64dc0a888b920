"""Container commands: launch, init, list, info, start, stop, restart, snapshot, restore, delete."""

from __future__ import annotations

import secrets

import click

from orchapi.api.containers import ContainerFromImage, StateChange
from orchapi.errors import BadRequest, Conflict
from orchestrator.cli.completion import containers
from orchestrator.cli.context import Context, pass_ctx
from orchestrator.cli.images import ensure_image
from orchestrator.cli.output import emit, format_option, human_size, table
from orchestrator.cli.pairs import parse_pairs
from orchestrator.refs import Ref, parse, parse_container


def _create(ctx: Context, image: str, name: str | None, config: tuple[str, ...], start: bool) -> Ref:
    """Shared by launch and init: create (and maybe start) a container from an image."""
    cfg = ctx.config
    image_ref_remote, _, image_name = (
        image.rpartition(":") if ":" in image else (cfg.default_remote, "", image)
    )
    cfg.get(image_ref_remote)
    if not image_name:
        raise BadRequest(f"{image!r} names no image", "use [REMOTE:]ALIAS or [REMOTE:]FINGERPRINT")
    target = parse(name, cfg) if name else Ref(cfg.default_remote)
    if not target.name:
        target = Ref(target.remote, "c-" + secrets.token_hex(3))
    if target.snapshot:
        raise BadRequest("a new container can't be a snapshot")
    client = ctx.client(target.remote)
    fingerprint = ensure_image(ctx, image_ref_remote, image_name, target.remote)
    click.echo(f"Creating {target.name}")
    client.create_container(ContainerFromImage(target.name, fingerprint, _parse_config(config), start))
    if start:
        click.echo(f"Starting {target.name}")
    return target


def _parse_config(pairs: tuple[str, ...]) -> dict[str, str]:
    return parse_pairs(pairs, "config", "-c KEY=VALUE")


config_option = click.option("--config", "-c", multiple=True, metavar="KEY=VALUE", help="Container config.")


@click.command()
@click.argument("image")
@click.argument("name", required=False)
@config_option
@pass_ctx
def launch(ctx: Context, image: str, name: str | None, config: tuple[str, ...]) -> None:
    """Create and start a container from IMAGE ([REMOTE:]ALIAS|FINGERPRINT) as [REMOTE:]NAME."""
    _create(ctx, image, name, config, start=True)


@click.command()
@click.argument("image")
@click.argument("name", required=False)
@config_option
@pass_ctx
def init(ctx: Context, image: str, name: str | None, config: tuple[str, ...]) -> None:
    """Create a container from IMAGE as [REMOTE:]NAME without starting it."""
    _create(ctx, image, name, config, start=False)


@click.command("list")
@click.argument("target", required=False, shell_complete=containers)
@format_option
@pass_ctx
def list_(ctx: Context, target: str | None, fmt: str) -> None:
    """List the containers of [REMOTE:] (optionally only names starting with a prefix)."""
    ref = parse(target, ctx.config) if target else Ref(ctx.config.default_remote)
    containers = ctx.client(ref.remote).containers()
    if ref.name:
        containers = [c for c in containers if c["name"].startswith(ref.name)]
    rows = [
        [c["name"], c["status"].upper(), "", "", c["type"].upper(), len(c["snapshots"])] for c in containers
    ]
    emit(fmt, ["NAME", "STATE", "IPV4", "IPV6", "TYPE", "SNAPSHOTS"], rows, containers)


@click.command()
@click.argument("target", required=False, shell_complete=containers)
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True, help="Output format (json/yaml: the agent's whole answer).")  # fmt: skip
@pass_ctx
def info(ctx: Context, target: str | None, fmt: str) -> None:
    """Show a container ([REMOTE:]NAME) or, for REMOTE:, the agent."""
    ref = parse(target, ctx.config) if target else Ref(ctx.config.default_remote)
    client = ctx.client(ref.remote)
    if fmt != "table":
        if not ref.name:
            emit(fmt, [], [], client.server().raw)
            return
        doc = client.container(ref.name)
        doc["state"] = client.container_state(ref.name)
        doc["snapshots"] = client.snapshots(ref.name)
        emit(fmt, [], [], doc)
        return
    if not ref.name:
        server = client.server().raw
        env = server["environment"]
        for key in ("server_name", "server_version", "certificate_fingerprint", "runtime", "storage"):
            if key in env:
                click.echo(f"{key.replace('_', ' ').capitalize()}: {env[key]}")
        if "transfer_methods" in env:
            click.echo(f"Transfer methods: {', '.join(env['transfer_methods'])}")
        link = env.get("data_link")
        if isinstance(link, dict):
            port = link.get("port")
            where = f"port {port}" if port else "off (bytes over the HTTPS websocket)"
            ktls = "yes" if link.get("kernel_tls") else "no"
            click.echo(f"Data link: {where}; kernel TLS: {ktls}")
        if "storage_free" in env:
            click.echo(
                f"Storage free: {human_size(env['storage_free'])} of {human_size(env['storage_total'])}"
            )
        click.echo(f"Auth: {server['auth']}")
        return
    c = client.container(ref.name)
    state = client.container_state(ref.name)
    click.echo(f"Name: {c['name']}")
    click.echo(f"Status: {c['status'].upper()}")
    click.echo(f"Type: {c['type']}")
    click.echo(f"Architecture: {c['architecture']}")
    if state.get("pid"):
        click.echo(f"PID: {state['pid']}")
    click.echo(f"Created: {c['created_at']}")
    click.echo(f"Base image: {c['config'].get('volatile.base_image', '')}")
    click.echo("Resources:")
    click.echo(f"  Processes: {state.get('processes', 0)}")
    usage = state.get("disk", {}).get("root", {}).get("usage")
    if usage is not None:
        click.echo(f"  Disk usage: {human_size(usage)}")
    memory = state.get("memory", {}).get("usage")
    if memory is not None:
        click.echo(f"  Memory usage: {human_size(memory)}")
    snapshots = client.snapshots(ref.name)
    if snapshots:
        click.echo("Snapshots:")
        click.echo(table(["NAME", "TAKEN AT"], [[s["name"], s["created_at"]] for s in snapshots]))


def _state(
    ctx: Context, targets: tuple[str, ...], action: str, force: bool = False, timeout: int = 30
) -> None:
    if not targets:
        raise BadRequest(f"{action} needs at least one container", f"orch {action} [REMOTE:]NAME")
    for text in targets:
        ref = parse_container(text, ctx.config)
        change = StateChange(action, timeout=timeout, force=force)
        ctx.client(ref.remote).change_state(ref.name, change, timeout=timeout + 30)


@click.command()
@click.argument("targets", nargs=-1, shell_complete=containers)
@pass_ctx
def start(ctx: Context, targets: tuple[str, ...]) -> None:
    """Start containers."""
    _state(ctx, targets, "start")


@click.command()
@click.argument("targets", nargs=-1, shell_complete=containers)
@click.option("--force", "-f", is_flag=True, help="Kill at once instead of a clean shutdown.")
@click.option("--timeout", default=30, show_default=True, help="Seconds to wait for a clean shutdown.")
@pass_ctx
def stop(ctx: Context, targets: tuple[str, ...], force: bool, timeout: int) -> None:
    """Stop containers (clean shutdown, killed after --timeout)."""
    _state(ctx, targets, "stop", force, timeout)


@click.command()
@click.argument("targets", nargs=-1, shell_complete=containers)
@click.option("--force", "-f", is_flag=True, help="Kill at once instead of a clean shutdown.")
@click.option("--timeout", default=30, show_default=True, help="Seconds to wait for a clean shutdown.")
@pass_ctx
def restart(ctx: Context, targets: tuple[str, ...], force: bool, timeout: int) -> None:
    """Restart containers."""
    _state(ctx, targets, "restart", force, timeout)


@click.command()
@click.argument("target", shell_complete=containers)
@click.argument("snapshot", required=False)
@pass_ctx
def snapshot(ctx: Context, target: str, snapshot: str | None) -> None:
    """Take a snapshot of a container (named snapN when no name is given)."""
    ref = parse_container(target, ctx.config)
    client = ctx.client(ref.remote)
    if not snapshot:
        existing = set(client.container(ref.name)["snapshots"])
        snapshot = next(f"snap{i}" for i in range(len(existing) + 1) if f"snap{i}" not in existing)
    client.create_snapshot(ref.name, snapshot)


def restore_snapshot(ctx: Context, target: str, snapshot: str) -> None:
    """``orch restore [REMOTE:]NAME SNAPSHOT`` (the command itself lives with the host commands)."""
    ref = parse_container(target, ctx.config)
    ctx.client(ref.remote).restore_snapshot(ref.name, snapshot)


@click.command()
@click.argument("targets", nargs=-1, shell_complete=containers)
@click.option("--force", "-f", is_flag=True, help="Stop a running container first.")
@pass_ctx
def delete(ctx: Context, targets: tuple[str, ...], force: bool) -> None:
    """Delete containers or snapshots ([REMOTE:]NAME[/SNAPSHOT])."""
    if not targets:
        raise BadRequest("delete needs at least one container", "orch delete [REMOTE:]NAME")
    for text in targets:
        ref = parse_container(text, ctx.config, allow_snapshot=True)
        client = ctx.client(ref.remote)
        if ref.snapshot:
            client.delete_snapshot(ref.name, ref.snapshot)
            continue
        status = client.container(ref.name)["status"]
        if status == "Running":
            if not force:
                raise Conflict(f"container {ref} is running", "stop it first, or use --force")
            client.change_state(ref.name, StateChange("stop", force=True))
        client.delete_container(ref.name)


list_.name = "list"

COMMANDS = [launch, init, list_, info, start, stop, restart, snapshot, delete]
