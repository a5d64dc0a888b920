"""``orch exec``: a command in a container, its streams or terminal relayed live (as ``lxc exec``).

Grammar: ``orch exec [REMOTE:]NAME [OPTIONS] [--] CMD [ARGS...]``. orch's options come before the
command; from the command's name on, everything is the command's (``orch exec foo:c1 ls --help`` runs
``ls --help``), with or without ``--``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import click

from orchapi.errors import BadRequest
from orchestrator.cli.completion import containers
from orchestrator.cli.context import Context, pass_ctx
from orchestrator.cli.pairs import parse_pairs
from orchestrator.refs import parse_container

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class CommandAfterTarget(click.Command):
    """Stops reading orch's options at the command's name: the rest belongs to the command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {
            name for p in self.params if isinstance(p, click.Option) and not p.is_flag for name in p.opts
        }
        positionals, i = 0, 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                break
            if arg.startswith("-") and arg != "-":
                name = arg.split("=", 1)[0]
                i += 2 if name in takes_value and "=" not in arg else 1
                continue
            positionals += 1
            if positionals == 2:  # the command's name: what follows is the command's
                args = [*args[:i], "--", *args[i:]]
                break
            i += 1
        return super().parse_args(ctx, args)


def _environment(pairs: tuple[str, ...], interactive: bool, user: int | None) -> dict[str, str]:
    home = "/root" if not user else "/"
    env = {"PATH": DEFAULT_PATH, "HOME": home, "LANG": "C.UTF-8"}
    if interactive:
        env["TERM"] = os.environ.get("TERM", "xterm")
    env.update(parse_pairs(pairs, "environment variable", "--env KEY=VALUE"))
    return env


def _stdin_usable() -> bool:
    try:
        os.fstat(0)
        return True
    except OSError:
        return False


@click.command(cls=CommandAfterTarget, context_settings={"ignore_unknown_options": False})
@click.argument("target", shell_complete=containers)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "-t",
    "--force-interactive",
    "force_tty",
    is_flag=True,
    help="A terminal in the container even if stdin/stdout are not terminals.",
)
@click.option(
    "-T", "--force-noninteractive", "no_tty", is_flag=True, help="Plain streams even on a terminal."
)
@click.option("-n", "--disable-stdin", is_flag=True, help="Send no input (the command reads end of file).")
@click.option("--user", type=click.IntRange(0, 2**32 - 2), help="User id to run the command as.")
@click.option("--group", type=click.IntRange(0, 2**32 - 2), help="Group id to run the command as.")
@click.option("--cwd", help="Working directory in the container (default: /root, or / for --user).")
@click.option("--env", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable).")
@pass_ctx
def exec_(
    ctx: Context,
    target: str,
    command: tuple[str, ...],
    force_tty: bool,
    no_tty: bool,
    disable_stdin: bool,
    user: int | None,
    group: int | None,
    cwd: str | None,
    env: tuple[str, ...],
) -> int:
    """Run CMD in a container: orch exec [REMOTE:]NAME [OPTIONS] [--] CMD [ARGS...].

    On a terminal (or with -t) CMD gets a terminal of its own: a shell with its prompt, job control,
    full-screen programs, window resizes, Ctrl-C and Ctrl-Z as at a local shell. Otherwise stdin,
    stdout and stderr stream both ways as they come. The exit status is CMD's.
    """
    if force_tty and no_tty:
        raise BadRequest("-t and -T contradict each other", "use one of them")
    ref = parse_container(target, ctx.config)
    interactive = force_tty or (not no_tty and os.isatty(0) and os.isatty(1))
    width, height = _size() if interactive else (0, 0)
    body: dict[str, Any] = {
        "command": list(command),
        "environment": _environment(env, interactive, user),
        "cwd": cwd or ("/" if user else "/root"),
        "wait-for-websocket": True,
        "interactive": interactive,
        "width": width,
        "height": height,
    }
    if user is not None:
        body["user"] = user
    if group is not None:
        body["group"] = group
    client = ctx.client(ref.remote)
    operation = client.request("POST", f"/1.0/containers/{ref.name}/exec", json=body).json()
    from orchestrator.cli.execstream import relay  # aiohttp: only exec pays for it

    forward = not disable_stdin and _stdin_usable()
    return asyncio.run(relay(client, operation, interactive, forward))


def _size() -> tuple[int, int]:
    from orchestrator.cli.terminal import size

    return size(0)


exec_.name = "exec"

COMMANDS = [exec_]
