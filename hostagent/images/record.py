"""An imported image as the store records it (``<fingerprint>.json``) and the API shows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImageRecord:
    fingerprint: str
    size: int
    filename: str
    uploaded_at: str
    created_at: str
    architecture: str
    properties: dict[str, str] = field(default_factory=dict)
    aliases: list[dict[str, str]] = field(default_factory=list)  # [{"name":..., "description":...}]
    #: the image's init program, from metadata.yaml (``properties.init``), default /sbin/init
    init: str = "/sbin/init"

    def to_api(self) -> dict[str, Any]:
        """The LXD-shaped JSON form (``GET /1.0/images/<fingerprint>``)."""
        return {
            "fingerprint": self.fingerprint,
            "size": self.size,
            "filename": self.filename,
            "uploaded_at": self.uploaded_at,
            "created_at": self.created_at,
            "architecture": self.architecture,
            "properties": dict(self.properties),
            "aliases": [dict(a) for a in self.aliases],
            "public": False,
            "type": "container",
        }
