"""What a target agent keeps of an interrupted transfer to resume it (its ``/1.0/suspended-imports``).

A failed job leaves it there (the step's retries and ``orch jobs resume`` resume it, until the target's
``migration.resume_ttl``); a cancelled job removes it, in its rollback or, once failed, by ``orch jobs
cancel``. Light on purpose: the CLI uses it without importing Celery.
"""

from __future__ import annotations

import logging
from typing import Any

from orchapi.errors import NotFound, OrchError

log = logging.getLogger(__name__)


def discard_suspended(target: Any, name: str, strict: bool = False) -> bool:
    """Remove the target's suspended import of container ``name``; whether there was one. Any other
    failure (the target unreachable) is logged, or raised if ``strict`` (the CLI says it then)."""
    try:
        target.discard_suspended_import(name)
    except NotFound:
        return False
    except OrchError as exc:
        if strict:
            raise
        log.warning("discarding the suspended transfer of %s failed: %s", name, exc)
        return False
    return True
