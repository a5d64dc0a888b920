"""The agent's image store.

Layout under ``<data-dir>/images/``:
  ``<fingerprint>``            the imported tarball, byte for byte (fingerprint = its SHA-256)
  ``<fingerprint>.json``       ImageRecord fields
  ``<fingerprint>.rootfs/``    unpacked rootfs volume (made by the storage driver; a btrfs subvolume on btrfs)
  ``aliases.json``             alias name -> {target, description}
  ``tmp/``                     uploads in progress (cleaned at start)

``images/`` is mode 0700: nothing of an image is run in place (containers get clones of its rootfs), and
an unpacked image holds setuid files and files owned by ids a local user may have, none of which a local
user should reach.

``<fingerprint>.json`` is written last on import and removed first on delete, so an image exists exactly
when its record does; a tarball or volume without a record is debris from a crash and is removed at start.
JSON files are replaced atomically (written in ``tmp/``, then renamed), so a crash never leaves half a file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hostagent.images.record import ImageRecord
from hostagent.images.tarball import ImageMetadata, extract_rootfs, inspect_tarball
from hostagent.safetar.cancel import CancelFlag, checker
from hostagent.storage.base import StorageDriver
from orchapi.errors import BadRequest, Conflict, InsufficientStorage, InternalError, NotFound, OrchError
from orchapi.names import check_alias_name

_FINGERPRINT = re.compile(r"^[0-9a-f]{64}\Z")
_HEX = re.compile(r"^[0-9a-f]+\Z")
_HASH_CHUNK = 1024 * 1024
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_LIST_HINT = "see the images with `orch image list`"
_ALIAS_HINT = "see the aliases with `orch image alias list`"


class ImageStore:
    """Imported images, their unpacked rootfs volumes and their aliases, under one directory."""

    def __init__(self, root: Path, storage: StorageDriver) -> None:
        self.root = Path(root)
        self.storage = storage
        # reentrant: get() is used inside other locked methods
        self._lock = threading.RLock()
        self._importing: set[str] = set()
        self.root.mkdir(parents=True, exist_ok=True)
        # 0700: containers run from clones elsewhere; nobody else may reach an image's setuid files
        os.chmod(self.root, 0o700)
        StorageDriver._remove_tree(self._tmp)
        self._tmp.mkdir(mode=0o700)
        self._remove_debris()

    @property
    def _tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def _aliases_file(self) -> Path:
        return self.root / "aliases.json"

    def _record_file(self, fingerprint: str) -> Path:
        return self.root / f"{fingerprint}.json"

    def _volume(self, fingerprint: str) -> Path:
        return self.root / f"{fingerprint}.rootfs"

    def _tarball(self, fingerprint: str) -> Path:
        return self.root / fingerprint

    def upload_dir(self) -> Path:
        """Where the API writes uploads in progress (same filesystem as the store, so rename is atomic)."""
        return self._tmp

    # ------------------------------------------------------------------------------------------ import

    def import_tarball(
        self,
        path: Path,
        aliases: list[str] | None = None,
        fingerprint: str | None = None,
        cancel: CancelFlag | None = None,
    ) -> ImageRecord:
        """Validate, store and unpack the tarball at ``path``; all or nothing.

        ``path`` is consumed either way: moved into the store on success, removed on failure.
        ``fingerprint`` is the file's SHA-256 when the caller hashed it already (while receiving it).
        ``cancel`` (an event or a callable) stops the import between two chunks with
        :class:`~hostagent.safetar.cancel.Cancelled`, leaving nothing behind.
        """
        path = Path(path)
        aliases = list(aliases or [])
        claimed: str | None = None  # only the thread that claimed a fingerprint may release it
        try:
            for name in aliases:
                check_alias_name(name)
            fingerprint = fingerprint or sha256_file(path, cancel)
            self._claim(fingerprint)
            claimed = fingerprint
            return self._import(path, fingerprint, aliases, cancel)
        finally:
            if claimed is not None:
                with self._lock:
                    self._importing.discard(claimed)
            _unlink_quietly(path)

    def _claim(self, fingerprint: str) -> None:
        """Refuse an image that exists or is being imported by another thread right now."""
        with self._lock:
            if fingerprint in self._importing or self._record_file(fingerprint).exists():
                raise Conflict(f"image {fingerprint} already exists")
            self._importing.add(fingerprint)

    def _import(
        self, path: Path, fingerprint: str, aliases: list[str], cancel: CancelFlag | None
    ) -> ImageRecord:
        with self._lock:
            self._check_aliases_free(aliases)
        free = self.storage.free_bytes()
        metadata = inspect_tarball(
            path, cancel=cancel, budget=free, apparent_limit=self.storage.total_bytes()
        )
        self._check_space(path, metadata)
        created: list[Path] = []
        try:
            return self._unpack_and_commit(path, fingerprint, metadata, aliases, created, cancel)
        except OSError as exc:
            self._undo(fingerprint, created)
            if exc.errno in _NO_SPACE:
                raise InsufficientStorage("no space left on device while unpacking the image") from None
            raise
        except BaseException:
            self._undo(fingerprint, created)
            raise

    def _check_space(self, path: Path, metadata: ImageMetadata) -> None:
        # the decoded stream bounds what unpacking writes (a sparse member's holes are not in it, and
        # are not written either)
        need = metadata.uncompressed_size + path.stat().st_size
        free = self.storage.free_bytes()
        if need > free:
            raise InsufficientStorage(
                f"not enough free space to import the image: it needs {need} bytes, {free} are free",
                "free some space on the agent, e.g. delete unused images or containers",
            )

    def _unpack_and_commit(
        self,
        path: Path,
        fingerprint: str,
        metadata: ImageMetadata,
        aliases: list[str],
        created: list[Path],
        cancel: CancelFlag | None,
    ) -> ImageRecord:
        """Move, unpack, then write the record: the record is the commit point of an import."""
        tarball = self._tarball(fingerprint)
        created.append(tarball)
        shutil.move(path, tarball)
        volume = self._volume(fingerprint)
        created.append(volume)
        self.storage.delete_volume(volume)  # debris of a delete that failed half-way, if any
        self.storage.create_volume(volume)
        # inspected just above; a failure from here on removes the volume (see _undo)
        extract_rootfs(tarball, volume, cancel=cancel, budget=metadata.data_size, inspected=True)
        record = ImageRecord(
            fingerprint=fingerprint,
            size=tarball.stat().st_size,
            filename=f"{fingerprint}.tar.gz" if metadata.compressed else f"{fingerprint}.tar",
            uploaded_at=datetime.now(UTC).isoformat(),
            created_at=metadata.creation_date,
            architecture=metadata.architecture,
            properties=dict(metadata.properties),
            init=metadata.init,
        )
        with self._lock:
            self._check_aliases_free(aliases)  # again: another thread may have taken one meanwhile
            created.append(self._record_file(fingerprint))
            self._write_json(self._record_file(fingerprint), _record_to_json(record))
            if aliases:
                table = self._load_aliases()
                for name in aliases:
                    table[name] = {"target": fingerprint, "description": ""}
                self._write_json(self._aliases_file, table)
            return self._with_aliases(record, self._load_aliases())

    def _undo(self, fingerprint: str, created: list[Path]) -> None:
        """Remove what a failed import made, newest first; never mask the original error."""
        for item in reversed(created):
            try:
                if item == self._volume(fingerprint):
                    self.storage.delete_volume(item)
                else:
                    _unlink_quietly(item)
            except Exception:  # noqa: BLE001 - the import's own error is the one to report
                pass

    # ------------------------------------------------------------------------------------------ queries

    def list(self) -> list[ImageRecord]:
        """All images, oldest upload first."""
        with self._lock:
            table = self._load_aliases()
            records = [self._with_aliases(self._load(fp), table) for fp in self._fingerprints()]
        return sorted(records, key=lambda r: (_parse_time(r.uploaded_at), r.fingerprint))

    def get(self, ref: str) -> ImageRecord:
        """An image by full fingerprint, alias, or unique fingerprint prefix (in that order)."""
        if not isinstance(ref, str) or not ref:
            raise BadRequest("an image fingerprint or alias is required")
        with self._lock:
            table = self._load_aliases()
            fingerprint = self._resolve(ref, table)
            return self._with_aliases(self._load(fingerprint), table)

    def _resolve(self, ref: str, table: dict[str, dict[str, str]]) -> str:
        known = self._fingerprints()
        if ref in known:
            return ref
        if ref in table and table[ref]["target"] in known:
            return table[ref]["target"]
        prefix = ref.lower()
        matches = [fp for fp in known if fp.startswith(prefix)] if _HEX.match(prefix) else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise BadRequest(
                f"image fingerprint prefix {ref!r} is ambiguous: it matches {len(matches)} images",
                "give more characters of the fingerprint",
            )
        raise NotFound(f"image {ref!r} not found", _LIST_HINT)

    def delete(self, fingerprint: str) -> None:
        """Remove an image, its aliases, its rootfs volume and its tarball.

        Containers made from it are independent copies and keep working.
        """
        with self._lock:
            record = self.get(fingerprint)
            fp = record.fingerprint
            table = self._load_aliases()
            kept = {name: a for name, a in table.items() if a["target"] != fp}
            if kept != table:
                self._write_json(self._aliases_file, kept)
            self._record_file(fp).unlink()  # from here on the image no longer exists
        self.storage.delete_volume(self._volume(fp))
        _unlink_quietly(self._tarball(fp))

    def rootfs(self, fingerprint: str) -> Path:
        """The unpacked rootfs volume of an image (to be cloned, never written)."""
        return self._volume(self.get(fingerprint).fingerprint)

    def tarball_path(self, fingerprint: str) -> Path:
        """The imported tarball, byte for byte."""
        return self._tarball(self.get(fingerprint).fingerprint)

    # ------------------------------------------------------------------------------------------ aliases

    def alias_create(self, name: str, target: str, description: str = "") -> None:
        """Point a new alias at an image. :class:`Conflict` if the alias exists."""
        check_alias_name(name)
        if not isinstance(description, str):
            raise BadRequest("alias description must be a string")
        if not isinstance(target, str) or not target:
            raise BadRequest("alias target must be an image fingerprint")
        with self._lock:
            table = self._load_aliases()
            if name in table:
                raise Conflict(f"image alias {name} already exists", "delete it first to point it elsewhere")
            table[name] = {"target": self._resolve(target, table), "description": description}
            self._write_json(self._aliases_file, table)

    def alias_delete(self, name: str) -> None:
        with self._lock:
            table = self._load_aliases()
            if name not in table:
                raise NotFound(f"image alias {name!r} not found", _ALIAS_HINT)
            del table[name]
            self._write_json(self._aliases_file, table)

    def alias_list(self) -> list[dict[str, str]]:
        """All aliases, sorted by name, as ``{name, description, target}``."""
        with self._lock:
            table = self._load_aliases()
        return [_alias_api(name, table[name]) for name in sorted(table)]

    def alias_get(self, name: str) -> dict[str, str]:
        with self._lock:
            table = self._load_aliases()
        if name not in table:
            raise NotFound(f"image alias {name!r} not found", _ALIAS_HINT)
        return _alias_api(name, table[name])

    # ------------------------------------------------------------------------------------------ files

    def _fingerprints(self) -> set[str]:
        return {p.name[:-5] for p in self.root.glob("*.json") if _FINGERPRINT.match(p.name[:-5])}

    def _load(self, fingerprint: str) -> ImageRecord:
        try:
            data = json.loads(self._record_file(fingerprint).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFound(f"image {fingerprint!r} not found", _LIST_HINT) from None
        except ValueError as exc:
            raise InternalError(f"image record {fingerprint} is corrupt: {exc}") from None
        known = {f.name for f in fields(ImageRecord)} - {"aliases"}
        try:
            return ImageRecord(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise InternalError(f"image record {fingerprint} is incomplete: {exc}") from None

    def _load_aliases(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self._aliases_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise InternalError(f"image alias table {self._aliases_file} is corrupt: {exc}") from None
        return data if isinstance(data, dict) else {}

    def _check_aliases_free(self, aliases: list[str]) -> None:
        table = self._load_aliases()
        for name in aliases:
            if name in table:
                raise Conflict(f"image alias {name} already exists")
        if len(set(aliases)) != len(aliases):
            raise BadRequest("the same alias is given more than once")

    @staticmethod
    def _with_aliases(record: ImageRecord, table: dict[str, dict[str, str]]) -> ImageRecord:
        record.aliases = [
            {"name": name, "description": a.get("description", "")}
            for name, a in sorted(table.items())
            if a.get("target") == record.fingerprint
        ]
        return record

    def _write_json(self, path: Path, data: Any) -> None:
        """Write to a unique file in tmp/, fsync, rename over ``path``, fsync the directory."""
        tmp = self._tmp / f".{path.name}.{uuid.uuid4().hex}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _fsync_dir(path.parent)

    def _remove_debris(self) -> None:
        """Tarballs and volumes without a record were left by an import or delete that crashed."""
        known = self._fingerprints()
        for item in self.root.iterdir():
            fp = item.name.removesuffix(".rootfs")
            if not _FINGERPRINT.match(fp) or fp in known:
                continue
            if item.name.endswith(".rootfs"):
                self.storage.delete_volume(item)
            else:
                _unlink_quietly(item)


def _record_to_json(record: ImageRecord) -> dict[str, Any]:
    data = asdict(record)
    del data["aliases"]  # aliases.json is the one source of truth for aliases
    return data


def _alias_api(name: str, alias: dict[str, str]) -> dict[str, str]:
    return {"name": name, "description": alias.get("description", ""), "target": alias["target"]}


def has_image(images: Any, fingerprint: str) -> bool:
    """Whether ``images`` (an :class:`ImageStore` or a store of its shape) holds exactly this image."""
    try:
        return images.get(fingerprint).fingerprint == fingerprint
    except OrchError:
        return False


def sha256_file(path: Path, cancel: CancelFlag | None = None) -> str:
    check = checker(cancel)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            check()
            digest.update(chunk)
    return digest.hexdigest()


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
