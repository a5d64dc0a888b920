"""The one place that names the transfer methods' implementations (as LXD's storage/drivers/load.go).

Each method lives in a file of its own, knows only the interface (hostagent/transfer/base.py) and states
its own facts; this registry maps a negotiated name to its class, and everything that depends on the set
of methods is derived here from those facts: the order of preference (the classes' ranks), the tools
an agent needs, which methods an agent offers, and the method two agents agree on.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence

from hostagent.transfer.base import TransferMethod
from hostagent.transfer.btrfs import BtrfsMethod
from hostagent.transfer.lxd_migration import LxdMigrationMethod
from hostagent.transfer.rsync import RsyncMethod
from hostagent.transfer.tar import TarMethod
from orchapi.errors import BadRequest, Conflict

METHODS_ENV = "ORCH_AGENT_TRANSFER_METHODS"

#: every method by name, best first
METHODS: dict[str, type[TransferMethod]] = {
    cls.name: cls
    for cls in sorted((BtrfsMethod, RsyncMethod, TarMethod, LxdMigrationMethod), key=lambda c: c.rank)
}
#: the methods' names, best first (lxd-migration last: orch's own methods pre-fill from the image and
#: verify every file as it arrives, so they are the default)
PREFERENCE: tuple[str, ...] = tuple(METHODS)
#: the tool each method needs on both agents (methods that need none are not listed)
TOOLS: dict[str, str] = {name: cls.tool for name, cls in METHODS.items() if cls.tool is not None}


def method_class(name: str) -> type[TransferMethod]:
    """The class of the method ``name``; :class:`BadRequest` for a name no method has."""
    try:
        return METHODS[name]
    except KeyError:
        raise BadRequest(f"unknown transfer method {name!r}") from None


def get_method(name: str) -> TransferMethod:
    """A new instance of the method ``name``; :class:`BadRequest` for a name no method has."""
    return method_class(name)()


def available_methods(storage_methods: Sequence[str], env: dict[str, str] | None = None) -> tuple[str, ...]:
    """The methods this agent offers: its storage's, whose tools are installed, restricted by
    ``ORCH_AGENT_TRANSFER_METHODS`` (comma-separated, read at agent start; e.g. ``tar`` forces the
    fallback)."""
    env = os.environ if env is None else env
    methods = [
        m
        for m in storage_methods
        if m in METHODS and (METHODS[m].tool is None or shutil.which(METHODS[m].tool or ""))
    ]
    raw = env.get(METHODS_ENV, "").strip()
    if raw:
        wanted = [m.strip() for m in raw.split(",") if m.strip()]
        unknown = sorted(set(wanted) - set(METHODS))
        if unknown:
            raise ValueError(f"{METHODS_ENV}: unknown transfer method(s) {', '.join(unknown)}")
        methods = [m for m in methods if m in wanted]
        if not methods:
            raise ValueError(
                f"{METHODS_ENV}={raw} leaves no transfer method this agent's storage supports "
                f"({', '.join(storage_methods)})"
            )
    return tuple(methods)


def usable_between(methods: Iterable[str], layouts_alike: bool) -> list[str]:
    """Of this agent's ``methods``, those usable with a peer: the ones carrying whole volumes only
    between runtimes that lay volumes out alike."""
    return [m for m in methods if layouts_alike or not method_class(m).same_layout]


def negotiate(
    source: Sequence[str], target: Sequence[str], refresh: bool = False, wanted: str | None = None
) -> str:
    """The best-ranked method both sides support, or the ``wanted`` one (the user's ``--method``) if both
    support it; a refresh never uses a method that cannot update a copy (btrfs: see btrfs.py)."""
    if wanted:
        if wanted not in METHODS:
            raise BadRequest(f"unknown transfer method {wanted!r}", "use one of " + ", ".join(PREFERENCE))
        if refresh and not METHODS[wanted].refreshes:
            others = [n for n, cls in METHODS.items() if cls.refreshes]
            raise BadRequest(f"a refresh cannot use {wanted}", "use one of " + ", ".join(others))
        if wanted not in source or wanted not in target:
            raise Conflict(
                f"transfer method {wanted} is not available between these agents",
                f"source offers {', '.join(source) or 'none'}, target supports {', '.join(target) or 'none'}",
            )
        return wanted
    for name, cls in METHODS.items():
        if name in source and name in target and not (refresh and not cls.refreshes):
            return name
    raise Conflict(
        "the agents have no transfer method in common",
        f"source offers {', '.join(source) or 'none'}, target supports {', '.join(target) or 'none'}",
    )
