r"""Chapter 8's exercise tasks: the softmax backward (8.1) and the MSSA backward (8.2).

The references are :func:`minicrate.ops.functional.softmax_backward` and
:func:`minicrate.layers.mssa.mssa_backward`.  The known mistakes are the
library's outputs with one change: the softmax backward over another axis is a
library call, the three dropped-term slips of 8.1 are each their one-line
formula; the slips in the shared query/key/value path of 8.2 are
:func:`minicrate.grading.mistakes.mssa.mssa_backward_variant` (the library's
gradient plus the changed terms), the rest transforms of the reference gradients
(averaged, transposed, not summed).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import normal, seeds
from minicrate.grading.mistakes.mssa import SHARED_QK_HINT, mssa_backward_variant
from minicrate.grading.tasks.ch05 import MSSA_EXPLICIT, build_mssa, host_mssa_args, mssa_solution, mssa_spec
from minicrate.grading.tasks.common import backward_outputs, batch_count, host, label, named_backward, solution_of
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task
from minicrate.layers.mssa import mssa_backward, mssa_forward
from minicrate.ops.functional import softmax, softmax_backward

# --------------------------------------------------------------------------
# 8.1 softmax backward


@st.composite
def softmax_backward_spec(draw):
    """Sizes of a batch of square attention matrices and a seed."""
    return {
        "lead": draw(st.sampled_from([(), (2,), (2, 2)])),
        "N": draw(st.integers(1, 5)),
        "seed": draw(seeds),
    }


def build_softmax_backward(spec, xp):
    """``(dA, A)`` with ``A = softmax(S)``; ``S`` is kept in ``extra`` for finite differences."""
    shape = (*spec["lead"], spec["N"], spec["N"])
    S = normal(xp, shape, spec["seed"], scale=1.5)
    A = softmax(S, axis=-1)
    dA = normal(xp, shape, spec["seed"] + 1)
    return Case((dA, A), {}, label(dA=dA, A=A), dout=dA, spec=spec, extra={"S": S})


def _ref_softmax_backward(case):
    return {"dS": softmax_backward(*case.args, axis=-1)}


def _softmax_backward_solution(dA, A):
    return softmax_backward(dA, A, axis=-1)


_softmax_backward_solution.__name__ = "softmax_backward"


def _softmax_fd_forward(S):
    return softmax(S, axis=-1)


def _on_host(fn):
    """A mistake ``fn(dA, A)`` on the case's arrays as float64 NumPy."""
    return lambda case: {"dS": fn(host(case.args[0]), host(case.args[1]))}


_SOFTMAX_BACKWARD_MISTAKES = (
    Mistake(
        "sum over the wrong axis",
        "each row of A is its own softmax, so subtract each *row's* ⟨a, ā⟩: sum A ⊙ dA over "
        "the last axis (keepdims=True), not over the rows",
        _on_host(lambda dA, A: softmax_backward(dA, A, axis=-2)),
    ),
    Mistake(
        "elementwise derivative only",
        "the softmax is not elementwise: each output depends on the whole row, so "
        "dS = A ⊙ (dA − rowsum(A ⊙ dA)); you dropped the rowsum term",
        _on_host(lambda dA, A: A * dA),
    ),
    Mistake(
        "missing the outer A ⊙",
        "dS = A ⊙ (dA − rowsum(A ⊙ dA)): multiply by A after subtracting",
        _on_host(lambda dA, A: dA - np.sum(A * dA, -1, keepdims=True)),
    ),
    Mistake(
        "Jacobian transposed (rowsum of dA)",
        "the subtracted term is rowsum(A ⊙ dA), the inner product of the row of A with the "
        "row of dA",
        _on_host(lambda dA, A: A * (dA - np.sum(dA, -1, keepdims=True))),
    ),
)

# --------------------------------------------------------------------------
# 8.2 MSSA backward

MSSA_KEYS = ("U", "W_out", "b_out")
"""The parameter gradients of the MSSA backward."""


def _ref_mssa_backward(case):
    _, cache = mssa_forward(*case.args, **case.kwargs)
    return named_backward("dZ", MSSA_KEYS, *mssa_backward(case.dout, cache))


def _host_backward(case):
    """``(dY, cache)``: the case's upstream gradient and the library's forward cache, on the host."""
    (Z, U, W_out, b_out), scale = host_mssa_args(case)
    return host(case.dout), mssa_forward(Z, U, W_out, b_out, scale=scale)[1]


def _variant(**switches):
    """A slip in the score/value path of dW_k: it changes dZ and dU only."""

    def wrong(case):
        dZ, grads = mssa_backward_variant(*_host_backward(case), **switches)
        return {"dZ": dZ, "grads['U']": grads["U"]}

    return wrong


def _changed_grads(change):
    """The reference parameter gradients with ``change(grads, dY, cache)`` applied (dZ is right)."""

    def wrong(case):
        dY, cache = _host_backward(case)
        changed = change(mssa_backward(dY, cache)[1], dY, cache)
        return {f"grads[{k!r}]": v for k, v in changed.items()}

    return wrong


def _averaged(grads, dY, cache):
    B = batch_count(cache["Z"])
    return {k: g / B for k, g in grads.items()}


_MSSA_BACKWARD_MISTAKES = (
    Mistake("missing S̄ᵀ term (shared query/key)", SHARED_QK_HINT, _variant(transpose_term="missing")),
    Mistake("only the S̄ᵀ term (shared query/key)", SHARED_QK_HINT, _variant(transpose_term="only_transpose")),
    Mistake(
        "softmax backward over the wrong axis",
        "softmax over the wrong axis in the backward: the forward normalised each row, so "
        "S̄ = A ⊙ (Ā − rowsum(A ⊙ Ā)) sums over the last axis",
        _variant(softmax_axis=-2),
    ),
    Mistake(
        "temperature missing in the backward",
        "the scores are S = s·W_kW_kᵀ, so the score path of dW_k carries the factor s too",
        _variant(scale_in_backward=False),
    ),
    Mistake(
        "value path missing",
        "W_k is also the value: dW_k includes Aᵀ dO_k",
        _variant(value_term=False),
    ),
    Mistake(
        "parameter gradients averaged over the batch (mean vs sum over the batch)",
        "the parameters are shared by every sample, so their gradients *sum* the samples' "
        "contributions; you averaged over the batch",
        _changed_grads(_averaged),
    ),
    Mistake(
        "dW_out transposed",
        "dW_out has W_out's shape (d, K·p): dW_out = Σ dYᵀ H (tokens and batch summed)",
        _changed_grads(lambda grads, dY, cache: {"W_out": grads["W_out"].T}),
    ),
    Mistake(
        "db_out not summed",
        "b_out is added to every token of every sample, so db_out sums dY over the tokens "
        "and the batch: shape (d,)",
        _changed_grads(lambda grads, dY, cache: {"b_out": dY}),
    ),
)


def _mssa_fd_forward(Z, U, W_out, b_out, scale):
    return mssa_forward(Z, U, W_out, b_out, scale=scale)


def _mssa_fd_inputs(case):
    Z, U, W_out, b_out = case.args
    return {"Z": Z, "U": U, "W_out": W_out, "b_out": b_out, "scale": case.kwargs["scale"]}


TASKS = [
    Task(
        id="8.1",
        function="softmax_backward",
        notebook="ch08_mssa_backward.md",
        book="Chapter 8, backpropagation by hand",
        title="dS = A ⊙ (dA − rowsum(A ⊙ dA)), the row-softmax VJP",
        kind="function",
        strategy=softmax_backward_spec(),
        build=build_softmax_backward,
        reference=_ref_softmax_backward,
        outputs=lambda r: {"dS": r},
        argnames=("dA", "A"),
        examples=6,
        explicit=({"lead": (2,), "N": 3, "seed": 61},),
        checks=(
            "dS equals minicrate.ops.functional.softmax_backward",
            "dS agrees with finite differences of the softmax",
        ),
        mistakes=_SOFTMAX_BACKWARD_MISTAKES,
        fd=FiniteDifferences(forward=_softmax_fd_forward, wrt={"dS": "S"}, inputs=lambda case: {"S": case.extra["S"]}),
        solution=_softmax_backward_solution,
    ),
    Task(
        id="8.2",
        function="mssa_backward",
        notebook="ch08_mssa_backward.md",
        book="Chapter 8, backpropagation by hand",
        title="(dZ, {'U', 'W_out', 'b_out'}) for MSSA with shared query/key/value",
        kind="backward",
        strategy=mssa_spec(),
        build=build_mssa,
        reference=_ref_mssa_backward,
        outputs=backward_outputs("dZ", MSSA_KEYS),
        argnames=("Z", "U", "W_out", "b_out"),
        explicit=MSSA_EXPLICIT,
        examples=8,
        forward_name="mssa_forward",
        reference_forward=mssa_solution,
        checks=(
            "dZ, dU, dW_out, db_out equal minicrate.mssa_backward",
            "they agree with finite differences of minicrate.mssa_forward",
        ),
        mistakes=_MSSA_BACKWARD_MISTAKES,
        fd=FiniteDifferences(
            forward=_mssa_fd_forward,
            inputs=_mssa_fd_inputs,
            wrt={"dZ": "Z", "grads['U']": "U", "grads['W_out']": "W_out", "grads['b_out']": "b_out"},
        ),
        solution=solution_of("layers.mssa", "mssa_backward"),
    ),
]
"""Tasks 8.1 and 8.2."""
