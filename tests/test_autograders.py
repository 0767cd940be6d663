"""``make-student --format otter`` and ``--format nbgrader``: the exercises for two autograders.

The structure is checked always (every task one question with its solution and tests, the
nbgrader metadata on every graded cell); the tools themselves run when they are installed:

* otter-grader: ``otter assign`` accepts every master notebook (it runs the tests on the
  solutions first), and ``otter run`` scores the solution notebook 2/2 and the student
  handout 0/2;
* nbgrader: ``generate_assignment`` accepts the source notebook with nbgrader's default
  settings, and ``autograde`` gives the solution every autograded point and the handout none.

They are found on ``PATH`` (or through ``MINICRATE_OTTER`` / ``MINICRATE_NBGRADER``, the
path of the executable), and their Python must import minicrate. CI installs neither tool,
so there these tests skip with the reason.
"""

import json
import os
import re
import shutil
import subprocess

import jupytext
import nbformat
import pytest

from minicrate.cli import main
from minicrate.grading import autograders, check
from minicrate.grading import student as ms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXERCISES = os.path.join(ROOT, "exercises")
NOTEBOOKS = sorted(f[:-3] for f in os.listdir(EXERCISES) if ms.is_exercise(os.path.join(EXERCISES, f)))


def _read(stem):
    return jupytext.read(os.path.join(EXERCISES, stem + ".md"), fmt="md:myst")


def _tasks(nb):
    return [autograders.check_call(c.source)[1] for c in nb.cells
            if c.cell_type == "code" and autograders.check_call(c.source)]


def _raw_lines(nb):
    return [c.source.split("\n")[0] for c in nb.cells if c.cell_type == "raw"]


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_every_task_is_an_otter_question_with_its_solution_and_tests(stem):
    nb = _read(stem)
    master = autograders.otter_master(nb, stem, hidden_seed=7)
    tasks = _tasks(nb)
    assert tasks, stem
    raw = _raw_lines(master)
    assert raw[0] == "# ASSIGNMENT CONFIG" and f"name: {stem}" in master.cells[0].source
    names = [re.search(r"name: (\w+)", c.source).group(1) for c in master.cells
             if c.cell_type == "raw" and c.source.startswith("# BEGIN QUESTION")]
    assert [n for n in names if n.startswith("task_")] == [f"task_{t.replace('.', '_')}" for t in tasks]
    for kind in ("QUESTION", "SOLUTION", "TESTS"):  # balanced, never nested in themselves
        depth = 0
        for line in raw:
            depth += (line == f"# BEGIN {kind}") - (line == f"# END {kind}")
            assert depth in (0, 1), (stem, kind)
        assert depth == 0, (stem, kind)
    text = "\n".join(c.source for c in master.cells)
    assert "### BEGIN SOLUTION" not in text and "### END SOLUTION" not in text
    tests = [c.source for c in master.cells if c.cell_type == "code" and "assert result.passed" in c.source]
    assert len(tests) == 2 * len(tasks)  # public and hidden
    assert sum(t.startswith("# HIDDEN\n") and "seed=7, examples=20" in t for t in tests) == len(tasks)
    assert all(not c.get("outputs") for c in master.cells if c.cell_type == "code")


def test_the_otter_solution_cell_is_the_solution_and_its_prompt_the_stub():
    nb = _read("ch03_coding_rate")
    master = autograders.otter_master(nb, "ch03_coding_rate")
    cell = next(c.source for c in master.cells if "def coding_rate(" in c.source)
    assert "# BEGIN SOLUTION NO PROMPT" in cell and "# END SOLUTION" in cell
    assert "raise NotImplementedError('Task 3.1: coding_rate')" in cell
    namespace = {}
    exec(_read_setup(nb) + "\n" + cell, namespace)  # the prompt is a string literal: a no-op
    assert check("3.1", namespace["coding_rate"], fd=False).passed


def _read_setup(nb):
    return next(c.source for c in nb.cells if c.cell_type == "code" and "import" in c.source)


@pytest.mark.parametrize("stem", NOTEBOOKS)
def test_nbgrader_metadata_marks_every_solution_answer_and_test(stem):
    nb = _read(stem)
    source = autograders.nbgrader_source(nb, stem)
    meta = [c.metadata.get("nbgrader") for c in source.cells]
    ids = [m["grade_id"] for m in meta if m]
    assert len(ids) == len(set(ids))
    for cell, m in zip(source.cells, meta, strict=True):
        if "### BEGIN SOLUTION" in cell.source:
            assert m and m["solution"] and not m["locked"], cell.source[:60]
            assert m["grade"] == (cell.cell_type == "markdown")  # written answers: by hand
    tests = [(c, m) for c, m in zip(source.cells, meta, strict=True) if m and m["grade"] and not m["solution"]]
    assert len(tests) == len(_tasks(nb))
    assert all(m["locked"] and m["points"] == 1 and "assert result.passed" in c.source for c, m in tests)


def test_make_student_writes_each_format_and_refuses_a_hidden_seed_without_otter(tmp_path, capsys):
    assert main(["make-student", EXERCISES, str(tmp_path / "otter"), "--format", "otter"]) == 0
    files = sorted(os.listdir(tmp_path / "otter"))
    assert files == sorted([f"{s}.ipynb" for s in NOTEBOOKS] + ["README.md", "requirements.txt",
                                                               ms.MARKER_FILE])
    assert "otter assign" in (tmp_path / "otter" / "README.md").read_text()
    assert main(["make-student", EXERCISES, str(tmp_path / "nbg"), "--format", "nbgrader"]) == 0
    assert "nbgrader generate_assignment" in (tmp_path / "nbg" / "README.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["make-student", EXERCISES, str(tmp_path / "s"), "--hidden-seed", "3"])
    assert info.value.code == 2 and "only with --format otter" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


# ----------------------------------------------------------------------------
# The tools themselves, when installed


def _tool(name, variable):
    path = os.environ.get(variable) or shutil.which(name)
    if not path:
        return None, f"{name} is not installed (set {variable} to its executable to run this test)"
    python = os.path.join(os.path.dirname(path), "python")
    probe = subprocess.run([python, "-c", "import minicrate.grading, jupytext"], capture_output=True)
    if probe.returncode:
        return None, f"the Python of {path} cannot import minicrate (pip install -e '.[dev]' there)"
    return path, None


def _run(cmd, cwd, env_bin):
    env = {**os.environ, "PATH": env_bin + os.pathsep + os.environ.get("PATH", "")}
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


OTTER, OTTER_WHY = _tool("otter", "MINICRATE_OTTER")
NBGRADER, NBGRADER_WHY = _tool("nbgrader", "MINICRATE_NBGRADER")


@pytest.mark.slow
@pytest.mark.skipif(OTTER is None, reason=OTTER_WHY or "")
def test_otter_assign_accepts_the_master_and_otter_run_scores_solution_and_handout(tmp_path):
    stem = "ch03_coding_rate"
    dest = tmp_path / "masters"
    ms.make_student(EXERCISES, str(dest), fmt="otter", hidden_seed=11)
    env_bin = os.path.dirname(OTTER)
    _run([OTTER, "assign", f"{stem}.ipynb", "dist"], dest, env_bin)
    handout = nbformat.read(dest / "dist" / "student" / f"{stem}.ipynb", as_version=4)
    text = "\n".join(c.source for c in handout.cells)
    assert "NotImplementedError('Task 3.1: coding_rate')" in text
    assert "alpha = d / (N * eps**2)" not in text and "SOLUTION" not in text and "HIDDEN" not in text
    (zipfile,) = (dest / "dist" / "autograder").glob("*.zip")
    for notebook, score in ((dest / "dist" / "autograder" / f"{stem}.ipynb", 2.0),
                            (dest / "dist" / "student" / f"{stem}.ipynb", 0.0)):
        out = tmp_path / f"run-{score:g}"
        out.mkdir()
        _run([OTTER, "run", "-a", str(zipfile), str(notebook), "-o", str(out)], dest, env_bin)
        results = json.loads((out / "results.json").read_text())
        got = {t["name"]: t["score"] for t in results["tests"] if t["name"].startswith("task_")}
        assert set(got) == {"task_3_1", "task_3_2"} and sum(got.values()) == score, got


@pytest.mark.slow
@pytest.mark.skipif(NBGRADER is None, reason=NBGRADER_WHY or "")
def test_nbgrader_generates_and_autogrades_with_its_default_settings(tmp_path):
    stem = "ch06_ista"
    ms.make_student(EXERCISES, str(tmp_path / "nbg"), fmt="nbgrader")
    course = tmp_path / "course"
    (course / "source" / stem).mkdir(parents=True)
    shutil.copy(tmp_path / "nbg" / f"{stem}.ipynb", course / "source" / stem)
    env_bin = os.path.dirname(NBGRADER)
    _run([NBGRADER, "generate_assignment", stem], course, env_bin)
    released = course / "release" / stem / f"{stem}.ipynb"
    assert "### BEGIN SOLUTION" not in released.read_text()
    for student, notebook in (("alice", course / "source" / stem / f"{stem}.ipynb"), ("bob", released)):
        (course / "submitted" / student / stem).mkdir(parents=True)
        shutil.copy(notebook, course / "submitted" / student / stem)
        _run([NBGRADER, "db", "student", "add", student], course, env_bin)
    _run([NBGRADER, "autograde", stem], course, env_bin)
    _run([NBGRADER, "export"], course, env_bin)
    rows = (course / "grades.csv").read_text().splitlines()
    header = rows[0].split(",")
    scores = {r.split(",")[header.index("student_id")]: float(r.split(",")[header.index("raw_score")])
              for r in rows[1:]}
    assert scores == {"alice": 2.0, "bob": 0.0}  # two tasks; the written answer is graded by hand


@pytest.mark.parametrize("fmt", ["otter", "nbgrader"])
def test_malformed_markers_are_refused_by_both_formats(fmt):
    nb = _read("ch03_coding_rate")
    cell = next(c for c in nb.cells if "def coding_rate(" in c.source)
    cell.source = cell.source.replace("    ### BEGIN SOLUTION\n", "", 1)  # END without BEGIN
    convert = autograders.otter_master if fmt == "otter" else autograders.nbgrader_source
    with pytest.raises(ValueError, match="without a '### BEGIN SOLUTION' before it"):
        convert(nb, "ch03_coding_rate")


def test_a_written_answer_with_two_regions_is_refused_for_otter():
    nb = _read("ch03_coding_rate")
    cell = next(c for c in nb.cells if c.cell_type == "markdown" and "### BEGIN SOLUTION" in c.source)
    cell.source += "\n### BEGIN SOLUTION\nmore\n### END SOLUTION"
    with pytest.raises(ValueError, match="exactly one solution region, found 2"):
        autograders.otter_master(nb, "ch03_coding_rate")
