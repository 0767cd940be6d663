'''The exercise notebooks in the formats of two autograders: otter-grader and nbgrader.

``python -m minicrate make-student SRC DEST --format otter`` (or ``nbgrader``) calls
:func:`otter_master` (:func:`nbgrader_source`) on every exercise notebook, with its
solutions in place; :mod:`minicrate.grading.student` writes the results.

**otter** (``otter assign MASTER.ipynb DIST``, otter-grader 7) wants a *master notebook*:
raw cells ``# BEGIN QUESTION`` / ``# BEGIN SOLUTION`` / ``# BEGIN TESTS`` (each closed by its
``# END ...``) around each question, and solution lines between ``# BEGIN SOLUTION`` and
``# END SOLUTION`` comments -- with *one* ``#``, so the exercises' ``### BEGIN SOLUTION``
(nbgrader's spelling) is not recognised and otter stops with "END SOLUTION without BEGIN
SOLUTION".  Each task becomes one question, worth one point:

* its stub cell, the solution fenced by ``# BEGIN SOLUTION NO PROMPT`` and preceded by the
  handout's ``raise NotImplementedError(...)`` as an otter *prompt* (a string literal
  between ``""" # BEGIN PROMPT`` and ``""" # END PROMPT`` lines: a no-op in the solution
  notebook, the stub in the student's);
* a test cell ``assert result.passed, result`` with ``result = check("3.1", fn)`` -- an
  ``assert``, since otter compares a bare expression's output with the one saved in the
  master -- and, with a hidden seed, a ``# HIDDEN`` test on private cases;
* the notebook's own check cell stays after the question, so students keep the
  grader's detailed report.

A written answer becomes a manually graded question (``manual: true``), its solution a
markdown cell between ``# BEGIN SOLUTION`` and ``# END SOLUTION``.

**nbgrader** (``nbgrader generate_assignment``) reads the markers as they are, but only in
cells whose metadata says what they are (the "Create Assignment" toolbar); without it
nbgrader refuses unless ``ClearSolutions.enforce_metadata = False``, which breaks its
autograding.  :func:`nbgrader_source` writes that metadata: each stub a solution cell,
each written answer a manually graded one, and after each check cell an autograded,
locked test cell worth one point.
'''

from __future__ import annotations

import copy
import re

from minicrate.grading.markers import BEGIN, END, regions, stub_line

_CHECK_CELL = re.compile(r"^print\((check\(\s*\"(\d+\.\d+)\".*\))\)\s*$", re.DOTALL)
_QUESTION = re.compile(r"\*\*Question\s+(\d+\.\d+)\.?\*\*")

OTTER_CONFIG = """\
# ASSIGNMENT CONFIG
name: {name}
requirements: requirements.txt
init_cell: false
check_all_cell: false
export_cell: false
run_tests: true
generate: true"""


def check_call(source):
    """``(call, task)`` of a check cell ``print(check("3.1", fn, ...))``; ``None`` otherwise."""
    m = _CHECK_CELL.match(source.strip())
    return (m.group(1), m.group(2)) if m else None


def _test_source(call, seed=None):
    if seed is not None:
        call = call[:-1] + f", seed={int(seed)}, examples=20)"
    head = "# HIDDEN\n" if seed is not None else ""
    return f"{head}from minicrate.grading import check\nresult = {call}\nassert result.passed, result"


def otter_solution_code(source, where="cell"):
    """A stub cell's source in otter's spelling: each ``### BEGIN SOLUTION`` region preceded
    by the handout's stub as a prompt and fenced by ``# BEGIN SOLUTION NO PROMPT``."""
    lines = source.split("\n")
    regions(lines, where)  # the markers pair up, each alone on its line
    out = []
    for i, line in enumerate(lines):
        text = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if text == BEGIN:
            out += [f'{indent}""" # BEGIN PROMPT', stub_line(lines, i, where),
                    f'{indent}""" # END PROMPT', f"{indent}# BEGIN SOLUTION NO PROMPT"]
        elif text == END:
            out.append(f"{indent}# END SOLUTION")
        else:
            out.append(line)
    return "\n".join(out)


def _split_answer(source, where):
    """``(prompt, solution, after)`` of a written-answer markdown cell (one solution region)."""
    lines = source.split("\n")
    found = regions(lines, where)
    if len(found) != 1:
        raise ValueError(f"{where}: a written answer needs exactly one solution region, "
                         f"found {len(found)}")
    (begin, end), = found
    return ("\n".join(lines[:begin]).strip(), "\n".join(lines[begin + 1:end]).strip(),
            "\n".join(lines[end + 1:]).strip())


def otter_master(nb, name, *, hidden_seed=None):
    """A copy of the exercise notebook ``nb`` (nbformat, solutions in place) as an otter
    master notebook named ``name``; ``hidden_seed`` adds a hidden test per task."""
    import nbformat

    v4 = nbformat.v4
    raw = v4.new_raw_cell
    cells = [raw(OTTER_CONFIG.format(name=name))]
    pending = None  # the stub cell waiting for its check cell
    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        regions(cell.source.split("\n"), where)  # well-formed markers in every cell
        found = check_call(cell.source) if cell.cell_type == "code" else None
        if cell.cell_type == "code" and BEGIN in cell.source:
            pending = cell
            continue
        if found and pending is not None:
            call, task = found
            tests = [v4.new_code_cell(_test_source(call))]
            if hidden_seed is not None:
                tests.append(v4.new_code_cell(_test_source(call, hidden_seed)))
            cells += [raw(f"# BEGIN QUESTION\nname: task_{task.replace('.', '_')}\npoints: 1\n"
                          "check_cell: false"),
                      raw("# BEGIN SOLUTION"),
                      v4.new_code_cell(otter_solution_code(pending.source, where)),
                      raw("# END SOLUTION"), raw("# BEGIN TESTS"), *tests, raw("# END TESTS"),
                      raw("# END QUESTION")]
            pending = None
        elif pending is not None:
            raise ValueError(f"{where}: a stub cell with a solution must be followed by its "
                             "check cell, print(check(\"X.Y\", function, ...))")
        if cell.cell_type == "markdown" and BEGIN in cell.source:
            prompt, solution, after = _split_answer(cell.source, where)
            number = _QUESTION.findall(prompt)
            qname = f"question_{number[0].replace('.', '_')}" if number else f"answer_{index}"
            cells += [raw(f"# BEGIN QUESTION\nname: {qname}\nmanual: true\npoints: 1"),
                      v4.new_markdown_cell(prompt), raw("# BEGIN SOLUTION"),
                      v4.new_markdown_cell(solution), raw("# END SOLUTION"),
                      raw("# END QUESTION")]
            if after:
                cells.append(v4.new_markdown_cell(after))
            continue
        cells.append(_clean_copy(cell))
    if pending is not None:
        raise ValueError(f"{name}: the last stub cell has no check cell after it")
    return v4.new_notebook(cells=cells, metadata=dict(nb.metadata))


def _clean_copy(cell):
    cell = copy.deepcopy(cell)
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    return cell


def _nbgrader(cell, grade_id, *, solution, grade, locked, points=None):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3,
            "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta
    return cell


def nbgrader_source(nb, name):
    """A copy of ``nb`` with nbgrader's cell metadata (see the module docstring), for the
    course's ``source/ASSIGNMENT/`` folder."""
    import nbformat

    v4 = nbformat.v4
    cells = []
    for index, cell in enumerate(nb.cells):
        cell = _clean_copy(cell)
        found = check_call(cell.source) if cell.cell_type == "code" else None
        regions(cell.source.split("\n"), f"{name}, cell {index}")  # well-formed markers
        if BEGIN in cell.source and cell.cell_type == "code":
            cell = _nbgrader(cell, f"{name}-stub-{index}", solution=True, grade=False, locked=False)
        elif BEGIN in cell.source and cell.cell_type == "markdown":
            cell = _nbgrader(cell, f"{name}-answer-{index}", solution=True, grade=True,
                             locked=False, points=1)
        cells.append(cell)
        if found:
            call, task = found
            test = v4.new_code_cell(_test_source(call))
            cells.append(_nbgrader(test, f"test-{task.replace('.', '-')}", solution=False,
                                   grade=True, locked=True, points=1))
    return v4.new_notebook(cells=cells, metadata=dict(nb.metadata))


OTTER_README = """\
# CRATE exercises: otter-grader master notebooks

Written by ``python -m minicrate make-student exercises DEST --format otter``. Each notebook
({listing}) is an otter *master*: the exercise with its solutions, one question per task
(worth one point; its test calls ``minicrate.grading.check``) and one manually graded
question per written answer.

In an environment with minicrate (its ``dev`` extra) and ``otter-grader`` (version 7):

```bash
otter assign {first}.ipynb dist/{first}
```

writes ``dist/{first}/student/`` (the handout: stubs that raise ``NotImplementedError``,
no solutions, no tests) and ``dist/{first}/autograder/`` (the solution notebook and the
autograder zip). ``otter assign`` runs the tests on the solutions first, so a master whose
reference fails is never released. Grade a submission without Docker with

```bash
otter run -a dist/{first}/autograder/{first}-autograder_*.zip SUBMISSION.ipynb
```

(``otter grade`` does the same for a folder of submissions, in Docker; the zip is also what
Gradescope takes). The zip installs ``requirements.txt``: minicrate is not on PyPI, so put
its wheel (``python -m pip wheel --no-deps PATH_TO_MINICRATE``) beside it and name it there.
A master written with ``--hidden-seed N`` also has a hidden test per task on the cases of
seed ``N``: keep it private.
"""

OTTER_REQUIREMENTS = """\
# What the autograder's environment installs (otter assign puts this file in the zip).
# minicrate is not on PyPI: build its wheel (python -m pip wheel --no-deps PATH_TO_MINICRATE),
# put it beside this file and name it on the next line, e.g. minicrate-0.1.0-py3-none-any.whl
numpy>=1.24
array-api-compat>=1.9
hypothesis>=6.100
array-api-strict>=2.2
jupytext>=1.16
"""

NBGRADER_README = """\
# CRATE exercises: nbgrader source notebooks

Written by ``python -m minicrate make-student exercises DEST --format nbgrader``. Each notebook
({listing}) carries nbgrader's cell metadata, so nbgrader's defaults accept it (no
``enforce_metadata = False``): every stub is a solution cell, every written answer a
manually graded answer (one point), and after every check cell an autograded, locked
test cell (one point) that asserts ``minicrate.grading.check(...).passed``.

In a course folder (nbgrader 0.9), with minicrate importable by the kernel:

```bash
mkdir -p source/{first} && cp DEST/{first}.ipynb source/{first}/
nbgrader generate_assignment {first}      # release/{first}/: solutions stripped
# ... students' work collected into submitted/STUDENT/{first}/{first}.ipynb ...
nbgrader autograde {first}                # autograded/: one point per passing task
```

To grade the whole class with minicrate's own sandboxed grader instead, point
``python -m minicrate grade-class submitted/ --out gradebook.csv`` at the same folder.
"""
