"""The student handout: the exercise notebooks with their solutions stripped.

``python -m minicrate make-student SRC DEST`` calls :func:`make_student`; with
``--format otter`` or ``--format nbgrader`` it writes the notebooks, solutions kept, in
those autograders' formats instead (:mod:`minicrate.grading.autograders`).

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

Nothing is deleted before everything has been checked, and nothing the
instructor wrote is deleted at all without ``force``:

1. the source is read and every notebook stripped (a missing folder, no
   notebooks or a malformed solution marker stops here, with ``DEST`` untouched);
2. ``DEST`` may be absent, empty, or a folder this command wrote before: its
   ``.minicrate-student`` marker lists every file written, with its SHA-256.  A
   file there that is not on that list, or that was edited since, makes the
   command refuse (naming it) unless ``force``.  A ``DEST`` that is or contains
   the source or the current folder is refused even with ``force``;
3. the bundle is written into a temporary folder beside ``DEST``, which then
   takes ``DEST``'s place (two renames); a failure on the way leaves ``DEST`` as
   it was.  So the bundle never carries stale files, caches or solutions.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from minicrate.grading.markers import BEGIN, END, regions, stub_line, task_of_region

MARKER_FILE = ".minicrate-student"
ANSWER_PLACEHOLDER = "*Write your answer here.*"


def strip_code(source: str, where: str = "cell") -> str:
    """Replace every solution region of a code cell by a ``NotImplementedError`` stub."""
    lines = source.split("\n")
    found = regions(lines, where)
    if not found:
        return source
    out, last = [], 0
    for begin, end in found:
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        task, _ = task_of_region(lines, begin, where)
        out += lines[last:begin]
        out += [f"{indent}# TODO: Implement for Task {task}.", stub_line(lines, begin, where)]
        last = end + 1
    out += lines[last:]
    return "\n".join(out)


def strip_markdown(source: str, where: str = "cell") -> str:
    """Replace every solution region of a markdown cell (a written answer) by a placeholder."""
    lines = source.split("\n")
    out, last = [], 0
    for begin, end in regions(lines, where):
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

## Installing

The checks need minicrate with its ``dev`` extra (Hypothesis draws the cases, jupytext reads
the notebooks). From a copy of the minicrate repository (not this folder):
``pip install -e ".[dev]"``; or from its wheel: ``pip install "minicrate-VERSION-py3-none-any.whl[dev]"``.
Check with ``python -c "import minicrate.grading"``.

## Grading and reproducing a failing case

Grade a whole file with ``python -m minicrate grade NOTEBOOK`` (or ``--task 6.2`` for one
task). A failure names the case (``case 2 of 10``) and the entry; to look at that case
yourself, rebuild it, with the same seed the grader used:

```python
from minicrate import grading
task = grading.get_task("6.2")
cases = grading.make_cases(task)            # seed=grading.default_seed(), as the check
case = cases[1]                             # "case 2 of 10"
print(case.label, case.args, case.kwargs)   # a backward task also has case.dout
expected = task.reference(case)             # what the check compares with
```

Your instructor may grade with another seed (``make_cases(task, seed=...)``); code that is
right passes on every seed.
"""


def _sha256(path):
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _written_before(dest):
    """``{relative path: sha256 or None}`` that an earlier make-student wrote into ``dest``
    (its marker's list; a marker of an older version has none: its ``*.md``/``*.ipynb``
    twins and ``README.md``, without hashes)."""
    with open(os.path.join(dest, MARKER_FILE), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    listed = dict(reversed(line.split("  ", 1)) for line in lines[1:] if "  " in line)
    if listed:
        return {**listed, MARKER_FILE: None}
    names = set(os.listdir(dest))
    twins = {n for n in names if n.endswith(".md") and n[:-3] + ".ipynb" in names}
    return {n: None for n in twins | {t[:-3] + ".ipynb" for t in twins} | {"README.md", MARKER_FILE}}


CACHES = (".ipynb_checkpoints", "__pycache__", ".DS_Store")  # what opening the files leaves


def _foreign_files(dest):
    """What in ``dest`` make-student did not write (a file, or any folder but a cache),
    or what was edited since."""
    ours = _written_before(dest) if os.path.isfile(os.path.join(dest, MARKER_FILE)) else {}
    foreign = []
    for name in sorted(os.listdir(dest)):
        path = os.path.join(dest, name)
        if name in CACHES:
            continue
        if os.path.isdir(path) or os.path.islink(path) or name not in ours:
            foreign.append(name + (os.sep if os.path.isdir(path) else ""))
        elif ours[name] is not None and _sha256(path) != ours[name]:
            foreign.append(f"{name} (edited)")
    return foreign


def _inside(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_destination(src: str, dest: str, force: bool = False) -> None:
    """Refuse a ``dest`` that replacing would lose something in: the source or the current
    folder inside it (always), a file that is not a folder, or files make-student did not
    write or that were edited since (unless ``force``)."""
    if _inside(dest, src):
        raise ValueError(f"the student folder {dest} must lie outside the exercises folder {src}")
    for what, inner in (("the exercises folder", src), ("the current folder", os.getcwd())):
        if _inside(os.path.realpath(inner), dest):
            raise ValueError(f"the student folder {dest} contains {what} {inner}; replacing it "
                             "would delete it (choose another destination)")
    if not os.path.lexists(dest):
        return
    if not os.path.isdir(dest) or os.path.islink(dest):
        raise ValueError(f"{dest} exists and is not a folder; choose a folder")
    foreign = [] if force else _foreign_files(dest)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"{dest} holds files not written by make-student ({shown}); replacing it "
                         "would delete them: move them away, choose an empty or new folder, or "
                         "pass --force")


FORMATS = ("student", "otter", "nbgrader")


def _convert(nb, stem, where, fmt, hidden_seed):
    """The notebook ``nb`` (solutions in place) as ``fmt`` wants it."""
    if fmt == "student":
        return strip_notebook(nb, where)
    from minicrate.grading import autograders

    if fmt == "otter":
        return autograders.otter_master(nb, stem, hidden_seed=hidden_seed)
    return autograders.nbgrader_source(nb, stem)


def _extra_files(fmt, stems):
    """``{name: text}`` written beside the notebooks: the README (and otter's requirements)."""
    listing = ", ".join(f"``{s}``" for s in stems)
    if fmt == "student":
        return {"README.md": STUDENT_README.format(listing=listing)}
    from minicrate.grading import autograders

    if fmt == "otter":
        return {"README.md": autograders.OTTER_README.format(listing=listing, first=stems[0]),
                "requirements.txt": autograders.OTTER_REQUIREMENTS}
    return {"README.md": autograders.NBGRADER_README.format(listing=listing, first=stems[0])}


def _write_bundle(folder, notebooks, fmt="student"):
    import jupytext  # optional (the dev extra)

    written = []
    for stem, nb in notebooks:
        if fmt == "student":  # the MyST twin, for students who use jupytext
            jupytext.write(nb, os.path.join(folder, stem + ".md"), fmt="md:myst")
            written.append(stem + ".md")
        jupytext.write(nb, os.path.join(folder, stem + ".ipynb"), fmt="ipynb")
        written.append(stem + ".ipynb")
    for name, text in _extra_files(fmt, [s for s, _ in notebooks]).items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(name)
    lines = ["written by `python -m minicrate make-student`; safe to delete. Its files (sha256):"]
    lines += [f"{_sha256(os.path.join(folder, name))}  {name}" for name in written]
    with open(os.path.join(folder, MARKER_FILE), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def _replace(tmp, dest):
    """Put the folder ``tmp`` in ``dest``'s place; on failure ``dest`` is as it was."""
    if not os.path.lexists(dest):
        os.rename(tmp, dest)
        return
    old = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=f".{os.path.basename(dest)}.old-")
    os.rmdir(old)
    os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def make_student(src: str, dest: str, *, force: bool = False, fmt: str = "student",
                 hidden_seed=None) -> list:
    """Write the student bundle of every exercise notebook in ``src`` into ``dest``.

    Everything is checked before anything is written (see the module docstring);
    ``force`` replaces a ``dest`` that holds files make-student did not write.
    ``fmt`` is ``"student"`` (the handout), ``"otter"`` (otter-grader master notebooks;
    ``hidden_seed`` adds a hidden test per task) or ``"nbgrader"`` (nbgrader source
    notebooks), see :mod:`minicrate.grading.autograders`.  Returns the notebook stems.
    """
    import jupytext  # optional (the dev extra)

    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if hidden_seed is not None and fmt != "otter":
        raise ValueError(f"hidden_seed is for the otter format only, got fmt={fmt!r}")

    src, dest = os.path.realpath(src), os.path.realpath(dest)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"no exercises folder at {src}")
    names = sorted(f for f in os.listdir(src) if is_exercise(os.path.join(src, f)))
    if not names:
        raise FileNotFoundError(f"no MyST exercise notebooks (.md with code cells) in {src}")
    stripped = []
    for name in names:  # strip everything before writing anything
        nb = jupytext.read(os.path.join(src, name), fmt="md:myst")
        stripped.append((name[:-3], _convert(nb, name[:-3], os.path.join(src, name), fmt,
                                             hidden_seed)))
    check_destination(src, dest, force)
    parent, base = os.path.split(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.new-")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a folder like any other, not mkdtemp's 0700
        _write_bundle(tmp, stripped, fmt)
        _replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    for name in os.listdir(parent):  # what an earlier, killed make-student left beside DEST
        left = os.path.join(parent, name)
        if name.startswith((f".{base}.new-", f".{base}.old-")) and os.path.isfile(
                os.path.join(left, MARKER_FILE)):
            shutil.rmtree(left, ignore_errors=True)
    return [s for s, _ in stripped]
