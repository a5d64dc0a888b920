"""Celery's tasks, one per step of orchestrator/chain.py: the only place where steps become tasks.

Named ``orch.<step>``; their body is the step machinery (orchestrator/stepping.py) around the step's
function. Imported by Celery through the app's ``include`` (orchestrator/celeryapp.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from celery import Task

from orchestrator.celeryapp import app
from orchestrator.chain import STEPS, Step
from orchestrator.stepping import StepTask, step


def work_of(definition: Step) -> Callable[..., Any]:
    module, function = definition.work.split(":")
    return getattr(importlib.import_module(module), function)


def register() -> dict[str, Task]:
    """Every step as a task of the app (idempotent: Celery keeps one task per name)."""
    return {
        definition.name: app.task(base=StepTask, bind=True, name=definition.task_name)(
            step(definition.name)(work_of(definition))
        )
        for definition in STEPS
    }


TASKS = register()
