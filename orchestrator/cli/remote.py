"""``orch remote``: add, list, remove, rename agents, and choose the default one.

Adding an HTTPS remote follows ``lxc remote add``: show the agent's certificate fingerprint and ask
before pinning it, then enrol our client certificate with the agent's trust password.
"""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING

import click

from orchapi import certs
from orchapi.errors import BadRequest, Forbidden, OrchError
from orchestrator.cli.context import Context, pass_ctx
from orchestrator.cli.output import emit, format_option
from orchestrator.clientconfig import Remote

if TYPE_CHECKING:
    from orchapi.client import AgentClient


def normalize_addr(addr: str) -> str:
    """``10.0.0.5`` → ``https://10.0.0.5:8443``; ``unix:///p`` and ``https://...`` stay as they are."""
    if addr.startswith("unix://"):
        return addr
    if addr.startswith("https://"):
        rest = addr[len("https://") :].rstrip("/")
    elif "://" in addr:
        raise BadRequest(
            f"unsupported address {addr!r}", "use HOST[:PORT], https://HOST[:PORT] or unix:///PATH"
        )
    else:
        rest = addr.rstrip("/")
    if not rest or "/" in rest:
        raise BadRequest(f"invalid address {addr!r}", "use HOST[:PORT]")
    if rest.startswith("["):
        has_port = "]:" in rest
    elif rest.count(":") > 1:  # a bare IPv6 address
        rest, has_port = f"[{rest}]", False
    else:
        has_port = ":" in rest
    if has_port and not rest.rsplit(":", 1)[1].isdigit():
        raise BadRequest(f"invalid port in {addr!r}")
    from orchapi.client import DEFAULT_PORT

    return f"https://{rest}" if has_port else f"https://{rest}:{DEFAULT_PORT}"


@click.group()
def remote() -> None:
    """Manage the agents this client knows."""


@remote.command("add")
@click.argument("name")
@click.argument("addr")
@click.option("--accept-certificate", is_flag=True, help="Pin the agent's certificate without asking.")
@click.option("--password", help="The agent's trust password (asked for if not given).")
@pass_ctx
def remote_add(ctx: Context, name: str, addr: str, accept_certificate: bool, password: str | None) -> None:
    """Add an agent as remote NAME at ADDR (HOST[:PORT] or unix:///path/unix.socket)."""
    # imported here, not at the top: the other commands of this module (and `orch move`) need no TLS client
    from orchapi.client import AgentClient, fetch_server_certificate

    config = ctx.config
    url = normalize_addr(addr)
    config.add(Remote(name, url))  # validates the name and that it is free, before any network traffic
    if url.startswith("unix://"):
        client = AgentClient(url)
        client.server()
        config.save()
        click.echo(f"Remote {name} added ({url[len('unix://') :]})")
        return
    pem = fetch_server_certificate(url)
    fingerprint = certs.fingerprint_pem(pem)
    click.echo(f"Certificate fingerprint: {fingerprint}")
    if not accept_certificate:
        if not sys.stdin.isatty():
            raise BadRequest(
                "cannot ask to confirm the certificate: no terminal", "pass --accept-certificate"
            )
        if not click.confirm("ok (y/n)?", default=None, show_default=False, prompt_suffix=" "):
            raise BadRequest("certificate not accepted; remote not added")
    crt, key = config.client_cert()
    with_cert = AgentClient(url, fingerprint=fingerprint, client_cert=(crt, key))
    if _trusted(with_cert):
        click.echo(f"Client certificate already trusted by {name}")
    else:
        if password is None:
            if not sys.stdin.isatty():
                raise BadRequest("no trust password given and no terminal to ask for it", "pass --password")
            password = click.prompt(f"Admin password for {name}", hide_input=True, prompt_suffix=": ")
        anonymous = AgentClient(url, fingerprint=fingerprint)
        anonymous.enrol(crt.read_text(), password, socket.gethostname())
        if not _trusted(with_cert):
            raise Forbidden(f"{name} accepted the password but still does not trust this client")
        click.echo(f"Client certificate stored at server: {name}")
    config.save_server_cert(name, pem)
    config.save()


def _trusted(client: AgentClient) -> bool:
    try:
        return client.server().trusted
    except Forbidden:
        return False  # the TLS handshake rejected our (unknown) certificate


@remote.command("list")
@format_option
@pass_ctx
def remote_list(ctx: Context, fmt: str) -> None:
    """List remotes; the default one is marked "(default)"."""
    config = ctx.config
    rows, objects = [], {}
    for name, r in sorted(config.remotes.items()):
        label = f"{name} (default)" if name == config.default_remote else name
        rows.append([label, r.addr, r.protocol, "YES" if r.public else "NO", "YES" if r.static else "NO"])
        objects[name] = {"addr": r.addr, "protocol": r.protocol, "public": r.public, "static": r.static}
    emit(fmt, ["NAME", "URL", "PROTOCOL", "PUBLIC", "STATIC"], rows, objects)


@remote.command("remove")
@click.argument("name")
@pass_ctx
def remote_remove(ctx: Context, name: str) -> None:
    """Forget remote NAME and its pinned certificate."""
    ctx.config.remove(name)
    ctx.config.save()


@remote.command("rename")
@click.argument("old")
@click.argument("new")
@pass_ctx
def remote_rename(ctx: Context, old: str, new: str) -> None:
    """Rename remote OLD to NEW."""
    ctx.config.rename(old, new)
    ctx.config.save()


@remote.command("get-default")
@pass_ctx
def remote_get_default(ctx: Context) -> None:
    """Print the default remote."""
    click.echo(ctx.config.default_remote)


@remote.command("set-default")
@click.argument("name")
@pass_ctx
def remote_set_default(ctx: Context, name: str) -> None:
    """Make NAME the remote used when a reference names none."""
    ctx.config.get(name)
    ctx.config.default_remote = name
    ctx.config.save()


__all__ = ["remote", "normalize_addr", "OrchError"]
