"""The exercise tasks, one module per chapter of the book: the registry :data:`TASKS`.

Each :class:`~minicrate.grading.types.Task` says how its cases are drawn (a
Hypothesis strategy of sizes, hyper-parameters and a seed, turned into float64
arrays by :mod:`minicrate.checks.strategies`), what the reference outputs are
(minicrate's own implementation), how gradients are checked by finite
differences, and which **known mistakes** it recognises (see
:mod:`minicrate.grading.mistakes`).

Task ids are ``chapter.number`` and tie together the book chapter, the
exercise notebook (``exercises/chNN_*.md``), the grader and the pytest marker
(``task3_2``); ``python -m minicrate grade --list`` prints them all.
"""

from minicrate.grading.tasks import ch03, ch05, ch06, ch07, ch08, ch09, ch10, ch11

CHAPTERS = (ch03, ch05, ch06, ch07, ch08, ch09, ch10, ch11)


def _book_order(task):
    chapter, number = task.id.split(".")
    return int(chapter), int(number)


TASKS = {t.id: t for t in sorted((t for m in CHAPTERS for t in m.TASKS), key=_book_order)}
"""Task id -> :class:`~minicrate.grading.types.Task`, in book order."""
