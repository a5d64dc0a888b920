"""The image store of an LXD-backed agent: LXD's own images, plus a local cache of their rootfs.

What users see (list, get, aliases, delete) is LXD's image list, so an image imported with
``lxc image import`` is as usable as one imported with ``orch image import``, and the other way round.
Imports through orch go through the same checks as on native agents first (the tarball is validated and
unpacked by :class:`ImageStore` into the cache), then are handed to LXD byte for byte, so the fingerprint
stays the SHA-256 of the tarball on both sides.

The cache exists for migrations: a target pre-fills a new container from the image's unpacked rootfs
(rsync then sends only the difference), and a source serves the image's tarball to a target that lacks
it. An image only LXD has is exported from LXD into the cache the first time either is needed.
"""

from __future__ import annotations

import errno
import uuid
from pathlib import Path
from typing import Any

from hostagent.images.store import ImageRecord, ImageStore, sha256_file
from hostagent.lxd.client import LxdClient, path_of
from hostagent.safetar.cancel import CancelFlag
from orchapi.errors import BadRequest, Conflict, InsufficientStorage, NotFound
from orchapi.names import check_alias_name

_LIST_HINT = "see the images with `orch image list`"


class LxdImageStore:
    """Same interface as :class:`ImageStore`, backed by an LXD daemon."""

    def __init__(self, client: LxdClient, cache: ImageStore) -> None:
        self.client = client
        self.cache = cache
        self.storage = cache.storage

    # ------------------------------------------------------------------------------------ queries

    def list(self) -> list[ImageRecord]:
        images = self.client.get("/1.0/images?recursion=1") or []
        records = [_record(i) for i in images if i.get("type", "container") == "container"]
        return sorted(records, key=lambda r: (r.uploaded_at, r.fingerprint))

    def get(self, ref: str) -> ImageRecord:
        """By full fingerprint, alias, or unique fingerprint prefix, as LXD resolves them."""
        if not isinstance(ref, str) or not ref:
            raise BadRequest("an image fingerprint or alias is required")
        fingerprint = self._resolve(ref)
        return _record(self.client.get(path_of("images", fingerprint)))

    def _resolve(self, ref: str) -> str:
        try:
            return str(self.client.get(path_of("images", "aliases", ref))["target"])
        except NotFound:
            pass
        try:
            return str(self.client.get(path_of("images", ref))["fingerprint"])
        except NotFound:
            raise NotFound(f"image {ref!r} not found", _LIST_HINT) from None

    # ------------------------------------------------------------------------------------ changes

    def upload_dir(self) -> Path:
        return self.cache.upload_dir()

    def import_tarball(
        self,
        path: Path,
        aliases: list[str] | None = None,
        fingerprint: str | None = None,
        cancel: CancelFlag | None = None,
    ) -> ImageRecord:
        """Validate and cache the tarball (all of ImageStore's checks), then import it into LXD.

        ``cancel`` stops the validation and unpacking (see :meth:`ImageStore.import_tarball`); the upload
        to LXD, once started, runs to its end."""
        path = Path(path)
        aliases = list(aliases or [])
        for name in aliases:
            check_alias_name(name)
            try:
                self.client.get(path_of("images", "aliases", name))
            except NotFound:
                continue
            raise Conflict(f"image alias {name} already exists", "delete it first to point it elsewhere")
        fingerprint = fingerprint or sha256_file(path, cancel)
        if self._in_lxd(fingerprint):
            path.unlink(missing_ok=True)
            raise Conflict("image already exists", _LIST_HINT)
        try:
            self.cache.get(fingerprint)
            path.unlink(missing_ok=True)  # cached by an earlier migration: LXD only lacks it
            cached = False
        except NotFound:
            self.cache.import_tarball(path, [], fingerprint, cancel)
            cached = True
        try:
            self._upload(fingerprint)
        except BaseException:
            if cached:
                self._drop_cached(fingerprint)
            raise
        for name in aliases:
            self.alias_create(name, fingerprint)
        return self.get(fingerprint)

    def _in_lxd(self, fingerprint: str) -> bool:
        try:
            self.client.get(path_of("images", fingerprint))
            return True
        except NotFound:
            return False

    def _upload(self, fingerprint: str) -> None:
        with open(self.cache.tarball_path(fingerprint), "rb") as fh:
            doc = self.client.request(
                "POST",
                "/1.0/images",
                data=fh,
                headers={"Content-Type": "application/octet-stream", "X-LXD-fingerprint": fingerprint},
                timeout=600,
            )
        if doc.get("type") == "async":
            self.client.wait(doc, 600)

    def delete(self, fingerprint: str) -> None:
        record = self.get(fingerprint)
        self.client.call("DELETE", path_of("images", record.fingerprint))
        self._drop_cached(record.fingerprint)

    def _drop_cached(self, fingerprint: str) -> None:
        try:
            self.cache.delete(fingerprint)
        except NotFound:
            pass

    # ------------------------------------------------------------------------------------ files

    def _cached(self, fingerprint: str) -> str:
        """The full fingerprint, with the image in the cache (exported from LXD if it was not)."""
        fp = self.get(fingerprint).fingerprint
        try:
            self.cache.get(fp)
            return fp
        except NotFound:
            pass
        upload = self.cache.upload_dir() / f"export-{uuid.uuid4().hex}"
        try:
            response = self.client.raw("GET", path_of("images", fp, "export"), stream=True, timeout=600)
            with response:
                if response.status_code != 200:
                    raise NotFound(f"image {fp[:12]} cannot be exported from LXD ({response.status_code})")
                if not response.headers.get("Content-Type", "").startswith("application/octet-stream"):
                    raise NotFound(
                        f"image {fp[:12]} is a split image (metadata and rootfs apart)",
                        "orch moves unified images only; the container is sent without an image pre-fill",
                    )
                with open(upload, "wb") as fh:
                    for chunk in response.iter_content(1 << 20):
                        fh.write(chunk)
        except OSError as exc:
            upload.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(f"no space left to cache image {fp[:12]}") from None
            raise
        try:
            self.cache.import_tarball(upload)
        except Conflict:
            pass  # another thread cached it meanwhile
        return fp

    def rootfs(self, fingerprint: str) -> Path:
        return self.cache.rootfs(self._cached(fingerprint))

    def tarball_path(self, fingerprint: str) -> Path:
        return self.cache.tarball_path(self._cached(fingerprint))

    # ------------------------------------------------------------------------------------ aliases

    def alias_create(self, name: str, target: str, description: str = "") -> None:
        check_alias_name(name)
        if not isinstance(description, str):
            raise BadRequest("alias description must be a string")
        fingerprint = self.get(target).fingerprint
        try:
            self.client.call(
                "POST",
                "/1.0/images/aliases",
                {"name": name, "target": fingerprint, "description": description},
            )
        except Conflict:
            raise Conflict(
                f"image alias {name} already exists", "delete it first to point it elsewhere"
            ) from None

    def alias_delete(self, name: str) -> None:
        check_alias_name(name)
        try:
            self.client.call("DELETE", path_of("images", "aliases", name))
        except NotFound:
            raise NotFound(f"image alias {name!r} not found") from None

    def alias_list(self) -> list[dict[str, str]]:
        aliases = self.client.get("/1.0/images/aliases?recursion=1") or []
        return sorted((_alias(a) for a in aliases), key=lambda a: a["name"])

    def alias_get(self, name: str) -> dict[str, str]:
        try:
            return _alias(self.client.get(path_of("images", "aliases", name)))
        except NotFound:
            raise NotFound(f"image alias {name!r} not found") from None


def _alias(a: dict[str, Any]) -> dict[str, str]:
    return {"name": a.get("name", ""), "description": a.get("description", ""), "target": a.get("target", "")}


def _record(image: dict[str, Any]) -> ImageRecord:
    properties = {str(k): str(v) for k, v in (image.get("properties") or {}).items()}
    return ImageRecord(
        fingerprint=image["fingerprint"],
        size=int(image.get("size") or 0),
        filename=image.get("filename") or "",
        uploaded_at=image.get("uploaded_at") or "",
        created_at=image.get("created_at") or "",
        architecture=image.get("architecture") or "",
        properties=properties,
        aliases=[
            {"name": a.get("name", ""), "description": a.get("description", "")}
            for a in image.get("aliases") or []
        ],
        init=properties.get("init") or "/sbin/init",
    )
