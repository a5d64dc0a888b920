"""Name rules, the same as LXD's, checked on both sides of the API.

Container names become hostnames inside the container, so LXD restricts them to RFC 1123 labels that do
not start with a digit; snapshot names only need to be safe as a path component. Checking in the client
gives the user an early, clear error; checking in the agent is what actually protects it.
"""

from __future__ import annotations

import re

from orchapi.errors import BadRequest

# matched with fullmatch: ``$`` also matches before a trailing newline, so "c9\n" passed a ``match``
_CONTAINER = re.compile(r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SNAPSHOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_REMOTE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")


def check_container_name(name: str) -> str:
    """Return ``name`` if it is a valid container name, else raise :class:`BadRequest`."""
    if not isinstance(name, str) or not _CONTAINER.fullmatch(name):
        raise BadRequest(
            f"invalid container name {name!r}",
            "use 1-63 letters, digits and hyphens, starting with a letter and not ending with a hyphen",
        )
    return name


def check_snapshot_name(name: str) -> str:
    """Return ``name`` if it is a valid snapshot name, else raise :class:`BadRequest`."""
    if not isinstance(name, str) or not _SNAPSHOT.fullmatch(name):
        raise BadRequest(
            f"invalid snapshot name {name!r}",
            "use 1-63 letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


def check_remote_name(name: str) -> str:
    """Return ``name`` if it is a valid remote name, else raise :class:`BadRequest`."""
    if not isinstance(name, str) or not _REMOTE.fullmatch(name):
        raise BadRequest(
            f"invalid remote name {name!r}",
            "use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


def check_alias_name(name: str) -> str:
    """Return ``name`` if it is a valid image alias, else raise :class:`BadRequest`."""
    if not isinstance(name, str) or not _ALIAS.fullmatch(name) or ".." in name:
        raise BadRequest(f"invalid image alias {name!r}", "use letters, digits, '.', '_', '/' and '-'")
    return name
