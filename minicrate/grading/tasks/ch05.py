r"""Chapter 5's exercise tasks: the row softmax (5.1) and the MSSA forward (5.2).

The references are :func:`minicrate.ops.functional.softmax` and
:func:`minicrate.layers.mssa.mssa_forward` (official form).  Each known mistake
is the library's output with one change: a library call with changed inputs
(softmax over another axis, a wrong temperature, no bias, W_out untransposed) or
the reference with its head outputs replaced
(:func:`minicrate.grading.mistakes.mssa.output_with_heads`); the softmax slips
that are a different one-line formula (no max subtraction, no normalisation)
are that formula.

The MSSA cases (:func:`mssa_spec`, :func:`build_mssa`) serve chapter 8's backward too.
Rows are tokens throughout (``(..., N, d)``).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import normal, seeds
from minicrate.grading.mistakes.mssa import column_softmax_heads, interleaved_heads, output_with_heads
from minicrate.grading.tasks.common import forward_output, host, label, lead
from minicrate.grading.types import Case, Mistake, Task
from minicrate.layers.mssa import mssa_forward
from minicrate.ops.functional import softmax

# --------------------------------------------------------------------------
# 5.1 softmax


@st.composite
def softmax_spec(draw):
    """Sizes of a batch of square score matrices and a seed."""
    return {
        "lead": draw(st.sampled_from([(), (2,), (2, 3)])),
        "N": draw(st.integers(1, 6)),
        "big": False,
        "seed": draw(seeds),
    }


def build_softmax(spec, xp):
    """Scores ``S`` ``(..., N, N)`` of size ~2, or ~1000 with ``big`` (overflow without the max)."""
    shape = (*spec["lead"], spec["N"], spec["N"])
    S = normal(xp, shape, spec["seed"], scale=1000.0 if spec["big"] else 2.0)
    return Case((S,), {}, label(S=S) + (" with logits of size ~1000" if spec["big"] else ""), spec=spec)


def _ref_softmax(case):
    return {"A": softmax(case.args[0], axis=-1)}


def _softmax_solution(S):
    return softmax(S, axis=-1)


_softmax_solution.__name__ = "softmax"


def _unstable(case):
    # exp without the max: the same ratio, but it overflows to inf/inf = nan for big logits
    with np.errstate(over="ignore", invalid="ignore"):
        E = np.exp(host(case.args[0]))
        return {"A": E / np.sum(E, axis=-1, keepdims=True)}


def _unnormalised(case):
    S = host(case.args[0])
    return {"A": np.exp(S - np.max(S, axis=-1, keepdims=True))}


def _whole_matrix(case):
    # one softmax over all N² entries: the library's softmax of the flattened matrix
    S = host(case.args[0])
    return {"A": np.reshape(softmax(np.reshape(S, (*S.shape[:-2], -1)), axis=-1), S.shape)}


SOFTMAX_AXIS_HINT = (
    "softmax over the wrong axis: each row (last axis: token i's weights over "
    "the tokens j it attends to) must sum to 1; you normalised the columns"
)
"""Hint of the softmax-over-the-columns mistakes (5.1, and 5.2 with a suffix)."""

_SOFTMAX_MISTAKES = (
    Mistake(
        "softmax over the wrong axis",
        SOFTMAX_AXIS_HINT,
        lambda case: {"A": softmax(host(case.args[0]), axis=-2)},
    ),
    Mistake(
        "unstable softmax (no max subtraction)",
        "exp overflows for large logits: subtract each row's maximum before exp (it cancels "
        "in the ratio, so the result is unchanged)",
        _unstable,
    ),
    Mistake("no normalisation", "softmax divides exp(s) by the row's sum of exp(s)", _unnormalised),
    Mistake(
        "softmax over the whole matrix",
        "normalise each row on its own (sum over the last axis with keepdims=True), not the "
        "whole matrix",
        _whole_matrix,
    ),
)

# --------------------------------------------------------------------------
# 5.2 MSSA forward


@st.composite
def mssa_spec(draw):
    """Batch, tokens, heads K, head width p (d = K·p), temperature and a seed."""
    K, p = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return {
        "B": draw(st.integers(0, 2)),
        "N": draw(st.integers(1, 5)),
        "K": K,
        "p": p,
        "scale": draw(st.sampled_from([None, None, 1.0, 0.5])),
        "seed": draw(seeds),
    }


MSSA_EXPLICIT = (
    {"B": 0, "N": 1, "K": 1, "p": 1, "scale": None, "seed": 11},
    {"B": 2, "N": 4, "K": 2, "p": 3, "scale": None, "seed": 12},
    {"B": 1, "N": 3, "K": 3, "p": 2, "scale": 1.0, "seed": 13},
)
"""The MSSA specs always graded first: one token, a batch, three heads with s = 1."""


def build_mssa(spec, xp):
    """``(Z, U, W_out, b_out)``, ``scale=`` and the upstream ``dY`` of an MSSA case."""
    K, p = spec["K"], spec["p"]
    d = K * p
    Z = normal(xp, (*lead(spec), spec["N"], d), spec["seed"])
    U = normal(xp, (K, d, p), spec["seed"] + 1, scale=1.0 / math.sqrt(d))
    W_out = normal(xp, (d, K * p), spec["seed"] + 2, scale=1.0 / math.sqrt(K * p))
    b_out = normal(xp, (d,), spec["seed"] + 3, scale=0.3)
    dY = normal(xp, (*lead(spec), spec["N"], d), spec["seed"] + 4)
    return Case((Z, U, W_out, b_out), {"scale": spec["scale"]}, label(Z=Z, U=U, scale=spec["scale"]),
                dout=dY, spec=spec)


def mssa_solution(Z, U, W_out, b_out, *, scale=None):
    """minicrate's MSSA forward with the student's signature."""
    return mssa_forward(Z, U, W_out, b_out, scale=scale)


mssa_solution.__name__ = "mssa_forward"


def host_mssa_args(case):
    """The case's ``(Z, U, W_out, b_out)`` as float64 NumPy arrays, and its ``scale``."""
    return tuple(host(a) for a in case.args), case.kwargs["scale"]


def _ref_mssa_forward(case):
    return {"Y": mssa_forward(*case.args, **case.kwargs)[0]}


def _mssa_with(**changes):
    """The library's MSSA forward with some arguments (scale, W_out, b_out) changed."""

    def wrong(case):
        (Z, U, W_out, b_out), scale = host_mssa_args(case)
        args = {"W_out": W_out, "b_out": b_out, "scale": scale}
        args.update({k: f(args, Z, U) for k, f in changes.items()})
        return {"Y": mssa_forward(Z, U, args["W_out"], args["b_out"], scale=args["scale"])[0]}

    return wrong


def _heads_replaced(heads):
    """The reference output with the head outputs ``heads(cache)`` in place of the right ones."""

    def wrong(case):
        (Z, U, W_out, b_out), scale = host_mssa_args(case)
        Y, cache = mssa_forward(Z, U, W_out, b_out, scale=scale)
        return {"Y": output_with_heads(Y, cache, heads(cache))}

    return wrong


def _root_d_scale(args, Z, U):
    # the default temperature taken from the width d instead of p; a given scale is kept
    return 1.0 / math.sqrt(U.shape[1]) if args["scale"] is None else args["scale"]


_MSSA_FORWARD_MISTAKES = (
    Mistake(
        "softmax over the wrong axis",
        SOFTMAX_AXIS_HINT + " (A = softmax(S, axis=-1))",
        _heads_replaced(column_softmax_heads),
    ),
    Mistake(
        "1/√d instead of 1/√p",
        "wrong p: the default temperature is 1/√p with the head width p = U.shape[-1], not 1/√d",
        _mssa_with(scale=_root_d_scale),
    ),
    Mistake(
        "no temperature",
        "multiply the scores by scale (1/√p when scale is None) before the softmax",
        _mssa_with(scale=lambda args, Z, U: 1.0),
    ),
    Mistake(
        "heads concatenated in the wrong order",
        "concatenate the heads along the features: move the heads axis next to the features "
        "((..., K, N, p) -> (..., N, K, p)) before reshaping to (..., N, K·p)",
        _heads_replaced(interleaved_heads),
    ),
    Mistake(
        "W_out not transposed",
        "W_out is stored (d, K·p) like torch's nn.Linear weight: Y = H W_outᵀ + b_out",
        _mssa_with(W_out=lambda args, Z, U: args["W_out"].T),
    ),
    Mistake("missing bias", "add the output bias b_out", _mssa_with(b_out=lambda args, Z, U: None)),
)

TASKS = [
    Task(
        id="5.1",
        function="softmax",
        notebook="ch05_mssa_forward.md",
        book="Chapter 5, compression: from ∇R^c to MSSA",
        title="row softmax A_ij = exp(S_ij − max_j S_ij) / Σ_j exp(S_ij − max_j S_ij), stable",
        kind="function",
        strategy=softmax_spec(),
        build=build_softmax,
        reference=_ref_softmax,
        outputs=lambda r: {"A": r},
        argnames=("S",),
        examples=6,
        explicit=(
            {"lead": (2,), "N": 4, "big": False, "seed": 51},
            {"lead": (), "N": 5, "big": True, "seed": 52},
        ),
        checks=("A equals minicrate.ops.functional.softmax(S, axis=-1), including logits of size 1000",),
        mistakes=_SOFTMAX_MISTAKES,
        solution=_softmax_solution,
    ),
    Task(
        id="5.2",
        function="mssa_forward",
        notebook="ch05_mssa_forward.md",
        book="Chapter 5, compression: from ∇R^c to MSSA",
        title="Y = concat_k(softmax(s·W_kW_kᵀ) W_k) W_outᵀ + b_out, W_k = ZU_k; returns (Y, cache)",
        kind="function",
        strategy=mssa_spec(),
        build=build_mssa,
        reference=_ref_mssa_forward,
        outputs=forward_output(),
        argnames=("Z", "U", "W_out", "b_out"),
        explicit=MSSA_EXPLICIT,
        examples=8,
        checks=(
            "Y equals minicrate.mssa_forward (official form: untied W_out with bias; "
            "scale None means 1/√p)",
        ),
        mistakes=_MSSA_FORWARD_MISTAKES,
        solution=mssa_solution,
    ),
]
"""Tasks 5.1 and 5.2."""
