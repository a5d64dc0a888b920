"""Entry point of ``orch``: the command group and the error boundary.

Nothing a user does may end in a traceback: every :class:`OrchError` becomes ``Error: <message>`` on
stderr and exit status 1; an unexpected exception is reported the same way (with ``ORCH_DEBUG=1`` showing
the traceback for developers).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from orchapi.errors import OrchError
from orchestrator.cli.context import Context

#: every command: its name, the module of orchestrator.cli defining it, and its attribute there. A
#: command's module is imported only when it runs (or for --help): `orch move` needs none of the
#: container, image or host commands' imports. tests/test_cli_commands.py keeps this equal to the
#: modules' own COMMANDS lists.
COMMANDS: dict[str, tuple[str, str]] = {
    "remote": ("remote", "remote"),
    "image": ("images", "image"),
    "config": ("config", "config"),
    **{
        name: ("containers", attr)
        for name, attr in (
            ("launch", "launch"),
            ("init", "init"),
            ("list", "list_"),
            ("info", "info"),
            ("start", "start"),
            ("stop", "stop"),
            ("restart", "restart"),
            ("snapshot", "snapshot"),
            ("delete", "delete"),
        )
    },  # fmt: skip
    "exec": ("execute", "exec_"),
    "console": ("console", "console"),
    "version": ("version", "version"),
    **{name: ("jobs", name) for name in ("copy", "move", "worker", "flower")},
    "jobs": ("joblist", "jobs"),
    "metrics": ("monitor", "metrics"),
    **{name: ("hosts", name) for name in ("hosts", "cordon", "uncordon", "evacuate", "restore")},
}


class LazyGroup(click.Group):
    """A command group that imports a command's module when the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module = importlib.import_module(f"orchestrator.cli.{where[0]}")
        command: click.Command = getattr(module, where[1])
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="orch", prog_name="orch")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """orch: copy, move and run system containers across hosts."""
    ctx.obj = Context()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every failure to a one-line message and a non-zero status."""
    try:
        result = cli.main(args=argv, prog_name="orch", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click turns Ctrl-C into Abort
            click.echo("Interrupted.", err=True)
            return 130
        click.echo("Aborted.", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except OrchError as exc:
        click.echo(f"Error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # the boundary: report, never dump a traceback on users
        if os.environ.get("ORCH_DEBUG"):
            traceback.print_exc()
        click.echo(
            f"Error: unexpected {type(exc).__name__}: {exc} (run with ORCH_DEBUG=1 for details)", err=True
        )
        return 1


def entry() -> None:
    sys.exit(main())
