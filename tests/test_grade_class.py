"""``minicrate grade-class``: a folder of submissions graded, each in its own sandboxed process.

One folder holds a correct submission of task 6.2 (the ISTA backward) and the
ways a class gets it wrong: typical mistakes, an endless loop, ``os._exit``,
a patch of the grader, a float32 answer, an in-place change of the upstream
gradient, all zeros.  The correct one scores 1, every other < 0.5, the loop
is a ``timeout``, and the whole run takes bounded time.
"""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from minicrate import grading
from minicrate.cli import main
from minicrate.grading import classroom
from minicrate.grading.compare import ratio_hint

BASE = '''\
import numpy as np


def ista_forward(X, D, *, eta=0.1, lam=0.1):
    P = X + eta * (X @ D - X @ D.T @ D) - eta * lam
    return np.maximum(P, 0.0), {"X": X, "D": D, "P": P, "eta": eta}


def ista_backward(dY, cache):
    X, D, P, eta = cache["X"], cache["D"], cache["P"], cache["eta"]
    dP = np.where(P > 0, dY, 0.0)
    dX = dP + eta * (dP @ D.T - dP @ D.T @ D)
    G = X.reshape(-1, X.shape[-1]).T @ dP.reshape(-1, X.shape[-1])
    dD = eta * (G - D @ (G + G.T))
    return dX, {"D": dD}
'''

BACKWARD_BODY = '    X, D, P, eta = cache["X"], cache["D"], cache["P"], cache["eta"]\n'


def variant(old, new):
    assert old in BASE
    return BASE.replace(old, new)


SUBMISSIONS = {
    "correct": BASE,
    "no_mask": variant("dP = np.where(P > 0, dY, 0.0)", "dP = dY"),
    "dD_averaged": variant("dD = eta * (G - D @ (G + G.T))",
                           "dD = eta * (G - D @ (G + G.T)) / (X.shape[0] if X.ndim > 2 else 1)"),
    "endless_loop": variant(BACKWARD_BODY, BACKWARD_BODY + "    while True:\n        pass\n"),
    "os_exit": variant(BACKWARD_BODY, "    import os\n\n    os._exit(3)\n"),
    "float32": variant('return dX, {"D": dD}',
                       'return dX.astype(np.float32), {"D": dD.astype(np.float32)}'),
    "inplace_cotangent": variant("    dP = np.where(P > 0, dY, 0.0)\n",
                                 "    dY[P <= 0] = 0\n    dP = dY\n"),
    "grader_patch": (
        "import numpy as np\nimport minicrate.grading as g\nimport minicrate.grading.engine as e\n\n"
        "g.compare = lambda *a, **k: None\ne.compare = lambda *a, **k: None\n"
        "e.matches = lambda *a, **k: True\n\n\n"
        "def ista_backward(dY, cache):\n"
        "    return np.zeros_like(dY), {'D': np.zeros((dY.shape[-1],) * 2)}\n"
    ),
    "zeros": variant(BASE[BASE.index("def ista_backward"):],
                     "def ista_backward(dY, cache):\n"
                     "    return np.zeros_like(dY), {'D': np.zeros_like(cache['D'])}\n"),
}


def grade_the_folder(tmp_path):
    folder = tmp_path / "submissions"
    folder.mkdir()
    for name, source in SUBMISSIONS.items():
        (folder / f"{name}.py").write_text(source)
    out, report = tmp_path / "gradebook.csv", tmp_path / "gradebook.json"
    start = time.perf_counter()
    code = main(["grade-class", str(folder), "--out", str(out), "--task", "6.2",
                 "--timeout", "5", "--jobs", "2", "--json", str(report)])
    seconds = time.perf_counter() - start
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return code, out, rows, json.loads(report.read_text()), seconds


def test_a_class_is_graded_into_a_gradebook_each_student_sandboxed(tmp_path):
    """One run (the folder's grading is the slow part), every claim of the issue checked."""
    code, out, rows, report, seconds = grade_the_folder(tmp_path)
    # the gradebook: one row per student and task, long format
    assert out.read_text().splitlines()[0] == "student,task,score,status,message"
    assert sorted(r["student"] for r in rows) == sorted(SUBMISSIONS)
    assert {r["task"] for r in rows} == {"6.2"}
    assert all(r["status"] in classroom.STATUSES for r in rows)
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert code == 1  # not every row is ok
    # only the correct submission scores
    score = {r["student"]: float(r["score"]) for r in rows}
    assert score.pop("correct") == 1.0
    assert all(s < 0.5 for s in score.values()), score
    # each failure gets its status and a message that says why
    by = {r["student"]: r for r in rows}
    assert by["correct"]["status"] == "ok"
    assert by["endless_loop"]["status"] == "timeout"
    assert by["os_exit"]["status"] == "crash" and "status 3" in by["os_exit"]["message"]
    assert "float32" in by["float32"]["message"] and "dtype" in by["float32"]["message"]
    assert "in place" in by["inplace_cotangent"]["message"]
    assert "ReLU" in by["no_mask"]["message"]
    assert "averaged over the batch" in by["dD_averaged"]["message"]
    assert by["grader_patch"]["status"] == "wrong" and float(by["grader_patch"]["score"]) == 0.0
    assert "constant" not in by["zeros"]["message"]
    # bounded time, and the summary
    assert seconds < 45
    summary = report["summary"]["6.2"]
    assert summary["students"] == len(SUBMISSIONS)
    assert summary["statuses"]["ok"] == 1 and summary["statuses"]["timeout"] == 1
    assert summary["common_mistakes"]
    assert len(report["rows"]) == len(SUBMISSIONS) and "Task 6.2" in report["rows"][0]["report"]


def test_an_unknown_task_is_one_line_naming_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["grade-class", str(tmp_path), "--out", str(tmp_path / "g.csv"), "--task", "99.9"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "99.9" in err and "3.2" in err and "11.2" in err


def test_sub_folders_are_students_and_missing_functions_are_missing(tmp_path):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "ch06_ista.py").write_text(BASE)
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "notes.py").write_text("x = 1\n")
    rows = classroom.grade_class(tmp_path, ["6.1", "6.2"], timeout=30)
    got = {(r.student, r.task): r.status for r in rows}
    assert got == {("alice", "6.1"): "ok", ("alice", "6.2"): "ok",
                   ("bob", "6.1"): "missing", ("bob", "6.2"): "missing"}


# --------------------------------------------------------------------------
# the contracts of check() itself (no subprocess)
# --------------------------------------------------------------------------


def _as_float32(value):
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_as_float32(v) for v in value)
    if isinstance(value, np.ndarray) and value.dtype == np.float64:
        return value.astype(np.float32)
    return value


@pytest.mark.parametrize("task_id", ["3.2", "3.4", "5.2", "6.2", "7.4", "8.2", "9.3", "10.1", "11.2"])
def test_a_float32_answer_fails_with_a_dtype_message(task_id):
    task = grading.TASKS[task_id]

    def student(*args, **kwargs):
        return _as_float32(task.solution(*args, **kwargs))

    result = grading.check(task_id, student, examples=1)
    assert not result.passed and result.score < 0.5
    assert "float32" in str(result)


def test_a_threshold_instead_of_nonzero_fails_10_2():
    def nonzero_fraction(Z):
        return np.mean(Z > 1e-3, axis=(-2, -1))

    assert not grading.check("10.2", nonzero_fraction).passed


def test_zero_output_gets_no_constant_factor_hint():
    hint = ratio_hint(np.zeros(3), np.array([1.0, 2.0, 3.0]))
    assert hint and "constant" not in hint and "zeros" in hint


def test_an_error_inside_numpy_points_at_the_students_line():
    def nonzero_fraction(Z):
        return np.einsum("ij->i", Z)  # the student's line: wrong subscripts for a batch

    result = grading.check("10.2", nonzero_fraction)
    assert 'np.einsum("ij->i", Z)' in str(result)


def test_the_memory_limit_stops_a_greedy_submission(tmp_path):
    (tmp_path / "greedy.py").write_text(
        "import numpy as np\n\n\ndef nonzero_fraction(Z):\n"
        "    big = np.ones((1 << 31,))  # 16 GiB\n    return big[: Z.shape[0]]\n"
    )
    rows = classroom.grade_class(tmp_path, ["10.2"], timeout=30, memory_mb=1024)
    assert len(rows) == 1 and rows[0].status in ("error", "crash") and rows[0].score == 0
    assert rows[0].status == "crash" or "MemoryError" in rows[0].message


def test_grade_explains_the_error_measure_once(tmp_path, capsys):
    path = tmp_path / "hw.py"
    path.write_text("def nonzero_fraction(Z):\n    return 2 * (Z != 0).mean(axis=(-2, -1))\n")
    main(["grade", str(path), "--task", "10.2"])
    out = capsys.readouterr().out
    assert out.count("relative error = |yours - expected|") == 1


@pytest.mark.parametrize("seed", [None, 99991])
def test_torch_style_clipping_fails_on_every_seed(seed):
    from minicrate.grading.mistakes.training import clip_torch_style

    result = grading.check("9.4", clip_torch_style, seed=seed)
    assert not result.passed and "torch" in str(result)
    assert grading.check("9.4", grading.solution("9.4"), seed=seed).passed


def test_a_shape_only_mismatch_gets_no_round_off_hint():
    def nonzero_fraction(Z):
        return (Z != 0).mean(axis=(-2, -1))[..., None]  # right values, one axis too many

    result = grading.check("10.2", nonzero_fraction)
    assert "shape" in str(result) and "float32" not in str(result)
