"""Entry point of ``orch``: the command group and the error boundary.

Nothing a user does may end in a traceback: every :class:`OrchError` becomes ``Error: <message>`` on
stderr and exit status 1; an unexpected exception is reported the same way (with ``ORCH_DEBUG=1`` showing
the traceback for developers).
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from orchapi.errors import OrchError
from orchestrator.cli import config as config_cmds
from orchestrator.cli import containers, hosts, images, jobs, monitor, remote
from orchestrator.cli.context import Context


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="orch", prog_name="orch")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """orch: copy, move and run system containers across hosts."""
    ctx.obj = Context()


cli.add_command(remote.remote)
cli.add_command(images.image)
cli.add_command(config_cmds.config)
for command in containers.COMMANDS + jobs.COMMANDS + monitor.COMMANDS + hosts.COMMANDS:
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and map every failure to a one-line message and a non-zero status."""
    try:
        result = cli.main(args=argv, prog_name="orch", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Abort:
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
