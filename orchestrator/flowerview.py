"""How orch's tasks look in Flower's task list: which job each belongs to.

Flower shows a task's name, args and result columns; a step's args are ``(job id, label)``, which
Flower displays as a Python tuple. :func:`format_task` (Flower's ``format_task`` hook, set by
flowerconfig.py) shows ``foo:c1 → bar:c1 · job 1a2b…`` instead. A running transfer's live progress
("sending snapshot s1 (2/3): 120.50MiB at 30.12MiB/s") is the ``result`` of the ``task-progress``
events the worker sends (orchestrator/tasks/transfer_delta.py): Flower copies tasks with celery's own
fields only before the hook sees them, and ``result`` is one; the final event's result replaces it.
"""

from __future__ import annotations

import ast
import copy
from typing import Any


def _job_of(args: Any) -> tuple[str, str] | None:
    """(job id, label) from the args Flower has (a repr of the task's positional arguments)."""
    try:
        value = ast.literal_eval(args) if isinstance(args, str) else args
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[0], value[1]
    return None


def readable(task: Any) -> Any:
    """A copy of one Flower task with orch's view of its args and, while it runs, its progress."""
    if not str(getattr(task, "name", "") or "").startswith("orch."):
        return task
    task = copy.copy(task)  # Flower may hand its own state object: never change that
    job = _job_of(getattr(task, "args", None))
    if job is not None:
        task.args = f"{job[1]} · job {job[0]}"
    return task


def format_task(item: Any) -> Any:
    """Flower's hook: it passes a task, or (id, task) for its task list."""
    if isinstance(item, tuple) and len(item) == 2:
        return item[0], readable(item[1])
    return readable(item)
