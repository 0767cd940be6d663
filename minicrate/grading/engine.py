"""The check engine: run a student's function on every case and grade each property.

See :func:`check` (re-exported as :func:`minicrate.grading.check`) for the
steps: run on copies of every case, compare each output with the reference,
check gradients against finite differences of the reference forward, and
name the known mistake a wrong output equals.
"""

from __future__ import annotations

import time

import numpy as np

from minicrate.checks.gradcheck import check_vjp
from minicrate.core.backend import namespace, to_numpy
from minicrate.grading.cases import make_cases
from minicrate.grading.compare import (
    as_host,
    compare,
    describe_difference,
    dtype_name,
    dtype_problem,
    format_exception,
    matches,
    ratio_hint,
)
from minicrate.grading.registry import get_task
from minicrate.grading.types import Case, CaseRun, CheckResult, PropertyResult, Task


def _copy_value(x):
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, dict):
        return {k: _copy_value(v) for k, v in x.items()}
    try:
        xp = namespace(x)
        return xp.asarray(x, copy=True)
    except Exception:
        return x


def _snapshot(value):
    try:
        if isinstance(value, dict):
            return {k: _snapshot(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)):
            return tuple(_snapshot(v) for v in value)
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            return np.array(to_numpy(value), copy=True)
    except Exception:
        pass
    return None


def _modified(before, after):
    if before is None:
        return False
    if isinstance(before, dict):
        return isinstance(after, dict) and any(
            _modified(before[k], after.get(k)) for k in before if k in after
        )
    if isinstance(before, tuple):
        return isinstance(after, (tuple, list)) and any(
            _modified(b, a) for b, a in zip(before, after, strict=False)
        )
    try:
        a = to_numpy(after)
        return a.shape != before.shape or not np.array_equal(a, before, equal_nan=True)
    except Exception:
        return False


class _NotImplemented(Exception):
    pass


def _call(task: Task, fn, case: Case, forward=None):
    """Run ``fn`` on a copy of ``case``; return its outputs as named float64 host arrays and
    the dtypes it really returned.  Changing an input, the upstream gradient or the cache in
    place raises ``TypeError``."""
    args = tuple(_copy_value(a) for a in case.args)
    kwargs = {k: _copy_value(v) for k, v in case.kwargs.items()}
    before = [_snapshot(a) for a in args]
    watched = []  # (what, before, after-object) of the backward's own arguments
    if task.kind == "backward":
        fwd = forward if forward is not None else task.reference_forward
        try:
            out = fwd(*args, **kwargs)
        except NotImplementedError as err:
            raise _NotImplemented(
                f"the forward function it needs is not implemented ({err})"
            ) from err
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("the forward function should return a tuple (out, cache)")
        dout = _copy_value(case.dout)
        watched = [("upstream gradient (dout)", _snapshot(dout), dout),
                   ("cache", _snapshot(out[1]), out[1])]
        returned = fn(dout, out[1])
    else:
        returned = fn(*args, **kwargs)
    names = _argnames(task, len(args))
    for name, b, a in zip(names, before, args, strict=True):
        if _modified(b, a):
            raise TypeError(
                f"the function modified its input {name} in place; "
                "work on new arrays (e.g. X = X - mu, not X -= mu)"
            )
    for what, b, a in watched:
        if _modified(b, a):
            raise TypeError(
                f"the backward modified its {what} in place; work on a copy "
                "(e.g. dP = np.where(P > 0, dY, 0.0), not dY[P <= 0] = 0)"
            )
    outputs = task.outputs(returned)
    return {k: as_host(v, k) for k, v in outputs.items()}, {k: dtype_name(v) for k, v in outputs.items()}


def run_case(task: Task, fn, case: Case, forward=None) -> CaseRun:
    """Run the student's function on one case; never raises for the student's code."""
    try:
        outputs, dtypes = _call(task, fn, case, forward)
        return CaseRun(outputs=outputs, dtypes=dtypes)
    except _NotImplemented as err:
        return CaseRun(not_implemented=str(err))
    except NotImplementedError as err:
        msg = str(err) or f"Task {task.id}"
        return CaseRun(
            not_implemented=f"not implemented yet ({msg}); write the code where the stub raises"
        )
    except (Exception, SystemExit) as err:  # noqa: BLE001 -- student code may raise anything
        return CaseRun(error=format_exception(err))


def run_cases(task: Task, fn, cases, forward=None) -> list:
    """:func:`run_case` on every case, stopping at the first "not implemented"."""
    runs = []
    for case in cases:
        runs.append(run_case(task, fn, case, forward))
        if runs[-1].not_implemented is not None:
            break
    return runs


def _argnames(task, n):
    names = tuple(task.argnames[:n])
    return names + tuple(f"argument {i + 1}" for i in range(len(names), n))


def _reference_outputs(task: Task, case: Case):
    ref = task.reference(case)
    return {k: as_host(v, k) for k, v in ref.items()}, {k: dtype_name(v) for k, v in ref.items()}


# --------------------------------------------------------------------------
# check()
# --------------------------------------------------------------------------


def check(
    task,
    student_function,
    *,
    forward=None,
    seed=None,
    examples=None,
    backend="numpy",
    fd=True,
    runs=None,
    name=None,
) -> CheckResult:
    """Grade ``student_function`` on task ``task`` (e.g. ``"3.2"``).

    Args:
        task: a task id in :data:`TASKS` (or a :class:`Task`).
        student_function: the student's implementation, with the signature
            of the task's stub.
        forward: for a backward task, the student's forward function whose
            ``cache`` the backward consumes (default: the reference forward).
        seed: seed of the Hypothesis-drawn cases (default
            :func:`default_seed`); instructors use a private one.
        examples: how many cases to draw (default: the task's).
        backend: array backend of the inputs (``"numpy"``; ``"array_api_strict"``
            checks that the code is portable).
        fd: also run the finite-difference check of gradients.
        runs: the :class:`CaseRun` of every case, already computed (by a
            sandboxed child process, :mod:`minicrate.grading.classroom`):
            ``student_function`` is then not called, only graded.
        name: the function's name in the result (default: its ``__name__``).

    Contracts: every output has the reference's dtype (float64 in, float64
    out), the exact shape, and no input, upstream gradient or cache is
    changed in place.  Score: 1.0 when every property passed, else the
    fraction of the value properties that passed times the fraction of the
    cases that ran; running alone earns nothing.

    Returns:
        a :class:`CheckResult`.  Never raises because the student's code
        raised; raises ``KeyError`` for an unknown task id.
    """
    start = time.perf_counter()
    if not isinstance(task, Task):
        task = get_task(task)
    if name is None:
        name = getattr(student_function, "__name__", type(student_function).__name__)
    n_ran = [0, 0]  # cases that ran, cases

    def done(status, props, note=""):
        if status == "failed" and props and all(p.passed for p in props):
            status = "passed"
        values = props[1:]
        if status == "passed":
            score = 1.0
        elif status != "failed" or not values or not n_ran[1]:
            score = 0.0
        else:
            score = sum(p.passed for p in values) / len(values) * n_ran[0] / n_ran[1]
        return CheckResult(task.id, name, status, score, props, time.perf_counter() - start, note)

    if runs is None and not callable(student_function):
        return done("error", [], f"expected a function, got {type(student_function).__name__}")
    try:
        cases = make_cases(task, seed=seed, examples=examples, backend=backend)
    except Exception as err:  # a grader problem, not the student's: still no exception
        return done("error", [], f"could not build the cases: {format_exception(err)}")

    # 1. run on every case
    sandboxed = runs is not None
    if not sandboxed:
        runs = run_cases(task, student_function, cases, forward)
    runs = list(runs)[: len(cases)]
    for run in runs:
        if run.not_implemented is not None:
            return done("not implemented", [], run.not_implemented)
    n = len(cases)
    if len(runs) < n:  # the sandbox sent fewer runs than cases
        runs += [CaseRun(error="no result came back for this case")] * (n - len(runs))
    ran = [(i, case, run) for i, (case, run) in enumerate(zip(cases, runs, strict=True))
           if run.error is None]
    failures = [(i, case, run.error) for i, (case, run) in enumerate(zip(cases, runs, strict=True))
                if run.error is not None]
    n_ran[:] = [len(ran), n]
    title = f"runs on all {n} cases, returns the documented structure and changes no argument"
    props = []
    if failures:
        i, case, err = failures[0]
        props.append(
            PropertyResult(
                title,
                False,
                f"case {i + 1} of {n} ({case.label}): {err}"
                + (f"; {len(failures) - 1} more case(s) failed too" if len(failures) > 1 else "")
                + (
                    f"\n(the cache came from minicrate's forward, whose layout differs from "
                    f"yours: pass forward={task.forward_name} to check)"
                    if task.kind == "backward" and forward is None and not sandboxed
                    else ""
                ),
            )
        )
    else:
        props.append(PropertyResult(title, True))

    # 2. every output against the reference
    references = {}
    mistake_cache = {}
    if ran:
        try:
            references = {i: _reference_outputs(task, case) for i, case, _ in ran}
        except Exception as err:
            return done("error", props, f"the reference failed: {format_exception(err)}")
        out_names = []  # in order of first appearance (a task's outputs may vary by case)
        for ref, _ in references.values():
            out_names += [k for k in ref if k not in out_names]
        for out_name in out_names:
            props.append(_output_property(task, out_name, ran, references, n, mistake_cache))
    # 3. finite differences
    if fd and task.fd is not None and ran:
        props.append(_fd_property(task, ran, references))
    # 4. task-specific properties (they call the function again: not in a sandbox)
    if student_function is not None and callable(student_function):
        for extra in task.extra:
            try:
                props.append(extra(student_function, cases, {"forward": forward, "backend": backend}))
            except (Exception, SystemExit) as err:  # noqa: BLE001
                props.append(
                    PropertyResult(
                        getattr(extra, "__doc__", None) or extra.__name__,
                        False,
                        f"raised {format_exception(err)}",
                    )
                )
    return done("failed", props)


def _output_property(task, out_name, ran, references, n, mistake_cache):
    used = [(i, case, run) for i, case, run in ran if out_name in references[i][0]]
    title = f"{out_name} matches the reference (value, shape, dtype) on all {len(used)} case(s) that ran"
    for i, case, run in used:
        outputs = run.outputs
        expected = references[i][0][out_name]
        if out_name not in outputs:
            return PropertyResult(
                title,
                False,
                f"{out_name} is missing from what the function returned "
                f"(it returned {sorted(outputs)})",
            )
        got = outputs[out_name]
        wrong_dtype = dtype_problem(out_name, run.dtypes.get(out_name), references[i][1].get(out_name))
        if wrong_dtype:
            return PropertyResult(title, False, f"on case {i + 1} of {n} ({case.label}): {wrong_dtype}")
        diff = compare(got, expected)
        if diff is None:
            continue
        hints = _mistake_hints(task, case, i, out_name, got, mistake_cache)
        if not hints and diff["why"] == "value":  # no round-off hint for a wrong shape
            generic = ratio_hint(got, expected)
            if generic:
                hints = [generic]
        return PropertyResult(title, False, describe_difference(out_name, diff, case, i, n), hints)
    return PropertyResult(title, True)


def _mistake_hints(task, case, i, out_name, got, cache):
    hints = []
    for m in task.mistakes:
        key = (i, m.name)
        if key not in cache:
            try:
                cache[key] = {k: as_host(v, k) for k, v in m.wrong(case).items()}
            except Exception:
                cache[key] = {}
        wrong = cache[key]
        if out_name in wrong and matches(got, wrong[out_name]):
            hints.append(m.hint)
    return hints


def _fd_property(task, ran, references):
    spec = task.fd
    used = ran[: spec.cases]
    names = ", ".join(spec.wrt) if len(spec.wrt) <= 4 else f"all {len(spec.wrt)} gradients"
    verb = "agrees" if len(spec.wrt) == 1 else "agree"
    title = (
        f"{names} {verb} with finite differences of the reference forward on {len(used)} case(s)"
    )
    for i, case, run in used:
        outputs = run.outputs
        grads = {arg: outputs[out] for out, arg in spec.wrt.items() if out in outputs}
        if len(grads) < len(spec.wrt):
            return PropertyResult(title, False, "some gradients are missing (see above)")
        if any(dtype_problem(out, run.dtypes.get(out), references[i][1].get(out)) for out in spec.wrt):
            return PropertyResult(title, False, "a gradient has the wrong dtype (see above)")
        if spec.inputs is not None:
            inputs = spec.inputs(case)
        else:
            inputs = dict(zip(task.argnames, case.args, strict=False))
            inputs.update(case.kwargs)
        f = spec.forward
        cot = spec.cotangent(case) if spec.cotangent else case.dout
        like = inputs[next(iter(grads))]
        xp = namespace(like)
        cot = xp.asarray(cot, dtype=like.dtype)
        try:
            grads_x = {a: xp.asarray(g, dtype=like.dtype) for a, g in grads.items()}
            for a, g in grads_x.items():
                if tuple(g.shape) != tuple(inputs[a].shape):
                    return PropertyResult(
                        title,
                        False,
                        f"the gradient for {a} has shape {tuple(g.shape)}, but "
                        f"{a} has shape {tuple(inputs[a].shape)}",
                    )
            report = check_vjp(f, inputs, cot, grads_x, max_entries=spec.max_entries, seed=i)
        except Exception as err:
            return PropertyResult(
                title, False, f"finite-difference check failed to run: {format_exception(err)}"
            )
        if not report.passed:
            out_of = {arg: out for out, arg in spec.wrt.items()}
            bad = [r for r in report.args.values() if r.max_rel_error > report.rtol]
            lines = [f"on case {i + 1} ({case.label}):"]
            for r in bad:
                lines.append(
                    f"{out_of[r.name]} (gradient w.r.t. {r.name}): relative error "
                    f"{r.max_rel_error:.2e} at index {r.worst_index}: yours {r.analytic:.8g}, "
                    f"finite differences {r.numeric:.8g}"
                )
            return PropertyResult(title, False, "\n".join(lines))
    return PropertyResult(title, True)
