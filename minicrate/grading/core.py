r"""The grading reference for the exercise notebooks in ``exercises/``.

A course grades a student's implementation of one exercise task with

>>> from minicrate.grading.core import check
>>> result = check("3.2", coding_rate_grad)      # doctest: +SKIP
>>> print(result)                                 # doctest: +SKIP
Task 3.2 coding_rate_grad: passed (score 1.00)
  ok    runs on all 9 cases and returns the documented structure
  ok    dR/dZ matches the reference on all 9 cases
  ok    dR/dZ agrees with finite differences of the reference R on 2 cases

What happens inside :func:`check`:

1. The task's **cases** are drawn with Hypothesis from :mod:`minicrate.checks.strategies`
   (sizes, hyper-parameters and a seed; the arrays are then generated from the
   seed, float64).  Generation is seeded, so every run sees the same cases; an
   instructor changes them with ``seed=`` (or ``MINICRATE_GRADING_SEED``) and
   adds more with ``examples=``.  Edge cases (one token, one head, a batch of
   one) come first.
2. The student's function runs on copies of every case.  An exception never
   escapes: ``NotImplementedError`` makes the result "not implemented", any
   other exception fails the "runs" property with the exception and the case.
3. Each output (and each gradient) is compared with the reference
   implementation in :mod:`minicrate`, entry by entry, with CS231n's relative
   error (the floor scaled as in :mod:`minicrate.checks.gradcheck`) and a tolerance of
   1e-6 (float64; correct code agrees to about 1e-12).
4. Gradients are also compared with **finite differences** of the reference
   forward function (:func:`minicrate.check_vjp`), which needs no trusted
   backward at all.
5. When an output is wrong, the output of every **known mistake** of that task
   (:class:`Mistake`, a deliberately wrong implementation, e.g. the missing
   :math:`\bar S^\top` term of shared query/key attention) is computed on the
   same case; if the student's output equals one of them, its hint is shown.

The registry :data:`TASKS` (task id -> :class:`Task`) is explicit; print
``describe()`` to list every task, what it checks and which mistakes it
recognises.  Task ids are ``chapter.number``: task 5.2 is the second task of
the notebook that goes with chapter 5 of the book, and its pytest marker is
``task5_2``.

Grading a student's *file* (``.py``, or a notebook as ``.ipynb``/MyST ``.md``)
goes through :func:`grade_file`; it imports **that file** with
``importlib.util.spec_from_file_location`` under a fresh module name, never
the reference.  ``python -m minicrate grade PATH`` and ``tests/grade_student.py``
use it.

This module is host-side tooling (like the finite-difference checker): it
uses NumPy to compare results, whatever backend the cases are built on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import math
import os
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from minicrate.core.backend import get_backend, to_numpy

DEFAULT_SEED = 20240607
"""Seed of the public cases (override with ``seed=`` or ``MINICRATE_GRADING_SEED``)."""

RTOL = 1e-6
"""Tolerance on the entrywise relative error against the reference (float64)."""

FLOOR = 1e-6
"""Relative-error floor, times the largest expected entry (as in gradcheck)."""


# --------------------------------------------------------------------------
# Data structures
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One graded input: positional ``args``, keyword ``kwargs``, a label.

    For a backward task ``args``/``kwargs`` are the *forward* function's
    inputs and ``dout`` the upstream gradient passed to the backward.
    """

    args: tuple
    kwargs: dict
    label: str
    dout: Any = None
    spec: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Mistake:
    """A known wrong implementation and the hint shown when a student's output equals it.

    ``wrong(case)`` returns a dict ``output name -> array`` (only the outputs
    the mistake changes need to be present).
    """

    name: str
    hint: str
    wrong: Callable[[Case], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class FiniteDifferences:
    """How to check gradients numerically.

    ``forward(**inputs)`` is the reference function being differentiated (it
    may return ``(out, cache)``); ``inputs(case)`` gives its keyword
    arguments (default: the case's positional arguments under the task's
    ``argnames``, plus its keyword arguments); ``wrt`` maps a student output
    name to the input it is the gradient of; ``cotangent(case)`` gives the
    upstream gradient (default: ``case.dout``).
    """

    forward: Callable
    wrt: Mapping[str, str]
    inputs: Callable[[Case], dict] | None = None
    cotangent: Callable[[Case], Any] | None = None
    cases: int = 2
    max_entries: int | None = 48


@dataclasses.dataclass(frozen=True)
class Task:
    """One exercise task.

    Attributes:
        id: ``"chapter.number"``, e.g. ``"3.2"``.
        function: the name the student's function has in the notebook.
        title: one line: what to implement.
        notebook: the notebook file (in ``exercises/``) the task lives in.
        book: the book chapter the task goes with.
        kind: ``"function"`` (called as ``f(*args, **kwargs)``) or
            ``"backward"`` (called as ``f(dout, cache)`` with ``cache`` from a
            forward function: the student's, passed to :func:`check` as
            ``forward=``, else ``reference_forward``).
        strategy: a Hypothesis strategy of *specs* (sizes, seeds, options).
        build: ``build(spec, xp) -> Case``.
        reference: returns the expected outputs of a case, a dict.
        outputs: ``outputs(returned) -> dict`` turning what the student's
            function returned into named arrays; raises ``TypeError`` with a
            message when the structure is wrong.
        checks: what is checked, for :func:`describe` and the notebooks.
        mistakes: the known wrong implementations recognised.
        fd: finite-difference check of gradients, or ``None``.
        extra: extra properties, ``prop(student, case_list, options) -> PropertyResult``.
        explicit: specs always graded first (edge cases).
        examples: number of Hypothesis-drawn specs.
        argnames: names of the positional arguments (for messages).
        forward_name: for a backward task, the name of the matching forward.
        reference_forward: for a backward task, the forward used when the
            student gives none.
        solution: minicrate's implementation with the student's signature
            (what a full-marks submission computes).
    """

    id: str
    function: str
    title: str
    notebook: str
    book: str
    kind: str
    strategy: Any
    build: Callable
    reference: Callable[[Case], Mapping[str, Any]]
    outputs: Callable[[Any], Mapping[str, Any]]
    checks: tuple
    mistakes: tuple = ()
    fd: FiniteDifferences | None = None
    extra: tuple = ()
    explicit: tuple = ()
    examples: int = 8
    argnames: tuple = ()
    forward_name: str | None = None
    reference_forward: Callable | None = None
    solution: Callable | None = None

    @property
    def marker(self) -> str:
        """The pytest marker of the task, e.g. ``task3_2``."""
        return "task" + self.id.replace(".", "_")


@dataclasses.dataclass
class PropertyResult:
    """One checked property: ``passed``, a message, and hints for known mistakes."""

    name: str
    passed: bool
    message: str = ""
    hints: list = dataclasses.field(default_factory=list)

    def lines(self):
        flag = "ok  " if self.passed else "FAIL"
        out = [f"  {flag}  {self.name}"]
        if self.message:
            out += [f"        {line}" for line in self.message.splitlines()]
        out += [f"        hint: {h}" for h in self.hints]
        return out


@dataclasses.dataclass(repr=False)
class CheckResult:
    """The result of :func:`check`, ready for an autograder to record.

    Attributes:
        task, function: which task and student function.
        status: ``"passed"``, ``"failed"``, ``"not implemented"`` or ``"error"``
            (the function could not be called at all, e.g. it is missing).
        score: fraction of properties that passed, in [0, 1].
        properties: the :class:`PropertyResult` of every property.
        seconds: time the check took.
    """

    task: str
    function: str
    status: str
    score: float
    properties: list
    seconds: float = 0.0
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def messages(self) -> list:
        """One string per property (with its hints), then the note."""
        msgs = ["\n".join(p.lines()).strip() for p in self.properties]
        return msgs + ([self.note] if self.note else [])

    def __str__(self) -> str:
        head = f"Task {self.task} {self.function}: {self.status}"
        if self.status in ("passed", "failed"):
            head += f" (score {self.score:.2f})"
        lines = [head]
        if self.note:
            lines.append(f"  {self.note}")
        for p in self.properties:
            lines += p.lines()
        return "\n".join(lines)

    __repr__ = __str__

    def to_dict(self) -> dict:
        """A JSON-ready dict (for autograders)."""
        return {
            "task": self.task,
            "function": self.function,
            "status": self.status,
            "passed": self.passed,
            "score": self.score,
            "seconds": round(self.seconds, 3),
            "note": self.note,
            "properties": [dataclasses.asdict(p) for p in self.properties],
        }


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def as_host(x, name="output"):
    """A float64 NumPy copy of an array-like output (raises ``TypeError`` if it is not one)."""
    if x is None:
        raise TypeError(f"{name} is None (did the function forget to return it?)")
    if isinstance(x, (bool, int, float, np.number, np.ndarray)):
        return np.asarray(x, dtype=np.float64)
    if isinstance(x, (tuple, list, dict, str)):
        raise TypeError(f"{name} should be an array, got a {type(x).__name__}")
    try:
        return np.asarray(to_numpy(x), dtype=np.float64)
    except Exception as err:  # not an array of any backend we know
        raise TypeError(f"{name} should be an array, got {type(x).__name__}") from err


def compare(got, expected, rtol=RTOL):
    """Entrywise comparison.  Returns ``None`` when equal within ``rtol``,
    else a dict with ``index``, ``got``, ``expected``, ``error`` and ``why``."""
    g = np.asarray(got, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if g.shape != e.shape:
        return {"why": "shape", "got_shape": g.shape, "expected_shape": e.shape}
    if g.size == 0:
        return None
    bad = ~np.isfinite(g)
    if bad.any() and not (~np.isfinite(e)[bad]).all():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return {
            "why": "nonfinite",
            "index": idx,
            "got": float(g[idx]),
            "expected": float(e[idx]),
            "error": math.inf,
        }
    scale = max(1.0, float(np.max(np.abs(e[np.isfinite(e)]), initial=0.0)))
    gf, ef = g.reshape(-1), e.reshape(-1)
    with np.errstate(invalid="ignore"):
        err = np.abs(gf - ef) / np.maximum(FLOOR * scale, np.abs(gf) + np.abs(ef))
    err[~np.isfinite(gf) & ~np.isfinite(ef)] = 0.0
    flat = int(np.argmax(err))
    if err[flat] <= rtol:
        return None
    idx = tuple(int(i) for i in np.unravel_index(flat, g.shape))
    worst = flat
    g, e = gf, ef
    return {
        "why": "value",
        "index": idx,
        "got": float(g[worst]),
        "expected": float(e[worst]),
        "error": float(err[worst]),
    }


def matches(got, expected, rtol=RTOL) -> bool:
    """True when :func:`compare` finds no difference."""
    try:
        return compare(got, expected, rtol) is None
    except Exception:
        return False


def _describe_difference(name, diff, case, i, n):
    where = f"case {i + 1} of {n} ({case.label})"
    if diff["why"] == "shape":
        return (
            f"{name} has shape {diff['got_shape']} on {where}; expected shape "
            f"{diff['expected_shape']}"
        )
    if diff["why"] == "nonfinite":
        return (
            f"{name} is {diff['got']} at index {diff['index']} on {where}; expected "
            f"{diff['expected']:.6g}"
        )
    msg = (
        f"{name} is off on {where}: relative error {diff['error']:.2e} at index "
        f"{diff['index']}: yours {diff['got']:.8g}, expected {diff['expected']:.8g}"
    )
    return msg


def _ratio_hint(got, expected):
    """Generic hints: a constant factor, a sign flip, float32-level round-off."""
    g = np.asarray(got, dtype=np.float64).ravel()
    e = np.asarray(expected, dtype=np.float64).ravel()
    if g.shape != e.shape or g.size == 0 or not np.all(np.isfinite(g)):
        return None
    mask = np.abs(e) > 1e-8 * max(1.0, float(np.max(np.abs(e))))
    if not mask.any():
        return None
    r = g[mask] / e[mask]
    if np.allclose(r, r[0], rtol=1e-6, atol=0) and abs(r[0] - 1) > 1e-6:
        if abs(r[0] + 1) < 1e-6:
            return "your result is exactly minus the expected one: check the sign"
        return (
            f"your result is the expected one times a constant ({r[0]:.6g}) on this case: "
            "look for a wrong constant factor"
        )
    err = np.max(np.abs(g - e)) / max(1e-300, float(np.max(np.abs(e))))
    if err < 1e-4:
        return (
            "close but not to float64 accuracy (relative difference "
            f"{err:.1e}): did you compute in float32, or change an epsilon?"
        )
    return None


def _format_exception(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = ""
    for frame in reversed(tb):  # the innermost frame outside this module
        if not frame.filename.endswith(os.path.join("minicrate", "grading.py")):
            where = (
                f" (line {frame.lineno}: {frame.line})" if frame.line else f" (line {frame.lineno})"
            )
            break
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}{where}"


def _copy_value(x):
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, dict):
        return {k: _copy_value(v) for k, v in x.items()}
    try:
        xp = __import__("minicrate.core.backend", fromlist=["namespace"]).namespace(x)
        return xp.asarray(x, copy=True)
    except Exception:
        return x


def _snapshot(value):
    try:
        if isinstance(value, dict):
            return {k: _snapshot(v) for k, v in value.items()}
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            return np.array(to_numpy(value), copy=True)
    except Exception:
        pass
    return None


def _modified(before, after):
    if before is None:
        return False
    if isinstance(before, dict):
        return any(_modified(before[k], after.get(k)) for k in before if k in after)
    try:
        a = to_numpy(after)
        return a.shape != before.shape or not np.array_equal(a, before, equal_nan=True)
    except Exception:
        return False


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

_SPEC_CACHE: dict = {}


def draw_specs(task: Task, n: int, seed: int) -> list:
    """The task's explicit specs, then up to ``n`` Hypothesis-drawn specs (deterministic).

    Hypothesis runs with ``@seed(seed)``, no example database and no
    shrinking, so the same ``(task, n, seed)`` always gives the same specs.
    """
    key = (task.id, n, seed)
    if key not in _SPEC_CACHE:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hyp_seed

        drawn = []

        @hyp_seed(seed)
        @settings(
            max_examples=max(1, n),
            database=None,
            deadline=None,
            derandomize=False,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
            report_multiple_bugs=False,
        )
        @given(task.strategy)
        def collect(spec):
            drawn.append(spec)

        if n > 0:
            collect()
        specs = []
        for spec in list(task.explicit) + drawn[:n]:
            if spec not in specs:
                specs.append(spec)
        _SPEC_CACHE[key] = specs
    return [dict(s) for s in _SPEC_CACHE[key]]


def make_cases(task: Task, *, seed=None, examples=None, backend="numpy") -> list:
    """The graded :class:`Case` list of a task."""
    seed = default_seed() if seed is None else int(seed)
    n = task.examples if examples is None else int(examples)
    xp = get_backend(backend)
    return [task.build(spec, xp) for spec in draw_specs(task, n, seed)]


def default_seed() -> int:
    """``MINICRATE_GRADING_SEED`` if set (private variants), else :data:`DEFAULT_SEED`."""
    env = os.environ.get("MINICRATE_GRADING_SEED")
    return int(env) if env else DEFAULT_SEED


# --------------------------------------------------------------------------
# Running the student's code
# --------------------------------------------------------------------------


class _NotImplemented(Exception):
    pass


def _call(task: Task, fn, case: Case, forward=None):
    """Run ``fn`` on a copy of ``case``; return its outputs as named host arrays."""
    args = tuple(_copy_value(a) for a in case.args)
    kwargs = {k: _copy_value(v) for k, v in case.kwargs.items()}
    before = [_snapshot(a) for a in args]
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
        returned = fn(_copy_value(case.dout), out[1])
    else:
        returned = fn(*args, **kwargs)
    names = _argnames(task, len(args))
    for name, b, a in zip(names, before, args, strict=True):
        if _modified(b, a):
            raise TypeError(
                f"the function modified its input {name} in place; "
                "work on new arrays (e.g. X = X - mu, not X -= mu)"
            )
    outputs = task.outputs(returned)
    return {k: as_host(v, k) for k, v in outputs.items()}


def _argnames(task, n):
    names = tuple(task.argnames[:n])
    return names + tuple(f"argument {i + 1}" for i in range(len(names), n))


def _reference_outputs(task: Task, case: Case):
    return {k: as_host(v, k) for k, v in task.reference(case).items()}


# --------------------------------------------------------------------------
# check()
# --------------------------------------------------------------------------


def check(
    task, student_function, *, forward=None, seed=None, examples=None, backend="numpy", fd=True
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

    Returns:
        a :class:`CheckResult`.  Never raises because the student's code
        raised; raises ``KeyError`` for an unknown task id.
    """
    start = time.perf_counter()
    if not isinstance(task, Task):
        task = get_task(task)
    name = getattr(student_function, "__name__", type(student_function).__name__)

    def done(status, props, note=""):
        n = len(props)
        score = sum(p.passed for p in props) / n if n else 0.0
        if status == "failed" and n and all(p.passed for p in props):
            status = "passed"
        return CheckResult(
            task.id,
            name,
            status,
            score if status != "not implemented" else 0.0,
            props,
            time.perf_counter() - start,
            note,
        )

    if not callable(student_function):
        return done("error", [], f"expected a function, got {type(student_function).__name__}")
    try:
        cases = make_cases(task, seed=seed, examples=examples, backend=backend)
    except Exception as err:  # a grader problem, not the student's: still no exception
        return done("error", [], f"could not build the cases: {_format_exception(err)}")

    # 1. run on every case
    ran = []  # (index, case, outputs)
    failures = []
    for i, case in enumerate(cases):
        try:
            ran.append((i, case, _call(task, student_function, case, forward)))
        except _NotImplemented as err:
            return done("not implemented", [], str(err))
        except NotImplementedError as err:
            msg = str(err) or f"Task {task.id}"
            return done(
                "not implemented",
                [],
                f"not implemented yet ({msg}); write the code where the stub raises",
            )
        except (Exception, SystemExit) as err:  # noqa: BLE001 -- student code may raise anything
            failures.append((i, case, err))
    props = []
    n = len(cases)
    if failures:
        i, case, err = failures[0]
        props.append(
            PropertyResult(
                f"runs on all {n} cases and returns the documented structure",
                False,
                f"case {i + 1} of {n} ({case.label}) raised {_format_exception(err)}"
                + (f"; {len(failures) - 1} more case(s) failed too" if len(failures) > 1 else "")
                + (
                    f"\n(the cache came from minicrate's forward, whose layout differs from "
                    f"yours: pass forward={task.forward_name} to check)"
                    if task.kind == "backward" and forward is None
                    else ""
                ),
            )
        )
    else:
        props.append(
            PropertyResult(f"runs on all {n} cases and returns the documented structure", True)
        )

    # 2. every output against the reference
    references = {}
    mistake_cache = {}
    if ran:
        try:
            references = {i: _reference_outputs(task, case) for i, case, _ in ran}
        except Exception as err:
            return done("error", props, f"the reference failed: {_format_exception(err)}")
        out_names = []  # in order of first appearance (a task's outputs may vary by case)
        for ref in references.values():
            out_names += [k for k in ref if k not in out_names]
        for out_name in out_names:
            props.append(_output_property(task, out_name, ran, references, n, mistake_cache))
    # 3. finite differences
    if fd and task.fd is not None and ran:
        props.append(_fd_property(task, ran))
    # 4. task-specific properties
    for extra in task.extra:
        try:
            props.append(extra(student_function, cases, {"forward": forward, "backend": backend}))
        except (Exception, SystemExit) as err:  # noqa: BLE001
            props.append(
                PropertyResult(
                    getattr(extra, "__doc__", None) or extra.__name__,
                    False,
                    f"raised {_format_exception(err)}",
                )
            )
    return done("failed", props)


def _output_property(task, out_name, ran, references, n, mistake_cache):
    used = [(i, case, outputs) for i, case, outputs in ran if out_name in references[i]]
    title = f"{out_name} matches the reference on all {len(used)} case(s) that ran"
    for i, case, outputs in used:
        expected = references[i][out_name]
        if out_name not in outputs:
            return PropertyResult(
                title,
                False,
                f"{out_name} is missing from what the function returned "
                f"(it returned {sorted(outputs)})",
            )
        got = outputs[out_name]
        diff = compare(got, expected)
        if diff is None:
            continue
        hints = _mistake_hints(task, case, i, out_name, got, mistake_cache)
        if not hints:
            generic = _ratio_hint(got, expected)
            if generic:
                hints = [generic]
        return PropertyResult(title, False, _describe_difference(out_name, diff, case, i, n), hints)
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


def _fd_property(task, ran):
    from minicrate.checks.gradcheck import check_vjp

    spec = task.fd
    used = ran[: spec.cases]
    names = ", ".join(spec.wrt) if len(spec.wrt) <= 4 else f"all {len(spec.wrt)} gradients"
    verb = "agrees" if len(spec.wrt) == 1 else "agree"
    title = (
        f"{names} {verb} with finite differences of the reference forward on {len(used)} case(s)"
    )
    for i, case, outputs in used:
        grads = {arg: outputs[out] for out, arg in spec.wrt.items() if out in outputs}
        if len(grads) < len(spec.wrt):
            return PropertyResult(title, False, "some gradients are missing (see above)")
        if spec.inputs is not None:
            inputs = spec.inputs(case)
        else:
            inputs = dict(zip(task.argnames, case.args, strict=False))
            inputs.update(case.kwargs)
        f = spec.forward
        cot = spec.cotangent(case) if spec.cotangent else case.dout
        like = inputs[next(iter(grads))]
        xp = __import__("minicrate.core.backend", fromlist=["namespace"]).namespace(like)
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
                title, False, f"finite-difference check failed to run: {_format_exception(err)}"
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


# --------------------------------------------------------------------------
# Registry access
# --------------------------------------------------------------------------


def _registry():
    try:
        from minicrate.grading.tasks import TASKS as tasks
    except ModuleNotFoundError as err:
        if err.name != "hypothesis":
            raise
        raise ImportError(
            "minicrate.grading.core draws its cases with Hypothesis: pip install 'minicrate[dev]' "
            "(or pip install hypothesis)"
        ) from err
    return tasks


def get_task(task_id) -> Task:
    """The :class:`Task` with id ``task_id`` (``"3.2"``, ``3.2`` or ``"task3_2"``)."""
    key = str(task_id)
    if key.startswith("task"):
        key = key[4:].replace("_", ".")
    tasks = _registry()
    if key not in tasks:
        raise KeyError(f"unknown task {task_id!r}; tasks are {', '.join(tasks)}")
    return tasks[key]


def solution(task_id) -> Callable:
    """minicrate's implementation of a task with the student's signature.

    It is the reference the grader compares with (nothing secret: it calls
    the library); notebooks use it as a stand-in for an unfinished task.
    """
    return get_task(task_id).solution


def describe(task_id=None) -> str:
    """Human-readable list of tasks (or one task): what each checks and the mistakes it knows."""
    tasks = [get_task(task_id)] if task_id is not None else list(_registry().values())
    lines = []
    for t in tasks:
        lines.append(
            f"Task {t.id}  {t.function}  ({t.book}; exercises/{t.notebook}; marker {t.marker})"
        )
        lines.append(f"  {t.title}")
        for c in t.checks:
            lines.append(f"  checks: {c}")
        for m in t.mistakes:
            lines.append(f"  recognises: {m.name}")
    return "\n".join(lines)


def solution_of(module, name):
    """minicrate's ``module.name``, imported when first called (a full-marks submission)."""

    def solution(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(f"minicrate.{module}"), name)(*args, **kwargs)

    solution.__name__ = name
    return solution


def __getattr__(name):  # TASKS is built lazily to keep `import minicrate` light
    if name == "TASKS":
        return _registry()
    raise AttributeError(name)


# --------------------------------------------------------------------------
# Grading a student's file
# --------------------------------------------------------------------------


def _notebook_code(path: str) -> str:
    """The code cells of a notebook (``.ipynb`` or jupytext ``.md``) as a Python module.

    Each cell runs inside ``try``: a cell that fails (an exploration cell, a
    check of an unfinished task) does not stop later cells from defining
    their functions.  Cells that call ``check(`` are skipped (grading runs
    the checks itself), and IPython magics are dropped.
    """
    import jupytext

    nb = jupytext.read(path)
    parts = ["_minicrate_cell_errors = []"]
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        src = "\n".join(
            line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!"))
        )
        if "check(" in src and "def " not in src:
            continue
        parts.append(
            f"try:\n    exec(compile({src!r}, {f'{path} cell {index}'!r}, 'exec'), globals())\n"
            f"except Exception as _err:\n    _minicrate_cell_errors.append(({index}, repr(_err)))"
        )
    return "\n".join(parts) + "\n"


def load_student_module(path) -> types.ModuleType:
    """Import the student's file at ``path`` (``.py``, ``.ipynb`` or MyST ``.md``).

    Uses ``importlib.util.spec_from_file_location`` with a module name derived
    from the path's hash, so it never resolves to (or shadows) ``minicrate``
    itself.  Notebooks are first turned into a temporary ``.py`` file.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no student file at {path}")
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    mod_name = f"minicrate_student_{digest}_{int(time.time() * 1e6) % 10**9}"
    if path.endswith((".ipynb", ".md")):
        tmpdir = tempfile.mkdtemp(prefix="minicrate-grade-")
        py_path = os.path.join(tmpdir, f"{mod_name}.py")
        with open(py_path, "w", encoding="utf-8") as fh:
            fh.write(_notebook_code(path))
    elif path.endswith(".py"):
        py_path = path
    else:
        raise ValueError(f"cannot grade {path}: expected a .py, .ipynb or .md file")
    spec = importlib.util.spec_from_file_location(mod_name, py_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    printed = io.StringIO()
    try:  # what the file prints while it loads is not part of the grade report
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    module.__minicrate_source__ = path
    return module


def grade_module(module, tasks: Sequence[str] | None = None, **options) -> list:
    """Check every task (or the given ones) whose function the module defines.

    With ``tasks`` given, a task whose function is missing gets an ``"error"``
    result saying so; without, tasks whose function is absent are skipped.
    """
    chosen = [get_task(t) for t in tasks] if tasks else list(_registry().values())
    results = []
    for t in chosen:
        fn = getattr(module, t.function, None)
        if fn is None:
            if tasks:
                results.append(
                    CheckResult(
                        t.id,
                        t.function,
                        "error",
                        0.0,
                        [],
                        0.0,
                        f"no function named {t.function} in the file",
                    )
                )
            continue
        forward = getattr(module, t.forward_name, None) if t.forward_name else None
        results.append(check(t, fn, forward=forward, **options))
    return results


def grade_file(path, tasks: Sequence[str] | None = None, **options) -> list:
    """Load the student's file (see :func:`load_student_module`) and grade it.

    Without ``tasks``: a file named after an exercise notebook is graded on that
    notebook's tasks (:func:`tasks_of_notebook`), any other file on every task
    whose function it defines.

    An import error becomes one ``"error"`` result per requested task
    (or a single result named ``"import"``); it never raises for the student's code.
    """
    try:
        module = load_student_module(path)
    except (FileNotFoundError, ValueError):
        raise
    except BaseException as err:  # noqa: BLE001 -- includes SystemExit from a student file
        note = f"could not import {path}: {_format_exception(err)}"
        ids = list(tasks) if tasks else ["import"]
        return [CheckResult(str(t), "-", "error", 0.0, [], 0.0, note) for t in ids]
    if not tasks:
        tasks = tasks_of_notebook(path) or None
    return grade_module(module, tasks, **options)


def tasks_of_notebook(path) -> list:
    """Ids of the tasks of the exercise notebook ``path`` is a copy of (matched by file name:
    ``ch08_mssa_backward-alice.ipynb`` is ``ch08_mssa_backward.md``), or ``[]``.

    A notebook also defines provided functions (exercise 8 provides task 5.2's
    forward); grading a notebook file checks only its own tasks.
    """
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return [t.id for t in _registry().values() if stem.startswith(os.path.splitext(t.notebook)[0])]


def gradescope_json(results) -> dict:
    """Results in Gradescope's ``results.json`` format (one test per task, 1 point each)."""
    tests = [
        {
            "name": f"Task {r.task} {r.function}",
            "score": round(r.score, 4),
            "max_score": 1.0,
            "output": str(r),
            "status": "passed" if r.passed else "failed",
        }
        for r in results
    ]
    return {"score": round(sum(t["score"] for t in tests), 4), "tests": tests}
