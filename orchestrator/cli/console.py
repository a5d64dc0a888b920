"""``orch console``: a running container's console, as ``lxc console`` (detach with Ctrl+a q)."""

from __future__ import annotations

import asyncio
import os
import sys

import click

from orchestrator.cli.completion import containers
from orchestrator.cli.context import Context, pass_ctx
from orchestrator.refs import parse_container


@click.command()
@click.argument("target", shell_complete=containers)
@click.option("--show-log", is_flag=True, help="Print the console's recent output and return.")
@pass_ctx
def console(ctx: Context, target: str, show_log: bool) -> int:
    """Attach to the console of [REMOTE:]NAME (detach with Ctrl+a q), or print its log.

    The console is the container init's terminal: what the init and its services print, and a login
    prompt where the image has one. It lives as long as the container, whoever attaches or leaves.
    """
    ref = parse_container(target, ctx.config)
    client = ctx.client(ref.remote)
    path = f"/1.0/containers/{ref.name}/console"
    if show_log:
        log = client.request("GET", path).content
        sys.stdout.buffer.write(log)
        sys.stdout.flush()
        return 0
    from orchestrator.cli import terminal
    from orchestrator.cli.execstream import relay

    width, height = terminal.size(0)
    operation = client.request("POST", path, json={"width": width, "height": height}).json()
    if os.isatty(2):
        click.echo("To detach from the console, press: <ctrl>+a q", err=True)
    code = asyncio.run(relay(client, operation, True, True, detach=True))
    click.echo("", err=True)
    return code


COMMANDS = [console]
