"""The solution markers of the exercise notebooks, and the task each region belongs to.

A solution is the lines between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
(nbgrader's spelling), each marker alone on its line.  The task of a code region is
the nearest ``Task X.Y`` written above it in the same cell (the stub's docstring says
it), its name the enclosing ``def``.  The handout (:mod:`minicrate.grading.student`) and
the autograder formats (:mod:`minicrate.grading.autograders`) both read them here.
"""

from __future__ import annotations

import re

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"

_TASK = re.compile(r"Task\s+(\d+\.\d+)")
_DEF = re.compile(r"^(\s*)def\s+(\w+)\s*\(")


def regions(lines, where):
    """Pairs (begin, end) of line indices of solution regions; checks the pairing."""
    found, open_at = [], None
    for i, line in enumerate(lines):
        text = line.strip()
        if text == BEGIN:
            if open_at is not None:
                raise ValueError(
                    f"{where}, line {i + 1}: '{BEGIN}' inside another solution region "
                    f"(opened at line {open_at + 1})"
                )
            open_at = i
        elif text == END:
            if open_at is None:
                raise ValueError(f"{where}, line {i + 1}: '{END}' without a '{BEGIN}' before it")
            found.append((open_at, i))
            open_at = None
        elif BEGIN in line or END in line:
            raise ValueError(f"{where}, line {i + 1}: a solution marker must be alone on its line")
    if open_at is not None:
        raise ValueError(f"{where}, line {open_at + 1}: '{BEGIN}' is never closed by '{END}'")
    return found


def task_of_region(lines, begin, where):
    """``(task, name)`` of the region opened at line ``begin``: ``("3.1", "coding_rate")``
    (``name`` is ``None`` outside a ``def``)."""
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    task = name = None
    for j in range(begin - 1, -1, -1):
        if task is None:
            found = _TASK.findall(lines[j])
            if found:
                task = found[-1]
        m = _DEF.match(lines[j])
        if m and len(m.group(1)) < len(indent):
            name = name or m.group(2)
            if task is not None:
                break
    if task is None:
        raise ValueError(
            f"{where}, line {begin + 1}: no 'Task X.Y' above this solution region; "
            "name the task in the stub's docstring (e.g. 'Task 3.1: ...')"
        )
    return task, name


def stub_line(lines, begin, where):
    """The handout's replacement for the region opened at line ``begin``, at its indentation:
    ``raise NotImplementedError('Task 3.1: coding_rate')`` (the otter prompt says the same)."""
    indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
    task, name = task_of_region(lines, begin, where)
    label = f"Task {task}: {name}" if name else f"Task {task}"
    return f"{indent}raise NotImplementedError({label!r})"
