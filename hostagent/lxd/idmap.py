"""LXD's id-map JSON (``volatile.last_state.idmap``) to and from orch's :class:`IdMap`.

A container volume's files are owned by host ids shifted by the map recorded in
``volatile.last_state.idmap``; ``[]`` means raw ids (a privileged container, or one never started).
Migrations carry the map the volume's owners are in, so the target can shift them into its own (native)
or record it for LXD to shift on the next start (LXD compares it with the map it allocates).
"""

from __future__ import annotations

import json
from typing import Any

from hostagent.runtimes.idmap import IdMap
from orchapi.errors import BadRequest


def parse(raw: str | None, name: str) -> IdMap | None:
    """The map of a ``volatile.*.idmap`` value; None for raw ids. Refuses maps orch cannot express."""
    if not raw:
        return None
    try:
        entries = json.loads(raw)
    except ValueError:
        raise BadRequest(f"container {name}: unreadable id map {raw[:80]!r}") from None
    if not entries:
        return None
    uid = gid = None
    for e in entries:
        if not isinstance(e, dict) or e.get("Nsid") != 0:
            raise _custom(name)
        pair = (int(e["Hostid"]), int(e["Maprange"]))
        if e.get("Isuid"):
            if uid is not None:
                raise _custom(name)
            uid = pair
        if e.get("Isgid"):
            if gid is not None:
                raise _custom(name)
            gid = pair
    if uid is None or gid is None or uid[1] != gid[1]:
        raise _custom(name)
    return IdMap(uid[0], uid[1], None if gid[0] == uid[0] else gid[0])


def _custom(name: str) -> BadRequest:
    return BadRequest(
        f"container {name} has a custom id map (raw.idmap or several ranges) that orch's transfer cannot "
        "carry",
        "move it with --method lxd-migration",
    )


def dump(idmap: IdMap | None) -> str:
    """``volatile.last_state.idmap`` for volumes whose owners are in ``idmap`` (None: raw ids)."""
    if idmap is None:
        return "[]"
    entries: list[dict[str, Any]] = [
        {"Isuid": True, "Isgid": False, "Hostid": idmap.host_base, "Nsid": 0, "Maprange": idmap.size},
        {"Isuid": False, "Isgid": True, "Hostid": idmap.gid_host_base, "Nsid": 0, "Maprange": idmap.size},
    ]
    return json.dumps(entries, separators=(",", ":"))
