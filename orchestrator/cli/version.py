"""``orch version``: the client's version and, given a remote, its agent's (as ``lxc version``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import click

from orchestrator.cli.context import Context, pass_ctx
from orchestrator.refs import parse_remote


def client_version() -> str:
    try:
        return package_version("orch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


@click.command()
@click.argument("remote", required=False)
@pass_ctx
def version(ctx: Context, remote: str | None) -> None:
    """Show the client's version, and with REMOTE: the version of its agent."""
    click.echo(f"Client version: {client_version()}")
    if remote is None:
        return
    name = parse_remote(remote, ctx.config)
    environment = ctx.client(name).server().raw.get("environment") or {}
    server_name = environment.get("server_name", "?")
    where = f"remote {name}: {environment.get('server', 'orch-agent')} on {server_name}"
    click.echo(f"Server version: {environment.get('server_version', 'unknown')} ({where})")


COMMANDS = [version]
