"""The exercise notebooks (exercises/*.md) and the student bundle (make-student).

* every solution notebook executes (nbclient, the venv's kernel) and every check cell prints
  "passed";
* the student version (solutions stripped) executes to the end and every check cell reports
  "not implemented", without an error;
* make-student keeps signatures, docstrings and provided lines, writes .md and .ipynb without
  outputs, and refuses to overwrite a folder it did not write.
"""

import os
import re

import jupytext
import numpy as np
import pytest

from minicrate import grading
from minicrate.grading import student as ms

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXERCISES = os.path.abspath(os.path.join(ROOT, "exercises"))
NOTEBOOKS = sorted(f for f in os.listdir(EXERCISES) if ms.is_exercise(os.path.join(EXERCISES, f)))
# Notebooks that load real data and train or measure a model take ~10 s each on 2 busy cores.
SLOW = {"ch09_training_step.md", "ch10_layerwise_measurement.md"}
NOTEBOOK_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NOTEBOOKS]
TASK_LINE = re.compile(r"^Task (\d+\.\d+) (\w+): (passed|failed|not implemented|error)", re.M)


def _execute_both(solution, student, cwd):
    """Run the solution notebook, then (after ``%reset -f``) the student version, in one kernel.

    One kernel per notebook halves the start-up cost; the reset empties the namespace, so the
    student version sees nothing the solution defined (imported modules stay cached).
    Returns the two executed cell lists.
    """
    import nbclient
    import nbformat

    reset = nbformat.v4.new_code_cell("%reset -f")
    cells = list(solution.cells) + [reset] + list(student.cells)
    nb = nbformat.v4.new_notebook(cells=cells, metadata=solution.metadata)
    nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": cwd}},
    ).execute()
    n = len(solution.cells)
    return nb.cells[:n], nb.cells[n + 1 :]


def _check_reports(cells):
    """Task id -> (status, text) printed by the check cells; and the error outputs of any cell."""
    reports, errors = {}, []
    for cell in cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(f"{out.get('ename')}: {out.get('evalue')}")
            text = out.get("text", "")
            if "check(" in cell.source:
                for task, _, status in TASK_LINE.findall(text):
                    reports[task] = (status, text)
    return reports, errors


def _tasks(name):
    return grading.tasks_of_notebook(name)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    dest = tmp_path_factory.mktemp("bundle") / "student"
    ms.make_student(EXERCISES, str(dest))
    return str(dest)


def test_every_task_has_a_notebook_and_every_notebook_has_tasks():
    assert len(NOTEBOOKS) >= 6
    covered = {t for nb in NOTEBOOKS for t in _tasks(nb)}
    assert covered == set(grading.TASKS)
    for nb in NOTEBOOKS:
        assert _tasks(nb), f"{nb} has no task in the registry"
        text = open(os.path.join(EXERCISES, nb), encoding="utf-8").read()
        for t in _tasks(nb):
            assert f'check("{t}"' in text, f"{nb} has no check cell for task {t}"
            assert f"Task {t}" in text


@pytest.mark.parametrize("name", NOTEBOOK_PARAMS)
def test_solution_passes_every_check_and_student_version_reports_not_implemented(
    name, student_dir, monkeypatch
):
    import nbformat

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")  # the kernel inherits it: tiny matrices, shared cores

    solution = jupytext.read(os.path.join(EXERCISES, name))
    student = nbformat.read(os.path.join(student_dir, name[:-3] + ".ipynb"), as_version=4)
    solved, stubbed = _execute_both(solution, student, EXERCISES)

    reports, errors = _check_reports(solved)  # the solution notebook
    assert not errors, errors
    assert set(reports) == set(_tasks(name)), reports
    for status, text in reports.values():
        assert status == "passed", text

    reports, errors = _check_reports(stubbed)  # the student version, solutions stripped
    assert not errors, errors
    assert set(reports) == set(_tasks(name)), reports
    for task, (status, text) in reports.items():
        assert status == "not implemented", text
        assert f"Task {task}" in text


def _defs_and_docstrings(source):
    return re.findall(r'def \w+\([^)]*\):\n\s+"""[^"]*"""', source)


def test_student_bundle_has_stubs_and_no_solutions(student_dir):
    import nbformat

    files = sorted(os.listdir(student_dir))
    for name in NOTEBOOKS:
        stem = name[:-3]
        assert f"{stem}.md" in files and f"{stem}.ipynb" in files
        src = open(os.path.join(EXERCISES, name), encoding="utf-8").read()
        out = open(os.path.join(student_dir, stem + ".md"), encoding="utf-8").read()
        assert "BEGIN SOLUTION" not in out and "END SOLUTION" not in out
        assert _defs_and_docstrings(src) == _defs_and_docstrings(
            out
        )  # signatures and docstrings kept
        for t in _tasks(name):
            function = grading.TASKS[t].function
            assert f"raise NotImplementedError('Task {t}: {function}')" in out
            assert f"# TODO: Implement for Task {t}." in out
        nb = nbformat.read(os.path.join(student_dir, stem + ".ipynb"), as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            assert "BEGIN SOLUTION" not in cell.source
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None
    assert "README.md" in files and ms.MARKER_FILE in files
    assert not any(f.endswith((".pyc", ".py")) or f == "__pycache__" for f in files)


def test_provided_lines_are_kept():
    source = '''def f(Z, eps):
    """Task 9.9: something."""
    N, d = Z.shape[-2:]
    ### BEGIN SOLUTION
    return N * d
    ### END SOLUTION
'''
    out = ms.strip_code(source)
    assert (
        out
        == '''def f(Z, eps):
    """Task 9.9: something."""
    N, d = Z.shape[-2:]
    # TODO: Implement for Task 9.9.
    raise NotImplementedError('Task 9.9: f')
'''
    )
    ns = {}
    exec(out, ns)
    with pytest.raises(NotImplementedError, match="Task 9.9: f"):
        ns["f"](np.zeros((2, 3)), 1.0)
    assert (
        ms.strip_markdown("Q?\n### BEGIN SOLUTION\nA.\n### END SOLUTION")
        == f"Q?\n{ms.ANSWER_PLACEHOLDER}"
    )


@pytest.mark.parametrize(
    "bad, message",
    [
        ("def f():\n    '''Task 1.1'''\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
        ("def f():\n    return 1\n    ### END SOLUTION\n", "without a"),
        ("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n", "no 'Task X.Y'"),
        (
            "def f():\n    '''Task 1.1'''\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n",
            "inside another",
        ),
        ("x = 1  ### BEGIN SOLUTION\n", "alone on its line"),
    ],
)
def test_malformed_solution_markers_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        ms.strip_code(bad, "nb.md, cell 3")


def test_make_student_refuses_foreign_folders_and_rewrites_its_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not written by make-student"):
        ms.make_student(EXERCISES, str(foreign))
    assert (foreign / "thesis.tex").read_text() == "precious"
    with pytest.raises(ValueError, match="outside the exercises folder"):
        ms.make_student(EXERCISES, os.path.join(EXERCISES, "dist"))
    dest = tmp_path / "out"
    ms.make_student(EXERCISES, str(dest))
    ms.make_student(EXERCISES, str(dest))  # its own folder: replaced without asking
    (dest / "stale.ipynb").write_text("{}")
    from minicrate.cli import main

    assert main(["make-student", EXERCISES, str(dest)]) == 1  # a file it did not write
    assert (dest / "stale.ipynb").exists()
    assert main(["make-student", EXERCISES, str(dest), "--force"]) == 0
    assert not (dest / "stale.ipynb").exists()
    assert (dest / ms.MARKER_FILE).exists()
