"""Step 3 — pull_image: the target makes sure it has the container's base image.

It uses its own copy when it has the fingerprint, else pulls the tarball from the source agent (one-time
secret, pinned certificate) and imports it with all the usual checks. The image lets the target pre-fill
the new container so that only the difference travels in the next step. A base image the source no
longer has is not an error: the transfer then simply sends everything.
"""

from __future__ import annotations

from orchapi.errors import NotFound, OrchError
from orchestrator.celeryapp import app
from orchestrator.jobs import Job
from orchestrator.stepping import StepContext, StepTask, step
from orchestrator.tasks.common import target


def pull(ctx: StepContext, job: Job) -> None:
    s = job.state
    if not s.get("base_image"):
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
    ctx.jobs.update_state(job.id, image_cached=bool(result.get("cached")), image_bytes=result.get("bytes", 0))


pull_image = app.task(base=StepTask, bind=True, name="orch.pull_image")(step("pull_image")(pull))
