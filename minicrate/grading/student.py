"""The student handout: the exercise notebooks with their solutions stripped.

``python -m minicrate make-student SRC DEST`` calls :func:`make_student`.

Every MyST notebook in ``SRC`` (``exercises/``) is read with jupytext and
written to ``DEST`` twice, as MyST ``.md`` and as ``.ipynb``, with:

* each code region between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
  (nbgrader's markers) replaced, at the same indentation, by::

      # TODO: Implement for Task 3.1.
      raise NotImplementedError("Task 3.1: coding_rate")

  The task number is the nearest ``Task X.Y`` written above the region in
  the same cell (the stub's docstring says it) and the name is the
  enclosing ``def``; everything outside the markers -- signature,
  docstring, provided lines -- is kept;
* each such region in a markdown cell (a written answer) replaced by
  ``*Write your answer here.*``;
* every output and execution count cleared.

``DEST`` must be empty, absent, or a folder this command wrote before (it
holds a ``.minicrate-student`` marker); it is then emptied first, so the
bundle never carries stale files, caches or solutions.
"""

from __future__ import annotations

import os
import re
import shutil

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
MARKER_FILE = ".minicrate-student"
ANSWER_PLACEHOLDER = "*Write your answer here.*"

_TASK = re.compile(r"Task\s+(\d+\.\d+)")
_DEF = re.compile(r"^(\s*)def\s+(\w+)\s*\(")


def _regions(lines, where):
    """Pairs (begin, end) of line indices of solution regions; checks the pairing."""
    regions, open_at = [], None
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
            regions.append((open_at, i))
            open_at = None
        elif BEGIN in line or END in line:
            raise ValueError(f"{where}, line {i + 1}: a solution marker must be alone on its line")
    if open_at is not None:
        raise ValueError(f"{where}, line {open_at + 1}: '{BEGIN}' is never closed by '{END}'")
    return regions


def strip_code(source: str, where: str = "cell") -> str:
    """Replace every solution region of a code cell by a ``NotImplementedError`` stub."""
    lines = source.split("\n")
    regions = _regions(lines, where)
    if not regions:
        return source
    out, last = [], 0
    for begin, end in regions:
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
        label = f"Task {task}: {name}" if name else f"Task {task}"
        out += lines[last:begin]
        out += [
            f"{indent}# TODO: Implement for Task {task}.",
            f"{indent}raise NotImplementedError({label!r})",
        ]
        last = end + 1
    out += lines[last:]
    return "\n".join(out)


def strip_markdown(source: str, where: str = "cell") -> str:
    """Replace every solution region of a markdown cell (a written answer) by a placeholder."""
    lines = source.split("\n")
    regions = _regions(lines, where)
    out, last = [], 0
    for begin, end in regions:
        out += lines[last:begin] + [ANSWER_PLACEHOLDER]
        last = end + 1
    out += lines[last:]
    return "\n".join(out)


def strip_notebook(nb, where: str = "notebook"):
    """Strip solutions and outputs from a notebook (an nbformat node), in place; returns it."""
    for index, cell in enumerate(nb.cells):
        here = f"{where}, cell {index}"
        if cell.cell_type == "code":
            cell.source = strip_code(cell.source, here)
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":
            cell.source = strip_markdown(cell.source, here)
        if BEGIN in cell.source or END in cell.source:  # pragma: no cover - guarded above
            raise ValueError(f"{here}: a solution marker survived stripping")
    return nb


def is_exercise(path: str) -> bool:
    """A MyST notebook: a ``.md`` file whose front matter names jupytext or that has code cells."""
    if not path.endswith(".md"):
        return False
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    return "{code-cell}" in text


STUDENT_README = """\
# CRATE exercises

Open each notebook (``.ipynb`` in Jupyter, or the ``.md`` twin with jupytext) and work through
it top to bottom. Every task is a function whose body raises ``NotImplementedError``; replace
that line with your code and run the check cell under it. It prints what passed, what failed,
where, by how much, and a hint when your output matches a known mistake.

Notebooks: {listing}

Grade a whole file locally with ``python -m minicrate grade NOTEBOOK`` (needs minicrate
installed with its ``dev`` extra: ``pip install -e ".[dev]"``).
"""


def make_student(src: str, dest: str) -> list:
    """Write the student bundle of every exercise notebook in ``src`` into ``dest``.

    Returns the list of notebook stems written.
    """
    import jupytext  # optional (the dev extra)

    src, dest = os.path.abspath(src), os.path.abspath(dest)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"no exercises folder at {src}")
    if dest == src or dest.startswith(src + os.sep):
        raise ValueError(f"the student folder {dest} must lie outside the exercises folder {src}")
    if os.path.exists(dest):
        if not os.path.isdir(dest):
            raise ValueError(f"{dest} exists and is not a folder")
        if os.listdir(dest) and not os.path.exists(os.path.join(dest, MARKER_FILE)):
            raise ValueError(
                f"{dest} is not empty and was not written by make-student; "
                "choose an empty or new folder"
            )
        shutil.rmtree(dest)
    names = sorted(f for f in os.listdir(src) if is_exercise(os.path.join(src, f)))
    if not names:
        raise FileNotFoundError(f"no MyST exercise notebooks (.md with code cells) in {src}")
    stripped = []
    for name in names:  # strip everything before writing anything
        nb = jupytext.read(os.path.join(src, name), fmt="md:myst")
        stripped.append((name[:-3], strip_notebook(nb, os.path.join(src, name))))
    os.makedirs(dest)
    for stem, nb in stripped:
        jupytext.write(nb, os.path.join(dest, stem + ".md"), fmt="md:myst")
        jupytext.write(nb, os.path.join(dest, stem + ".ipynb"), fmt="ipynb")
    with open(os.path.join(dest, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(STUDENT_README.format(listing=", ".join(f"``{s}``" for s, _ in stripped)))
    with open(os.path.join(dest, MARKER_FILE), "w", encoding="utf-8") as fh:
        fh.write("written by `python -m minicrate make-student`; safe to delete\n")
    return [s for s, _ in stripped]
