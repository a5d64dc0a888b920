"""The steps of a job, defined once: Celery's task list (orchestrator/tasks/registry.py), the chain a
worker publishes for a job (orchestrator/workers/dispatcher.py), the words ``orch jobs`` shows
(jobtext.py) and the metrics' transfer step all come from :data:`STEPS`.

A step is a plain function ``fn(ctx, job)`` in its own module under orchestrator/tasks/; what every step
does around it (skip duplicates, leases, slots, retries, rollback, and ending the job after its kind's
last step) is orchestrator/stepping.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

COPY, MOVE, RENAME = "copy", "move", "rename"
KINDS = (COPY, MOVE, RENAME)
TRANSFERS = (COPY, MOVE)


@dataclass(frozen=True)
class Step:
    name: str
    #: ``module:function`` of the step's work
    work: str
    #: what it does, in words (``orch jobs``, the progress line)
    words: str
    #: the job kinds whose chain has this step
    kinds: tuple[str, ...]

    @property
    def task_name(self) -> str:
        return f"orch.{self.name}"


STEPS: tuple[Step, ...] = (
    Step(
        "verify_target", "orchestrator.tasks.verify_target:verify", "checking source and target", (COPY, MOVE)
    ),
    Step("issue_token", "orchestrator.tasks.issue_token:issue", "preparing the transfer", TRANSFERS),
    Step("pull_image", "orchestrator.tasks.pull_image:pull", "copying the base image", TRANSFERS),
    Step("transfer_delta", "orchestrator.tasks.transfer_delta:transfer", "transferring", TRANSFERS),
    Step("delete_source", "orchestrator.tasks.delete_source:delete", "deleting the source", (MOVE,)),
    Step("rename", "orchestrator.tasks.rename:rename_container", "renaming", (RENAME,)),
)
#: the step that moves the data (its progress is the job's bytes and rate)
TRANSFER = "transfer_delta"


def steps_for(kind: str) -> tuple[Step, ...]:
    """The chain of a job of ``kind``, in order."""
    return tuple(step for step in STEPS if kind in step.kinds)


def is_last(kind: str, step: str) -> bool:
    """Whether ``step`` ends a job of ``kind`` (its success is the job's)."""
    chain = steps_for(kind)
    return bool(chain) and chain[-1].name == step


def words_by_step() -> dict[str, str]:
    return {step.name: step.words for step in STEPS}
