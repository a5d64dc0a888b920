"""Step 3 — pull_image: the target makes sure it has the container's base image.

It uses its own copy when it has the fingerprint, else pulls the tarball from the source agent (one-time
secret, pinned certificate) and imports it with all the usual checks. The image lets the target pre-fill
the new container so that only the difference travels in the next step. A base image the source no
longer has is not an error: the transfer then simply sends everything.
"""

from __future__ import annotations

import logging

from orchapi.errors import NotFound, OrchError, PeerUnreachable
from orchestrator.celeryapp import app
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext, StepTask, step
from orchestrator.tasks.common import target

log = logging.getLogger(__name__)


def pull(ctx: StepContext, job: Job) -> None:
    s = job.state
    if not s.get("base_image"):
        return
    if s.get("mode") not in (None, "pull"):
        # the target is not to dial the source (pushed or relayed): its own copy pre-fills, if it has one
        # (carrying the image the same way is not built yet)
        ctx.jobs.update_state(job.id, image_missing=not _target_has(ctx, job, s["base_image"]))
        return
    secret = ctx.jobs.secrets(job.id).get("image")
    if not secret:
        raise OrchError("the migration secrets expired before the image was pulled; run the job again")
    body = {
        "source": {
            "type": "migration",
            "operation": s["migration_url"],
            "secret": secret,
            "certificate": s["source_certificate"],
            "fingerprint": s["base_image"],
        }
    }
    ctx.jobs.update(job.id, stage="image")
    try:
        result = target(ctx, job, timeout=600).run("POST", "/1.0/images", json=body)
    except NotFound:
        ctx.jobs.update_state(job.id, image_missing=True)
        return
    except PeerUnreachable as exc:
        if (job.options.get("mode") or "auto") == "pull":
            raise
        # the target cannot reach the source: the container goes the other way round (push), without
        # a pre-fill unless the target has the image already (pushing the image is not built yet)
        log.info("job %s: the target cannot pull the image (%s); transferring without it", job.id, exc)
        has = _target_has(ctx, job, s["base_image"])
        ctx.jobs.update_state(job.id, image_missing=not has, mode=s.get("mode") or "push")
        return
    ctx.jobs.update_state(job.id, image_cached=bool(result.get("cached")), image_bytes=result.get("bytes", 0))


def _target_has(ctx: StepContext, job: Job, fingerprint: str) -> bool:
    try:
        target(ctx, job).get(f"/1.0/images/{fingerprint}")
    except OrchError:
        return False
    return True


pull_image = app.task(base=StepTask, bind=True, name="orch.pull_image")(step("pull_image")(pull))
