"""Step 3 — pull_image: the target makes sure it has the container's base image.

It uses its own copy when it has the fingerprint, else pulls the tarball from the source agent (one-time
secret, pinned certificate) and imports it with all the usual checks. The image lets the target pre-fill
the new container so that only the difference travels in the next step. A base image the source no
longer has is not an error: the transfer then simply sends everything. In push and relay mode (or when
the target cannot reach the source) the target does not dial the source: the worker carries the image
from the source's export to the target's import instead.
"""

from __future__ import annotations

import logging

from orchapi.api.receive import ImageFromMigration
from orchapi.errors import NotFound, OrchError, PeerUnreachable
from orchapi.imagecopy import carry_image, has_image
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext
from orchestrator.tasks.common import source, target

log = logging.getLogger(__name__)


def pull(ctx: StepContext, job: Job) -> None:
    s = job.state
    if not s.base_image:
        return
    if s.mode not in (None, "pull"):
        carry(ctx, job)  # the target is not to dial the source (pushed or relayed)
        return
    secret = ctx.jobs.secrets(job.id).get("image")
    if not secret:
        raise OrchError("the migration secrets expired before the image was pulled; run the job again")
    request = ImageFromMigration(s.migration_url, secret, s.source_certificate, s.base_image)
    ctx.jobs.update(job.id, stage="image")
    try:
        result = target(ctx, job, timeout=600).pull_image(request)
    except NotFound:
        ctx.jobs.update_state(job, image_missing=True)
        return
    except PeerUnreachable as exc:
        if (job.options.get("mode") or "auto") == "pull":
            raise
        # the target cannot reach the source: the container will go the other way round (push), and
        # the image through the worker
        log.info("job %s: the target cannot pull the image (%s); the worker carries it", job.id, exc)
        ctx.jobs.update_state(job, mode="push")
        carry(ctx, job)
        return
    ctx.jobs.update_state(job, image_cached=bool(result.get("cached")), image_bytes=result.get("bytes", 0))


def carry(ctx: StepContext, job: Job) -> None:
    """The worker carries the image from the source's export to the target's import (both trust it),
    unless the target has it; a source that lost it means no pre-fill, as in a pull."""
    fingerprint = job.state.base_image
    tgt = target(ctx, job, timeout=600)
    if has_image(tgt, fingerprint):
        ctx.jobs.update_state(job, image_cached=True)
        return
    try:
        moved = carry_image(source(ctx, job, timeout=600), tgt, fingerprint, what=job.state.target_remote)
    except NotFound:
        ctx.jobs.update_state(job, image_missing=True)
        return
    ctx.jobs.update_state(job, image_cached=False, image_bytes=moved, image_carried=True)
