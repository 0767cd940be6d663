"""The grading reference (minicrate.grading): references pass, known mistakes are named,
the student's code can never crash the grader, and a student's *file* is what gets graded.

Every task has a pytest marker (``task3_2`` ...), so ``pytest -m task3_2`` runs one task's
tests; markers are registered in pyproject.toml.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minicrate as mc
from minicrate import grading
from minicrate.grading import Case, check

TASK_IDS = list(grading.TASKS)


def _marked(ids):
    return [
        pytest.param(t, marks=getattr(pytest.mark, grading.TASKS[t].marker), id=f"task{t}")
        for t in ids
    ]


# --------------------------------------------------------------------------
# The registry and the references
# --------------------------------------------------------------------------


def test_registry_is_explicit_and_complete():
    assert TASK_IDS == sorted(TASK_IDS, key=lambda t: tuple(int(x) for x in t.split(".")))
    for tid, task in grading.TASKS.items():
        assert task.id == tid and task.marker == "task" + tid.replace(".", "_")
        assert task.checks and task.title and task.solution is not None
        assert os.path.exists(
            os.path.join(os.path.dirname(__file__), "..", "exercises", task.notebook)
        ), task.notebook
        assert len(task.mistakes) >= 2, f"task {tid} recognises too few mistakes"
    text = grading.describe()
    assert all(f"Task {t}" in text for t in TASK_IDS)


def test_task_markers_are_registered_in_pyproject(pytestconfig):
    names = {m.split(":")[0].strip() for m in pytestconfig.getini("markers")}
    assert {t.marker for t in grading.TASKS.values()} <= names


@pytest.mark.parametrize("task_id", _marked(TASK_IDS))
def test_reference_solution_passes_every_property(task_id):
    result = check(task_id, grading.TASKS[task_id].solution)
    assert result.passed, str(result)
    assert result.score == 1.0 and result.status == "passed"
    assert len(result.properties) >= 2


def test_cases_are_deterministic_and_seedable(monkeypatch):
    task = grading.get_task("3.4")
    a = grading.make_cases(task)
    b = grading.make_cases(task)
    assert [c.label for c in a] == [c.label for c in b]
    assert all(np.array_equal(x.args[0], y.args[0]) for x, y in zip(a, b, strict=True))
    c = grading.make_cases(task, seed=12345)
    drawn = slice(len(task.explicit), None)
    assert [x.spec for x in a[drawn]] != [x.spec for x in c[drawn]]
    monkeypatch.setenv("MINICRATE_GRADING_SEED", "12345")
    assert [x.spec for x in grading.make_cases(task)] == [x.spec for x in c]
    assert len(grading.make_cases(task, examples=2)) == len(task.explicit) + 2


# --------------------------------------------------------------------------
# Every registered mistake is a real mistake and is recognised with its hint
# --------------------------------------------------------------------------


def _pack(task, outputs):
    """Turn named outputs back into what a student's function returns (the structure the
    task's ``outputs`` normaliser accepts)."""
    names = list(outputs)
    values = list(outputs.values())
    grads = {n[len("grads['") : -2]: v for n, v in outputs.items() if n.startswith("grads[")}
    clipped = {n[len("clipped['") : -2]: v for n, v in outputs.items() if n.startswith("clipped[")}
    candidates = [
        values[0],
        (values[0], None),
        tuple(values),
        (values[0], grads),
        (clipped, outputs.get("norm")),
        dict(outputs),
    ]
    for candidate in candidates:
        try:
            unpacked = task.outputs(candidate)
            if list(unpacked) == names and all(
                np.array_equal(
                    grading.as_host(unpacked[n]), grading.as_host(outputs[n]), equal_nan=True
                )
                for n in names
            ):
                return candidate
        except (TypeError, ValueError, IndexError, KeyError):
            pass
    raise AssertionError(f"cannot pack {names} for task {task.id}")


def _student_from_mistake(task, mistake):
    """A student function whose outputs are the reference's with the mistake's swapped in."""

    def outputs(case):
        out = dict(task.reference(case))
        out.update(mistake.wrong(case))
        return _pack(task, out)

    if task.kind == "backward":

        def backward(dout, cache):
            args, kwargs = cache
            return outputs(Case(args, kwargs, "", dout=dout))

        def forward(*args, **kwargs):
            return None, (args, kwargs)

        return backward, forward

    def student(*args, **kwargs):
        return outputs(Case(args, kwargs, ""))

    return student, None


@pytest.mark.parametrize("task_id", _marked(TASK_IDS))
def test_every_registered_mistake_fails_with_its_hint(task_id):
    task = grading.TASKS[task_id]
    cases = grading.make_cases(task, examples=3)
    for mistake in task.mistakes:
        differs = False
        for case in cases:
            ref = {k: grading.as_host(v) for k, v in task.reference(case).items()}
            try:
                wrong = mistake.wrong(case)
            except Exception:
                continue
            differs |= any(
                not grading.matches(grading.as_host(v), ref[k]) for k, v in wrong.items()
            )
        assert differs, f"{task_id}: mistake {mistake.name!r} equals the reference on every case"
        student, forward = _student_from_mistake(task, mistake)
        result = check(task, student, forward=forward, examples=3, fd=False)
        assert not result.passed, f"{task_id}: {mistake.name!r} passed"
        hints = [h for p in result.properties for h in p.hints]
        assert mistake.hint in hints, f"{task_id}: {mistake.name!r} not recognised:\n{result}"


# --------------------------------------------------------------------------
# Deliberately wrong implementations, written as a student would
# --------------------------------------------------------------------------


def _hints(result):
    return " ".join(h for p in result.properties for h in p.hints)


@pytest.mark.task3_2
def test_factor_two_in_grad_logdet_is_named():
    def coding_rate_grad(Z, eps):
        N, d = Z.shape[-2:]
        alpha = d / (N * eps**2)
        M = np.eye(d) + alpha * np.swapaxes(Z, -1, -2) @ Z
        return 2 * alpha * np.swapaxes(np.linalg.solve(M, np.swapaxes(Z, -1, -2)), -1, -2)

    result = check("3.2", coding_rate_grad)
    assert not result.passed and result.score < 1
    assert "factor 2 in ∇logdet" in _hints(result)
    fd = [p for p in result.properties if "finite differences" in p.name][0]
    assert not fd.passed and "finite differences" in fd.message and "index" in fd.message


@pytest.mark.task3_1
def test_wrong_N_in_alpha_is_named():
    def coding_rate(Z, eps):
        d = Z.shape[-1]
        alpha = d / (Z.shape[0] * eps**2)  # the batch size, not the tokens
        return 0.5 * np.linalg.slogdet(np.eye(d) + alpha * np.swapaxes(Z, -1, -2) @ Z)[1]

    result = check("3.1", coding_rate)
    assert not result.passed
    assert "wrong N" in _hints(result) and "Z.shape[-2]" in _hints(result)
    bad = [p for p in result.properties if not p.passed][0]
    assert (
        "relative error" in bad.message and "at index" in bad.message and "expected" in bad.message
    )


@pytest.mark.task3_3
def test_wrong_p_in_beta_is_named():
    def compression_rate(Z, U, eps):
        N, d = Z.shape[-2:]
        beta = d / (N * eps**2)  # should be the head width p
        W = Z[..., None, :, :] @ U
        M = np.eye(U.shape[-1]) + beta * np.swapaxes(W, -1, -2) @ W
        return 0.5 * np.linalg.slogdet(M)[1].sum(-1)

    assert "wrong p" in _hints(check("3.3", compression_rate))


@pytest.mark.task3_4
def test_mean_instead_of_sum_over_the_batch_is_named():
    def compression_rate_grad(Z, U, eps):
        dZ, dU = mc.compression_rate_grad(Z, U, eps)
        return dZ, dU / (Z.shape[0] if Z.ndim == 3 else 1)

    result = check("3.4", compression_rate_grad)
    by_name = {p.name.split()[0]: p for p in result.properties}
    assert by_name["dZ"].passed and not by_name["dU"].passed
    assert "do not average" in " ".join(by_name["dU"].hints)


@pytest.mark.task5_1
def test_softmax_over_the_wrong_axis_is_named():
    def softmax(S):
        E = np.exp(S - S.max(axis=-2, keepdims=True))
        return E / E.sum(axis=-2, keepdims=True)

    assert "softmax over the wrong axis" in _hints(check("5.1", softmax))


@pytest.mark.task5_1
def test_unstable_softmax_is_caught_on_large_logits():
    def softmax(S):
        E = np.exp(S)
        return E / E.sum(axis=-1, keepdims=True)

    with np.errstate(over="ignore", invalid="ignore"):
        result = check("5.1", softmax)
    assert not result.passed and "subtract each row's maximum" in _hints(result)


@pytest.mark.task8_2
def test_missing_transpose_term_in_shared_qk_attention_is_named():
    T = lambda x: np.swapaxes(x, -1, -2)  # noqa: E731

    def mssa_forward(Z, U, W_out, b_out, *, scale=None):
        s = 1 / np.sqrt(U.shape[-1]) if scale is None else scale
        W = Z[..., None, :, :] @ U
        S = s * W @ T(W)
        A = np.exp(S - S.max(-1, keepdims=True))
        A /= A.sum(-1, keepdims=True)
        H = np.concatenate(list(np.moveaxis(A @ W, -3, 0)), axis=-1)
        return H @ W_out.T + b_out, (Z, U, W_out, W, A, H, s)

    def mssa_backward(dY, cache):
        Z, U, W_out, W, A, H, s = cache
        K, d, p = U.shape
        dO = np.stack(np.split(dY @ W_out, K, axis=-1), axis=-3)
        dA = dO @ T(W)
        dS = A * (dA - (A * dA).sum(-1, keepdims=True))
        dW = T(A) @ dO + s * dS @ W  # forgot dSᵀ: W is the query *and* the key
        dZ = (dW @ T(U)).sum(-3)
        dU = (T(Z[..., None, :, :]) @ dW).reshape(-1, K, d, p).sum(0)
        return dZ, {
            "U": dU,
            "W_out": dY.reshape(-1, d).T @ H.reshape(-1, K * p),
            "b_out": dY.reshape(-1, d).sum(0),
        }

    result = check("8.2", mssa_backward, forward=mssa_forward)
    by_name = {p.name.split()[0]: p for p in result.properties}
    assert by_name["grads['W_out']"].passed and not by_name["dZ"].passed
    assert "missing S̄ᵀ term" in " ".join(by_name["dZ"].hints)
    assert check("5.2", mssa_forward).passed


@pytest.mark.task6_2
def test_forgetting_the_relu_mask_is_named():
    def ista_forward(X, D, *, eta=0.1, lam=0.1):
        return mc.ista_forward(X, D, eta=eta, lam=lam)[0], (X, D, eta)

    def ista_backward(dY, cache):
        X, D, eta = cache
        dX = dY + eta * (dY @ D.T - dY @ D.T @ D)  # no mask
        G = X.reshape(-1, X.shape[-1]).T @ dY.reshape(-1, X.shape[-1])
        return dX, {"D": eta * (G - D @ (G + G.T))}

    result = check("6.2", ista_backward, forward=ista_forward)
    assert not result.passed and "forgetting the ReLU mask" in _hints(result)


@pytest.mark.task7_1
def test_unbiased_variance_in_layernorm_is_named():
    def layernorm_forward(X, gamma, beta, *, eps=1e-5):
        mu = X.mean(-1, keepdims=True)
        return gamma * (X - mu) / np.sqrt(X.var(-1, ddof=1, keepdims=True) + eps) + beta, None

    assert "biased variance" in _hints(check("7.1", layernorm_forward))


@pytest.mark.task7_4
def test_missing_skip_gradient_in_the_layer_is_named():
    def encoder_layer_forward(Z, params, *, scale=None, eta=0.1, lam=0.1):
        P = params
        X1, ln1 = mc.layernorm_forward(Z, P["ln1_gamma"], P["ln1_beta"])
        M, mssa = mc.mssa_forward(X1, P["U"], P["W_out"], P["b_out"], scale=scale)
        X2, ln2 = mc.layernorm_forward(Z + M, P["ln2_gamma"], P["ln2_beta"])
        Y, ista = mc.ista_forward(X2, P["D"], eta=eta, lam=lam)
        return Y, (ln1, mssa, ln2, ista)

    def encoder_layer_backward(dY, cache):
        ln1, mssa, ln2, ista = cache
        dX2, g_ista = mc.ista_backward(dY, ista)
        dZ_half, g_ln2 = mc.layernorm_backward(dX2, ln2)
        dX1, g_mssa = mc.mssa_backward(dZ_half, mssa)
        dZ, g_ln1 = mc.layernorm_backward(dX1, ln1)  # forgot "+ dZ_half" (the skip)
        grads = {
            "ln1_gamma": g_ln1["gamma"],
            "ln1_beta": g_ln1["beta"],
            **g_mssa,
            "ln2_gamma": g_ln2["gamma"],
            "ln2_beta": g_ln2["beta"],
            "D": g_ista["D"],
        }
        return dZ, grads

    result = check("7.4", encoder_layer_backward, forward=encoder_layer_forward)
    assert "you kept only the branch" in _hints(result)
    assert sum(not p.passed for p in result.properties) == 2  # dZ and the FD check only


# --------------------------------------------------------------------------
# The student's code never crashes the grader
# --------------------------------------------------------------------------


@pytest.mark.task3_1
def test_not_implemented_is_reported_not_raised():
    def coding_rate(Z, eps):
        raise NotImplementedError("Task 3.1: coding_rate")

    result = check("3.1", coding_rate)
    assert result.status == "not implemented" and result.score == 0 and not result.passed
    assert "Task 3.1" in str(result) and "not implemented" in str(result)


@pytest.mark.task6_2
def test_backward_whose_forward_is_not_implemented():
    def ista_forward(X, D, *, eta=0.1, lam=0.1):
        raise NotImplementedError("Task 6.1: ista_forward")

    result = check("6.2", lambda dY, cache: None, forward=ista_forward)
    assert result.status == "not implemented" and "forward" in result.note


@pytest.mark.parametrize(
    "bad",
    [
        lambda Z, eps: 1 / 0,
        lambda Z, eps: None,
        lambda Z, eps: (Z, Z),
        lambda Z, eps: "a string",
        lambda Z, eps: np.full(Z.shape[:-2], np.nan),
        lambda Z, eps: sys.exit(3),
    ],
)
def test_anything_the_student_returns_or_raises_becomes_a_result(bad):
    result = check("3.1", bad)
    assert result.status == "failed" and not result.passed
    assert result.messages and result.to_dict()["passed"] is False
    json.dumps(result.to_dict())


def test_modifying_inputs_in_place_is_reported():
    def layernorm_forward(X, gamma, beta, *, eps=1e-5):
        X -= X.mean(-1, keepdims=True)
        X /= np.sqrt((X * X).mean(-1, keepdims=True) + eps)
        return gamma * X + beta, None

    result = check("7.1", layernorm_forward)
    assert "modified its input X in place" in str(result)


def test_not_a_function_and_unknown_task():
    assert check("3.1", 42).status == "error"
    with pytest.raises(KeyError, match="unknown task"):
        check("99.1", lambda: None)
    assert grading.get_task("task3_2") is grading.get_task(3.2) is grading.TASKS["3.2"]


def test_portable_code_runs_on_array_api_strict():
    result = check("3.2", grading.TASKS["3.2"].solution, backend="array_api_strict", examples=3)
    assert result.passed, str(result)


# --------------------------------------------------------------------------
# Grading a student's file by path
# --------------------------------------------------------------------------

WRONG_RATES = textwrap.dedent("""
    import numpy as np

    def coding_rate(Z, eps):
        N, d = Z.shape[-2:]
        alpha = d / (N * eps**2)
        return np.linalg.slogdet(np.eye(d) + alpha * np.swapaxes(Z, -1, -2) @ Z)[1]  # no 1/2

    def coding_rate_grad(Z, eps):
        from minicrate.objective.rates import coding_rate_grad as right
        return right(Z, eps)
""")


def test_grade_file_imports_that_file_not_the_reference(tmp_path):
    # Named like the reference module: grading must still import *this* file.
    path = tmp_path / "rates.py"
    path.write_text(WRONG_RATES)
    results = {r.task: r for r in grading.grade_file(path)}
    assert set(results) == {"3.1", "3.2"}
    assert not results["3.1"].passed and "keep the factor ½" in str(results["3.1"])
    assert results["3.2"].passed
    module = grading.load_student_module(path)
    assert module.__name__.startswith("minicrate_student_") and module.__file__ == str(path)
    assert module.coding_rate is not mc.coding_rate


def test_grade_file_of_a_notebook_and_import_errors(tmp_path):
    import jupytext

    src = os.path.join(os.path.dirname(__file__), "..", "exercises", "ch03_coding_rate.md")
    nb = jupytext.read(src)
    for cell in nb.cells:  # plant the factor-2 mistake in the student's notebook
        cell.source = cell.source.replace(
            "return alpha * xp.matrix_transpose", "return 2 * alpha * xp.matrix_transpose"
        )
    path = tmp_path / "ch03_coding_rate-student.ipynb"
    jupytext.write(nb, str(path), fmt="ipynb")
    results = {r.task: r for r in grading.grade_file(path)}
    assert results["3.1"].passed and not results["3.2"].passed
    assert "factor 2 in ∇logdet" in str(results["3.2"])

    broken = tmp_path / "broken.py"
    broken.write_text("import numpy as np\nraise RuntimeError('oops')\n")
    (r,) = grading.grade_file(broken)
    assert r.status == "error" and "RuntimeError: oops" in r.note
    with pytest.raises(FileNotFoundError):
        grading.grade_file(tmp_path / "missing.py")


def test_grade_command_writes_json_and_gradescope_results(tmp_path, capsys):
    from minicrate.cli import main

    path = tmp_path / "hw.py"
    path.write_text(WRONG_RATES)
    out_json, out_gs = tmp_path / "r.json", tmp_path / "results.json"
    code = main(
        [
            "grade",
            str(path),
            "--task",
            "3.1",
            "--task",
            "3.2",
            "--examples",
            "2",
            "--json",
            str(out_json),
            "--gradescope",
            str(out_gs),
        ]
    )
    text = capsys.readouterr().out
    assert code == 1 and "Task 3.1 coding_rate: failed" in text and "1 of 2 tasks passed" in text
    records = json.loads(out_json.read_text())
    assert [r["task"] for r in records] == ["3.1", "3.2"] and records[1]["passed"]
    gs = json.loads(out_gs.read_text())
    assert len(gs["tests"]) == 2 and gs["tests"][1]["score"] == 1.0 and gs["score"] >= 1.0
    assert main(["grade", "--list"]) == 0 and "task3_2" in capsys.readouterr().out


@pytest.mark.slow
def test_pytest_entry_point_grades_the_file_given_by_path(tmp_path):
    path = tmp_path / "hw.py"
    path.write_text(WRONG_RATES)
    env = dict(os.environ, MINICRATE_STUDENT=str(path))
    root = os.path.join(os.path.dirname(__file__), "..")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "tests/grade_student.py",
            "-m",
            "task3_1 or task3_2",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 passed" in run.stdout and "keep the factor" in run.stdout
