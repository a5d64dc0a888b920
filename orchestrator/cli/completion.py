"""Shell completion of remote and container names (click's completion, see the README).

``fo`` completes to the remotes (``foo:``); ``foo:c`` to foo's containers (``foo:c1``), asked of its agent
with a short timeout so that a slow or unreachable agent costs a pause, never a hang or a message.
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

#: how long one completion may wait for an agent
TIMEOUT = 2.0


def remotes(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from orchestrator.clientconfig import ClientConfig

    try:
        names = sorted(ClientConfig().remotes)
    except Exception:  # noqa: BLE001 - completion must never print an error into the shell
        return []
    return [CompletionItem(f"{n}:", type="plain") for n in names if f"{n}:".startswith(incomplete)]


def containers(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    if ":" not in incomplete:
        return [CompletionItem(i.value, type="nospace") for i in remotes(ctx, param, incomplete)]
    remote, _, prefix = incomplete.partition(":")
    try:
        from orchestrator.clientconfig import ClientConfig
        from orchestrator.connect import connect

        found = sorted(connect(ClientConfig(), remote, timeout=TIMEOUT).container_names())
    except Exception:  # noqa: BLE001 - as above
        return []
    return [CompletionItem(f"{remote}:{n}") for n in found if n.startswith(prefix)]
