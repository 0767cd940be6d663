"""Pytest entry point that grades a student's file given by path.

    MINICRATE_STUDENT=path/to/ch03_coding_rate.ipynb pytest tests/grade_student.py
    MINICRATE_STUDENT=hw.py pytest tests/grade_student.py -m task3_2      # one task

The file (``.py``, ``.ipynb`` or MyST ``.md``) is imported with
``importlib.util.spec_from_file_location`` under a fresh module name
(:func:`minicrate.grading.load_student_module`), never as ``minicrate``.  One
test per task, marked ``task3_2`` etc.; tasks whose function the file does not
define, and for a file named after a notebook the tasks of other notebooks, are
skipped, and each failure prints the grader's full report (where,
how far off, and the hint for a known mistake).  Optional:
``MINICRATE_GRADING_SEED`` (private cases) and ``MINICRATE_GRADING_EXAMPLES``.

This file is not collected by a plain ``pytest`` run (its name does not start
with ``test_``); it is run on purpose.
"""

import os

import pytest

from minicrate import grading

STUDENT = os.environ.get("MINICRATE_STUDENT")
# a file named after an exercise notebook is graded on that notebook's tasks only, as
# ``minicrate grade`` does (a notebook also defines the functions it provides)
OWN_TASKS = grading.tasks_of_notebook(STUDENT) if STUDENT else []

pytestmark = pytest.mark.skipif(not STUDENT, reason="set MINICRATE_STUDENT to the file to grade")


@pytest.fixture(scope="module")
def student_module():
    return grading.load_student_module(STUDENT)


@pytest.mark.parametrize(
    "task_id",
    [
        pytest.param(t.id, marks=getattr(pytest.mark, t.marker), id=f"task{t.id}")
        for t in grading.TASKS.values()
    ],
)
def test_task(task_id, student_module):
    task = grading.TASKS[task_id]
    if OWN_TASKS and task_id not in OWN_TASKS:
        pytest.skip(f"task {task_id} is not a task of {os.path.basename(STUDENT)}'s notebook")
    fn = getattr(student_module, task.function, None)
    if fn is None:
        pytest.skip(f"{STUDENT} defines no {task.function}")
    forward = getattr(student_module, task.forward_name, None) if task.forward_name else None
    examples = os.environ.get("MINICRATE_GRADING_EXAMPLES")
    result = grading.check(task, fn, forward=forward, examples=int(examples) if examples else None)
    assert result.passed, "\n" + str(result)
