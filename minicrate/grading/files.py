"""Grading a student's file: a ``.py`` module or a notebook (``.ipynb`` or MyST ``.md``).

The file itself is imported with ``importlib.util.spec_from_file_location``
under a fresh module name (never the reference); notebooks are first turned
into a temporary module whose cells each run inside ``try``.  Results can be
written in Gradescope's ``results.json`` format.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import sys
import tempfile
import time
import types
from collections.abc import Sequence

from minicrate.grading.compare import format_exception
from minicrate.grading.engine import check
from minicrate.grading.registry import all_tasks, get_task
from minicrate.grading.types import CheckResult


def _notebook_code(path: str) -> str:
    """The code cells of a notebook (``.ipynb`` or jupytext ``.md``) as a Python module.

    Each cell runs inside ``try``: a cell that fails (an exploration cell, a
    check of an unfinished task) does not stop later cells from defining
    their functions.  Cells that call ``check(`` are skipped (grading runs
    the checks itself), and IPython magics are dropped.
    """
    import jupytext  # optional (the dev extra); only notebooks need it
    nb = jupytext.read(path)
    parts = ["_minicrate_cell_errors = []"]
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        src = "\n".join(
            line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))
        )
        if "check(" in src and "def " not in src:
            continue
        parts.append(
            f"try:\n    exec(compile({src!r}, {f'{path} cell {index}'!r}, 'exec'), globals())\n"
            f"except Exception as _err:\n    _minicrate_cell_errors.append(({index}, repr(_err)))"
        )
    return "\n".join(parts) + "\n"


def load_student_module(path) -> types.ModuleType:
    """Import the student's file at ``path`` (``.py``, ``.ipynb`` or MyST ``.md``).

    Uses ``importlib.util.spec_from_file_location`` with a module name derived
    from the path's hash, so it never resolves to (or shadows) ``minicrate``
    itself.  Notebooks are first turned into a temporary ``.py`` file.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no student file at {path}")
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    mod_name = f"minicrate_student_{digest}_{int(time.time() * 1e6) % 10**9}"
    if path.endswith((".ipynb", ".md")):
        tmpdir = tempfile.mkdtemp(prefix="minicrate-grade-")
        py_path = os.path.join(tmpdir, f"{mod_name}.py")
        with open(py_path, "w", encoding="utf-8") as fh:
            fh.write(_notebook_code(path))
    elif path.endswith(".py"):
        py_path = path
    else:
        raise ValueError(f"cannot grade {path}: expected a .py, .ipynb or .md file")
    spec = importlib.util.spec_from_file_location(mod_name, py_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    printed = io.StringIO()
    try:  # what the file prints while it loads is not part of the grade report
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    module.__minicrate_source__ = path
    return module


def grade_module(module, tasks: Sequence[str] | None = None, **options) -> list:
    """Check every task (or the given ones) whose function the module defines.

    With ``tasks`` given, a task whose function is missing gets an ``"error"``
    result saying so; without, tasks whose function is absent are skipped.
    """
    chosen = [get_task(t) for t in tasks] if tasks else list(all_tasks().values())
    results = []
    for t in chosen:
        fn = getattr(module, t.function, None)
        if fn is None:
            if tasks:
                results.append(
                    CheckResult(
                        t.id,
                        t.function,
                        "error",
                        0.0,
                        [],
                        0.0,
                        f"no function named {t.function} in the file",
                    )
                )
            continue
        forward = getattr(module, t.forward_name, None) if t.forward_name else None
        results.append(check(t, fn, forward=forward, **options))
    return results


def grade_file(path, tasks: Sequence[str] | None = None, **options) -> list:
    """Load the student's file (see :func:`load_student_module`) and grade it.

    Without ``tasks``: a file named after an exercise notebook is graded on that
    notebook's tasks (:func:`tasks_of_notebook`), any other file on every task
    whose function it defines.

    An import error becomes one ``"error"`` result per requested task
    (or a single result named ``"import"``); it never raises for the student's code.
    """
    try:
        module = load_student_module(path)
    except (FileNotFoundError, ValueError):
        raise
    except BaseException as err:  # noqa: BLE001 -- includes SystemExit from a student file
        note = f"could not import {path}: {format_exception(err)}"
        ids = list(tasks) if tasks else ["import"]
        return [CheckResult(str(t), "-", "error", 0.0, [], 0.0, note) for t in ids]
    if not tasks:
        tasks = tasks_of_notebook(path) or None
    return grade_module(module, tasks, **options)


def tasks_of_notebook(path) -> list:
    """Ids of the tasks of the exercise notebook ``path`` is a copy of (matched by file name:
    ``ch08_mssa_backward-alice.ipynb`` is ``ch08_mssa_backward.md``), or ``[]``.

    A notebook also defines provided functions (exercise 8 provides task 5.2's
    forward); grading a notebook file checks only its own tasks.
    """
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return [t.id for t in all_tasks().values() if stem.startswith(os.path.splitext(t.notebook)[0])]


def gradescope_json(results) -> dict:
    """Results in Gradescope's ``results.json`` format (one test per task, 1 point each)."""
    tests = [
        {
            "name": f"Task {r.task} {r.function}",
            "score": round(r.score, 4),
            "max_score": 1.0,
            "output": str(r),
            "status": "passed" if r.passed else "failed",
        }
        for r in results
    ]
    return {"score": round(sum(t["score"] for t in tests), 4), "tests": tests}
