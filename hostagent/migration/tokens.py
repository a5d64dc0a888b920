"""Migration tokens: one-shot bearer secrets for the migration data endpoints.

``POST /1.0/containers/<name>/migration`` issues one token per channel (``image`` and ``fs``). A token

- has 256 random bits (:func:`secrets.token_urlsafe` of 32 bytes) and is stored only as its SHA-256 hash,
  compared with :func:`hmac.compare_digest`;
- is scoped to its migration (container, snapshot list), to its channel and to the SHA-256 fingerprint of
  the target agent's certificate: the TLS client certificate of the connection that redeems it must be
  that one;
- must be redeemed within the TTL (default 60 s, at most 600 s) and is revoked by its first use: a second
  connection with the same token is refused, the first one keeps running.

Tokens live in memory only: restarting the agent invalidates every outstanding token (the orchestrator then
asks for new ones). Revoking a migration (``DELETE /1.0/migrations/<id>``) refuses its unused tokens and
aborts the transfers running on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from orchapi.api.migration import DEFAULT_TTL, MAX_TTL
from orchapi.errors import BadRequest, Forbidden, NotFound

CHANNELS = ("image", "fs")
#: how long a migration is remembered after its tokens expired (so a late DELETE still answers 200)
KEEP_SECONDS = 3600.0


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass
class Migration:
    """One issued migration: what may be sent, to whom, and the state of its tokens."""

    id: str
    container: str
    snapshot: str | None
    snapshots: list[str]
    instance_only: bool
    base_image: str
    target_fingerprint: str
    target_certificate: str
    expires: float  # time.monotonic() deadline for the first use of each token
    expires_at: str  # the same, as an ISO 8601 time for the API
    hashes: dict[str, bytes]
    used: set[str] = field(default_factory=set)
    revoked: bool = False
    #: the job's bandwidth limit in bytes per second (--bwlimit; None: only the agents' own limits)
    bwlimit: int | None = None
    #: tasks streaming for this migration right now (cancelled by a revoke)
    sessions: set[asyncio.Task] = field(default_factory=set)

    def expired(self) -> bool:
        return time.monotonic() > self.expires

    @property
    def peer_fingerprint(self) -> str:
        """Who may redeem the tokens: the target agent (pull, push) or the relaying worker."""
        return self.target_fingerprint


class Scoped(Protocol):
    """What :func:`check_token` needs of a grant (a :class:`Migration`, a push sink)."""

    hashes: dict[str, bytes]
    used: set[str]
    revoked: bool

    @property
    def peer_fingerprint(self) -> str: ...

    def expired(self) -> bool: ...


def check_token(
    item: Scoped | None, channel: str, token: str, peer_fingerprint: str | None, consume: bool = True
) -> None:
    """Check a token for one connection and mark it used; :class:`Forbidden` if it must be refused.

    The token is burnt only when everything matches: a connection from the wrong agent does not use
    up the real peer's token. ``consume=False`` only checks (e.g. before a request turns out not to be
    a websocket upgrade).
    """
    expected = item.hashes.get(channel) if item is not None else None
    # always compare, even for an unknown grant, so timing does not tell which ids exist
    ok = hmac.compare_digest(token_hash(token or ""), expected or token_hash(secrets.token_hex(16)))
    if item is None or expected is None or not ok:
        raise Forbidden("invalid migration token")
    if item.revoked:
        raise Forbidden("migration token revoked")
    if peer_fingerprint is None or not hmac.compare_digest(peer_fingerprint, item.peer_fingerprint):
        raise Forbidden("this migration token was issued to another agent")
    if channel in item.used:
        raise Forbidden("migration token already used")
    if item.expired():
        raise Forbidden("migration token expired", "ask the source agent for a new migration")
    if consume:
        item.used.add(channel)


class MigrationRegistry:
    """The migrations this agent issued (in memory: an agent restart invalidates them all)."""

    def __init__(self, keep_seconds: float = KEEP_SECONDS) -> None:
        self._items: dict[str, Migration] = {}
        self.keep_seconds = keep_seconds

    def issue(
        self,
        container: str,
        snapshot: str | None,
        snapshots: list[str],
        instance_only: bool,
        base_image: str,
        target_fingerprint: str,
        target_certificate: str,
        ttl: int = DEFAULT_TTL,
    ) -> tuple[Migration, dict[str, str]]:
        """Register a migration; returns it and the clear-text tokens (shown once, never stored)."""
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
            raise BadRequest(f"ttl must be a whole number of seconds between 1 and {MAX_TTL}")
        self._purge()
        tokens = {channel: secrets.token_urlsafe(32) for channel in CHANNELS}
        migration = Migration(
            id=str(uuid.uuid4()),
            container=container,
            snapshot=snapshot,
            snapshots=list(snapshots),
            instance_only=instance_only,
            base_image=base_image,
            target_fingerprint=target_fingerprint,
            target_certificate=target_certificate,
            expires=time.monotonic() + ttl,
            expires_at=(datetime.now(UTC) + timedelta(seconds=ttl)).isoformat(),
            hashes={channel: token_hash(token) for channel, token in tokens.items()},
        )
        self._items[migration.id] = migration
        return migration, tokens

    def get(self, migration_id: str) -> Migration:
        migration = self._items.get(migration_id)
        if migration is None:
            raise NotFound(f"migration {migration_id} not found")
        return migration

    def redeem(
        self, migration_id: str, channel: str, token: str, peer_fingerprint: str | None, consume: bool = True
    ) -> Migration:
        """Check a token for one connection and revoke it; :class:`Forbidden` if it must be refused.

        The token is burnt only when everything matches: a connection from the wrong agent does not use
        up the real target's token. ``consume=False`` only checks (e.g. before a request turns out not to
        be a websocket upgrade).
        """
        migration = self._items.get(migration_id)
        check_token(migration, channel, token, peer_fingerprint, consume)
        assert migration is not None
        return migration

    def revoke(self, migration_id: str) -> Migration:
        """Refuse the migration's unused tokens and abort its running transfers (idempotent)."""
        migration = self.get(migration_id)
        migration.revoked = True
        for task in list(migration.sessions):
            task.cancel()
        return migration

    def _purge(self) -> None:
        cutoff = time.monotonic() - self.keep_seconds
        for mid in [m.id for m in self._items.values() if m.expires < cutoff and not m.sessions]:
            del self._items[mid]
