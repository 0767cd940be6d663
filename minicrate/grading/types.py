"""What the grader is made of: tasks, cases, known mistakes and results.

A :class:`Task` says how its cases are drawn and built, what the reference
outputs are and which :class:`Mistake` s it recognises; :func:`minicrate.grading.check`
turns a student's function into a :class:`CheckResult` of :class:`PropertyResult` s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

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


@dataclasses.dataclass
class CaseRun:
    """What running the student's function on one case gave: its outputs, or why it did not.

    ``outputs`` maps an output name to a float64 host copy, ``dtypes`` the same
    names to the dtype the function really returned (``None`` for a Python
    number); ``error`` is the formatted exception (the case failed to run),
    ``not_implemented`` the message of a ``NotImplementedError``.  It is plain
    data, so a sandboxed child process can send it back to the grader
    (:mod:`minicrate.grading.sandbox`).
    """

    outputs: dict | None = None
    dtypes: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    not_implemented: str | None = None
