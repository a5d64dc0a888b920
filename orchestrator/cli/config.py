"""``orch config``: server config (``REMOTE:``) and container config (``REMOTE:NAME``)."""

from __future__ import annotations

import click

from orchestrator.cli.context import Context, pass_ctx
from orchestrator.refs import parse


@click.group()
def config() -> None:
    """Get and set server or container configuration."""


@config.command("set")
@click.argument("target")
@click.argument("key")
@click.argument("value")
@pass_ctx
def config_set(ctx: Context, target: str, key: str, value: str) -> None:
    """Set KEY to VALUE on REMOTE: (server) or [REMOTE:]NAME (container)."""
    ref = parse(target, ctx.config)
    client = ctx.client(ref.remote)
    if not ref.name:
        client.set_server_config({key: value})
    else:
        client.set_container_config(ref.name, {key: value})


@config.command("unset")
@click.argument("target")
@click.argument("key")
@pass_ctx
def config_unset(ctx: Context, target: str, key: str) -> None:
    """Remove KEY from a container's config (or clear a server key)."""
    ref = parse(target, ctx.config)
    client = ctx.client(ref.remote)
    if not ref.name:
        client.set_server_config({key: ""})
        return
    current = client.container(ref.name)["config"]
    current = {k: v for k, v in current.items() if k != key and not k.startswith("volatile.")}
    client.set_container_config(ref.name, current, replace=True)


@config.command("get")
@click.argument("target")
@click.argument("key")
@pass_ctx
def config_get(ctx: Context, target: str, key: str) -> None:
    """Print the value of KEY on REMOTE: or [REMOTE:]NAME (empty if unset)."""
    ref = parse(target, ctx.config)
    client = ctx.client(ref.remote)
    if not ref.name:
        value = client.server().config.get(key, "")
    else:
        value = client.container(ref.name)["config"].get(key, "")
    click.echo("true" if value is True else value)
