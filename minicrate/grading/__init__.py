r"""Floor 7: the grading reference for the exercise notebooks in ``exercises/``.

A course grades a student's implementation of one exercise task with

>>> from minicrate.grading import check
>>> result = check("3.2", coding_rate_grad)      # doctest: +SKIP
>>> print(result)                                 # doctest: +SKIP
Task 3.2 coding_rate_grad: passed (score 1.00)
  ok    runs on all 9 cases and returns the documented structure
  ok    dR/dZ matches the reference on all 9 cases
  ok    dR/dZ agrees with finite differences of the reference R on 2 cases

What happens inside :func:`check`:

1. The task's **cases** are drawn with Hypothesis from :mod:`minicrate.checks.strategies`
   (sizes, hyper-parameters and a seed; the arrays are then generated from the
   seed, float64).  Generation is seeded, so every run sees the same cases; an
   instructor changes them with ``seed=`` (or ``MINICRATE_GRADING_SEED``) and
   adds more with ``examples=``.  Edge cases (one token, one head, a batch of
   one) come first.
2. The student's function runs on copies of every case.  An exception never
   escapes: ``NotImplementedError`` makes the result "not implemented", any
   other exception fails the "runs" property with the exception and the case.
3. Each output (and each gradient) is compared with the reference
   implementation in :mod:`minicrate`, entry by entry, with CS231n's relative
   error (the floor scaled as in :mod:`minicrate.checks.gradcheck`) and a tolerance of
   1e-6 (float64; correct code agrees to about 1e-12).
4. Gradients are also compared with **finite differences** of the reference
   forward function (:func:`minicrate.check_vjp`), which needs no trusted
   backward at all.
5. When an output is wrong, the output of every **known mistake** of that task
   (:class:`~minicrate.grading.types.Mistake`, a deliberately wrong output, e.g. the missing
   :math:`\bar S^\top` term of shared query/key attention) is computed on the
   same case; if the student's output equals one of them, its hint is shown.

The registry :data:`TASKS` (task id -> :class:`~minicrate.grading.types.Task`, built in
:mod:`minicrate.grading.tasks`, one module per chapter) is explicit; print
``describe()`` to list every task, what it checks and which mistakes it
recognises.  Task ids are ``chapter.number``: task 5.2 is the second task of
the notebook that goes with chapter 5 of the book, and its pytest marker is
``task5_2``.

Grading a student's *file* (``.py``, or a notebook as ``.ipynb``/MyST ``.md``)
goes through :func:`grade_file` (:mod:`minicrate.grading.files`); it imports **that file** with
``importlib.util.spec_from_file_location`` under a fresh module name, never
the reference.  ``python -m minicrate grade PATH`` and ``tests/grade_student.py``
use it.

The modules, bottom up: ``types`` (tasks, cases, results), ``compare``,
``cases``, ``mistakes`` (wrong outputs built from the library's own),
``tasks`` (one module per chapter), ``registry``, ``engine`` (:func:`check`),
``files`` (grading a file), ``sandbox`` and ``classroom`` (grading a folder of
submissions, each in a time- and memory-limited subprocess whose outputs are
compared here: ``python -m minicrate grade-class``) and ``student`` (the
student handout).  It is
host-side tooling, like the finite-difference checker: it compares results
in NumPy, whatever backend the cases are built on.
"""

from minicrate.grading.cases import default_seed, draw_specs, make_cases
from minicrate.grading.compare import as_host, compare, matches
from minicrate.grading.engine import check
from minicrate.grading.files import (
    grade_file,
    grade_module,
    gradescope_json,
    load_student_module,
    tasks_of_notebook,
)
from minicrate.grading.registry import all_tasks, describe, get_task, solution
from minicrate.grading.types import (
    DEFAULT_SEED,
    FLOOR,
    RTOL,
    Case,
    CheckResult,
    FiniteDifferences,
    Mistake,
    PropertyResult,
    Task,
)

__all__ = [
    "DEFAULT_SEED", "FLOOR", "RTOL", "Case", "CheckResult", "FiniteDifferences", "Mistake",
    "PropertyResult", "Task", "all_tasks", "as_host", "check", "compare", "default_seed",
    "describe", "draw_specs", "get_task", "grade_file", "grade_module", "gradescope_json",
    "load_student_module", "make_cases", "matches", "solution", "tasks_of_notebook",
]


def __getattr__(name):  # TASKS is built on first use, to keep `import minicrate` light
    if name == "TASKS":
        return all_tasks()
    raise AttributeError(f"module 'minicrate.grading' has no attribute {name!r}")
