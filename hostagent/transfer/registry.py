"""The one place that names the transfer methods' implementations (as LXD's storage/drivers/load.go).

base.py defines the interface and the negotiation; each method lives in a file of its own and knows only
the interface; this registry alone maps a negotiated name to its implementation. ``lxd-migration`` is
not here: it moves no stream (LXD moves the data), so the sessions call it directly.
"""

from __future__ import annotations

from hostagent.transfer.base import TransferMethod
from hostagent.transfer.btrfs import BtrfsMethod
from hostagent.transfer.rsync import RsyncMethod
from hostagent.transfer.tar import TarMethod
from orchapi.errors import BadRequest

METHODS: dict[str, type[TransferMethod]] = {
    "btrfs": BtrfsMethod,
    "rsync": RsyncMethod,
    "tar": TarMethod,
}


def get_method(name: str) -> TransferMethod:
    """A new instance of the method ``name``; :class:`BadRequest` for a name no method has."""
    try:
        return METHODS[name]()
    except KeyError:
        raise BadRequest(f"unknown transfer method {name!r}") from None
