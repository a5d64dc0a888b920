"""The target side of a migration: pull an image or a container from a source agent.

``POST /1.0/images`` with ``{"source": {"type": "migration", ...}}`` (:mod:`.image`) and ``POST
/1.0/containers`` with ``{"source": {"type": "migration", "mode": "pull", ...}}`` (:mod:`.start`,
:mod:`.session`) start operations that connect to the source agent over HTTPS with pinned certificates
(:mod:`.connect`); with ``"mode": "push"`` a sink waits for the source to connect (:mod:`.push`). The
request's options are parsed in :mod:`.request`, the source's header by
:class:`hostagent.migration.messages.Header`, and the volumes
are received, verified and checked against this host's policy (hostagent/migration/policy.py) in
:mod:`.volumes` before anything is committed.
"""

from hostagent.migration.target.image import start_image_pull
from hostagent.migration.target.start import start_pull

__all__ = ["start_image_pull", "start_pull"]
