"""Helpers the steps share: the agents of a job and the URL by which the target reaches the source."""

from __future__ import annotations

from orchapi.errors import BadRequest
from orchestrator.clientconfig import ClientConfig
from orchestrator.connect import RemoteClient
from orchestrator.jobs import Job
from orchestrator.stepcontext import StepContext


def source(ctx: StepContext, job: Job, timeout: float = 30.0) -> RemoteClient:
    return ctx.client(job.state.source_remote, timeout)


def target(ctx: StepContext, job: Job, timeout: float = 30.0) -> RemoteClient:
    return ctx.client(job.state.target_remote, timeout)


def reachable_url(remote: str, client: RemoteClient) -> str:
    """The HTTPS URL another agent can use to reach ``remote``'s agent.

    For an HTTPS remote that is the remote's own address; for a unix-socket remote (``local:``) it is the
    address the agent reports listening on.
    """
    addr = ClientConfig.current().get(remote).addr
    if addr.startswith("https://"):
        return addr.rstrip("/")
    addresses = client.server().addresses
    if not addresses:
        raise BadRequest(
            f"the agent of remote {remote} has no HTTPS listener, so other agents can't reach it",
            "start orch-agent with --listen",
        )
    return f"https://{addresses[0]}"
