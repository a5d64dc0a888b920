"""The agent's trust store: trusted client certificates and the trust password.

A client is trusted when the SHA-256 fingerprint of the TLS certificate it presents is in the store. A new
client gets there once, by presenting the trust password together with its certificate. The password is
kept only as a salted scrypt hash and compared in constant time. Who may try a password, how often and
where the scrypt runs is :mod:`hostagent.enrolment`'s business, not the store's.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hostagent.jsonfile import read_json, write_json
from orchapi import certs
from orchapi.errors import BadRequest, Conflict, NotFound

# scrypt cost: ~16 MiB of memory and tens of milliseconds per guess (n=2**14, r=8, p=1)
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` with a fresh 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


class TrustStore:
    """Trusted client certificates (``certificates.json``) and the trust password (``server.json``)."""

    def __init__(self, data_dir: Path, on_added: Callable[[str], None] | None = None) -> None:
        self._certs_path = data_dir / "certificates.json"
        self._server_path = data_dir / "server.json"
        self._lock = threading.Lock()
        self._on_added = on_added

    # -- certificates -------------------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        return read_json(self._certs_path, {})

    def pems(self) -> list[str]:
        """PEMs of all trusted certificates (loaded into the TLS context at start)."""
        return [entry["certificate"] for entry in self._load().values()]

    def is_trusted(self, fingerprint: str) -> bool:
        return fingerprint in self._load()

    def list(self) -> list[dict[str, Any]]:
        return [
            {"fingerprint": fp, **{k: v for k, v in entry.items()}}
            for fp, entry in sorted(self._load().items())
        ]

    def get(self, prefix: str) -> dict[str, Any]:
        fp = self._resolve(prefix)
        return {"fingerprint": fp, **self._load()[fp]}

    def add(self, pem: str, name: str) -> str:
        """Trust the certificate ``pem``; returns its fingerprint. :class:`Conflict` if already trusted."""
        fingerprint = certs.fingerprint_pem(pem)
        if not isinstance(name, str) or not name or len(name) > 255:
            raise BadRequest("certificate name must be a non-empty string of at most 255 characters")
        with self._lock:
            entries = self._load()
            if fingerprint in entries:
                raise Conflict(f"certificate {fingerprint[:12]} is already trusted")
            entries[fingerprint] = {
                "name": name,
                "type": "client",
                "certificate": pem if isinstance(pem, str) else pem.decode(),
                "added_at": datetime.now(UTC).isoformat(),
            }
            write_json(self._certs_path, entries)
        if self._on_added:
            self._on_added(entries[fingerprint]["certificate"])
        return fingerprint

    def remove(self, prefix: str) -> str:
        with self._lock:
            fp = self._resolve(prefix)
            entries = self._load()
            del entries[fp]
            write_json(self._certs_path, entries)
        return fp

    def _resolve(self, prefix: str) -> str:
        prefix = prefix.lower()
        matches = [fp for fp in self._load() if fp.startswith(prefix)] if prefix else []
        if not matches:
            raise NotFound(f"no trusted certificate with fingerprint {prefix!r}")
        if len(matches) > 1:
            raise BadRequest(f"fingerprint prefix {prefix!r} is ambiguous", "give more characters")
        return matches[0]

    # -- trust password ------------------------------------------------------------------------------
    def server_config(self) -> dict[str, str]:
        return read_json(self._server_path, {})

    def has_password(self) -> bool:
        return bool(self.server_config().get("core.trust_password"))

    def set_password(self, password: str) -> None:
        """Store a new trust password (hashed); an empty password disables enrolment."""
        with self._lock:
            config = self.server_config()
            if password:
                config["core.trust_password"] = hash_password(password)
            else:
                config.pop("core.trust_password", None)
            write_json(self._server_path, config)

    def set_server_key(self, key: str, value: str) -> None:
        """Store a plain server config key (an empty value removes it)."""
        with self._lock:
            config = self.server_config()
            if value:
                config[key] = value
            else:
                config.pop(key, None)
            write_json(self._server_path, config)

    def check_password(self, password: str) -> bool:
        """Whether ``password`` is the trust password (blocking: one scrypt, whatever the outcome)."""
        encoded = self.server_config().get("core.trust_password")
        if not encoded or not isinstance(password, str):
            # still spend the scrypt time so timing does not tell whether a password is set
            verify_password(password if isinstance(password, str) else "", _unset_hash())
            return False
        return verify_password(password, encoded)


@functools.cache
def _unset_hash() -> str:
    """A hash no password matches in practice, made once: the no-password path costs one scrypt, as the
    other path does, not two."""
    return hash_password(base64.b64encode(os.urandom(32)).decode())
