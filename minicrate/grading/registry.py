"""The registry of exercise tasks: look a task up, list them, get minicrate's solution.

The tasks themselves live in :mod:`minicrate.grading.tasks`, one module per
exercise chapter; they are imported on first use, so ``import minicrate``
stays light and a missing Hypothesis gives one clear message.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from minicrate.grading.types import Task


def all_tasks() -> dict:
    """Task id -> :class:`~minicrate.grading.types.Task`, in book order."""
    try:
        module = importlib.import_module("minicrate.grading.tasks")
    except ModuleNotFoundError as err:
        if err.name != "hypothesis":
            raise
        raise ImportError(
            "minicrate.grading draws its cases with Hypothesis: pip install 'minicrate[dev]' "
            "(or pip install hypothesis)"
        ) from err
    return module.TASKS


def get_task(task_id) -> Task:
    """The :class:`Task` with id ``task_id`` (``"3.2"``, ``3.2`` or ``"task3_2"``)."""
    key = str(task_id)
    if key.startswith("task"):
        key = key[4:].replace("_", ".")
    tasks = all_tasks()
    if key not in tasks:
        raise KeyError(f"unknown task {task_id!r}; tasks are {', '.join(tasks)}")
    return tasks[key]


def solution(task_id) -> Callable:
    """minicrate's implementation of a task with the student's signature.

    It is the reference the grader compares with (nothing secret: it calls
    the library); notebooks use it as a stand-in for an unfinished task.
    """
    return get_task(task_id).solution


def describe(task_id=None) -> str:
    """Human-readable list of tasks (or one task): what each checks and the mistakes it knows."""
    tasks = [get_task(task_id)] if task_id is not None else list(all_tasks().values())
    lines = []
    for t in tasks:
        lines.append(
            f"Task {t.id}  {t.function}  ({t.book}; exercises/{t.notebook}; marker {t.marker})"
        )
        lines.append(f"  {t.title}")
        for c in t.checks:
            lines.append(f"  checks: {c}")
        for m in t.mistakes:
            lines.append(f"  recognises: {m.name}")
    return "\n".join(lines)
