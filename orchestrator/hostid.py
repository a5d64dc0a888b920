"""Which host a remote names: an agent is known by its certificate, not by the names given to it.

A user may add one agent under several remote names (``ux-a`` and ``ux-a2`` over HTTPS, ``admin-foo``
over its unix socket). Anything that is a property of the *host* — its cordon, its evacuation, where its
evacuated containers went, its concurrency slots — must therefore be keyed by the agent's identity, the
SHA-256 fingerprint of its certificate, or a second name would be a way around it.

For an HTTPS remote the identity is the certificate pinned when the remote was added (no network call:
a connection through that remote only succeeds if the agent still presents exactly that certificate).
A unix-socket remote has no pinned certificate; the agent reports its fingerprint in ``GET /1.0``, which
is asked once and cached for a short while (the socket is the local admin path, so its answer is trusted).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from orchapi.errors import OrchError, Unavailable
from orchestrator.clientconfig import ClientConfig

#: how long a unix remote's reported fingerprint is reused (an agent behind a socket rarely changes,
#: but a long-running worker must notice a re-created agent eventually)
UNIX_TTL = 60.0

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_unix_cache: dict[str, tuple[float, str]] = {}
_unix_lock = threading.Lock()


@dataclass(frozen=True)
class Host:
    """One agent: its certificate fingerprint and every configured remote that names it (sorted)."""

    id: str
    names: tuple[str, ...]

    @property
    def name(self) -> str:
        """The name to show and to connect through first."""
        return self.names[0]

    @property
    def label(self) -> str:
        return ", ".join(self.names)


def identify(config: ClientConfig, remote: str, timeout: float = 10.0) -> str:
    """The fingerprint of the agent ``remote`` names (raises :class:`OrchError` if it can't be known)."""
    entry = config.get(remote)
    if not entry.is_unix:
        return config.pinned_fingerprint(remote).lower()
    path = entry.socket_path
    now = time.monotonic()
    with _unix_lock:
        cached = _unix_cache.get(path)
    if cached and now - cached[0] < UNIX_TTL:
        return cached[1]
    from orchestrator.connect import connect  # only here: an HTTPS remote's identity needs no request

    client = connect(config, remote, timeout=timeout)
    try:
        reported = client.server().certificate_fingerprint
    finally:
        client.close()
    if not isinstance(reported, str) or not _FINGERPRINT.fullmatch(reported.lower()):
        raise Unavailable(f"the agent of remote {remote} reports no certificate fingerprint")
    with _unix_lock:
        _unix_cache[path] = (now, reported.lower())
    return reported.lower()


def identities(
    config: ClientConfig, names: Iterable[str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """``name → fingerprint`` for every remote (or just ``names``) that can be identified, and
    ``name → why not`` for the others (a unix socket nobody answers on, a missing pinned certificate)."""
    known, unknown = {}, {}
    for name in sorted(config.remotes if names is None else names):
        try:
            known[name] = identify(config, name)
        except OrchError as exc:
            unknown[name] = str(exc)
    return known, unknown


def group(known: dict[str, str]) -> list[Host]:
    """Remotes with the same fingerprint folded into one :class:`Host`, ordered by first name."""
    by_id: dict[str, list[str]] = {}
    for name, fingerprint in known.items():
        by_id.setdefault(fingerprint, []).append(name)
    return sorted((Host(fp, tuple(sorted(names))) for fp, names in by_id.items()), key=lambda h: h.name)


def host_of(config: ClientConfig, remote: str) -> Host:
    """The host ``remote`` names, with every other remote naming it (those that can be identified)."""
    fingerprint = identify(config, remote)
    known, _ = identities(config, [n for n in config.remotes if n != remote])
    names = sorted({remote, *(n for n, fp in known.items() if fp == fingerprint)})
    return Host(fingerprint, tuple(names))


def describe_alias(name: str, host: Host) -> str:
    """``"ux-a2"`` or ``"ux-a2 (the same host as ux-a)"``: how to name a remote in an error."""
    others = [n for n in host.names if n != name]
    return f"{name} (the same host as {', '.join(others)})" if others else name
