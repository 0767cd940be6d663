"""Chapter 6's exercise tasks: the ISTA step, forward (6.1) and backward (6.2).

The references are :mod:`minicrate.layers.ista`; the known mistakes come from
:mod:`minicrate.grading.mistakes.ista`, built from the library's own outputs.
Rows are tokens (``(..., N, d)``).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import away_from_zero, seeds
from minicrate.core.backend import host_to
from minicrate.grading.mistakes import ista as wrong_ista
from minicrate.grading.mistakes.ista import RELU_MASK_HINT
from minicrate.grading.tasks.common import (
    backward_outputs,
    batch_count,
    forward_output,
    host,
    label,
    lead,
    solution_of,
)
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task
from minicrate.layers.ista import ista_backward, ista_forward


@st.composite
def _ista_spec(draw):
    return {
        "B": draw(st.integers(0, 2)),
        "N": draw(st.integers(1, 5)),
        "d": draw(st.integers(1, 6)),
        "eta": draw(st.sampled_from([0.1, 0.05, 0.2])),
        "lam": draw(st.sampled_from([0.1, 0.5])),
        "seed": draw(seeds),
    }


_ISTA_EXPLICIT = (
    {"B": 0, "N": 1, "d": 1, "eta": 0.1, "lam": 0.1, "seed": 21},
    {"B": 2, "N": 3, "d": 4, "eta": 0.1, "lam": 0.5, "seed": 22},
)


def _build_ista(spec, xp):
    """X chosen so that every pre-activation P is at least 0.1 away from the ReLU kink."""
    d, eta, lam = spec["d"], spec["eta"], spec["lam"]
    rng = np.random.default_rng(spec["seed"])
    D = rng.standard_normal((d, d)) / math.sqrt(d)
    shape = (*lead(spec), spec["N"], d)
    P = host(away_from_zero(xp, shape, spec["seed"] + 1, margin=0.1))
    M = np.eye(d) + eta * (D - D.T @ D)  # P = X M − ηλ
    X = np.linalg.solve(M.T, (P + eta * lam).reshape(-1, d).T).T.reshape(shape)
    dY = rng.standard_normal(shape)
    X, D, dY = host_to(xp, X), host_to(xp, D), host_to(xp, dY)
    return Case((X, D), {"eta": eta, "lam": lam}, label(X=X, D=D, eta=eta, lam=lam), dout=dY, spec=spec)


def _host_args(case):
    """``(X, D, eta, lam)`` of a case, the arrays as host copies."""
    return host(case.args[0]), host(case.args[1]), case.kwargs["eta"], case.kwargs["lam"]


def _host_cache(case):
    """The library forward's cache of a case's host copies, and the host upstream gradient."""
    X, D, eta, lam = _host_args(case)
    return host(case.dout), ista_forward(X, D, eta=eta, lam=lam)[1]


def _ref_ista_forward(case):
    return {"Y": ista_forward(*case.args, **case.kwargs)[0]}


def _ref_ista_backward(case):
    _, cache = ista_forward(*case.args, **case.kwargs)
    dX, g = ista_backward(case.dout, cache)
    return {"dX": dX, "grads['D']": g["D"]}


def _wrong_forward(build):
    """A mistake's ``wrong`` from a wrong forward ``build(X, D, eta, lam) -> Y``."""
    return lambda case: {"Y": build(*_host_args(case))}


def _no_mask(case):
    dX, g = wrong_ista.ista_backward_without_mask(*_host_cache(case))
    return {"dX": dX, "grads['D']": g["D"]}


def _dD_averaged(case):
    dY, cache = _host_cache(case)
    return {"grads['D']": ista_backward(dY, cache)[1]["D"] / batch_count(cache["X"])}


def _dD_one_term(case):
    return {"grads['D']": wrong_ista.dD_without_transposed_term(*_host_cache(case))}


def _dX_forward_map(case):
    return {"dX": wrong_ista.dX_by_the_forward_map(*_host_cache(case))}


_ISTA_FORWARD_MISTAKES = (
    Mistake(
        "+ηλ instead of −ηλ",
        "the threshold is subtracted: Y = ReLU(X + η(XD − XDᵀD) − ηλ) (book chapter 7 "
        "prints +; that is a typo)",
        _wrong_forward(wrong_ista.plus_threshold),
    ),
    Mistake(
        "D and Dᵀ swapped",
        "with tokens as rows the paper's Dᵀ(Z − DZ) reads (X − XDᵀ)D = XD − XDᵀD; you have "
        "D and Dᵀ swapped",
        _wrong_forward(wrong_ista.swapped_dictionary),
    ),
    Mistake(
        "two-sided soft threshold",
        "the step is non-negative ISTA: its prox is the one-sided threshold "
        "max(x − ηλ, 0) (a ReLU), not sign(x)·max(|x| − ηλ, 0)",
        _wrong_forward(wrong_ista.two_sided_threshold),
    ),
    Mistake(
        "forgetting the ReLU",
        "the output is ReLU(P): negative entries become 0",
        _wrong_forward(wrong_ista.ista_preactivation),
    ),
    Mistake(
        "missing warm start",
        "the step starts from A₀ = X, so X itself is part of the update: X + η(XD − XDᵀD) − ηλ",
        _wrong_forward(wrong_ista.without_warm_start),
    ),
    Mistake(
        "threshold λ instead of ηλ",
        "the proximal step of ηλ‖·‖₁ thresholds at ηλ (step size times weight), not λ",
        _wrong_forward(wrong_ista.threshold_without_eta),
    ),
)

_ISTA_BACKWARD_MISTAKES = (
    Mistake("forgetting the ReLU mask", RELU_MASK_HINT, _no_mask),
    Mistake(
        "dD averaged over the batch (mean vs sum over the batch)",
        "D is shared by every sample, so dD sums their contributions; you averaged over the batch",
        _dD_averaged,
    ),
    Mistake(
        "dD missing the transposed term",
        "D appears twice in XDᵀD, so with G = XᵀP̄: dD = η(G − D(G + Gᵀ)); you differentiated "
        "only one of the two",
        _dD_one_term,
    ),
    Mistake(
        "forward map instead of its transpose",
        "the backward applies the *transpose* of X ↦ X(I + ηD − ηDᵀD): dX = P̄ + η(P̄Dᵀ − P̄DᵀD)",
        _dX_forward_map,
    ),
)


def _ista_fd_forward(X, D, eta, lam):
    return ista_forward(X, D, eta=eta, lam=lam)


def _ref_ista_fwd_fn(X, D, *, eta=0.1, lam=0.1):
    return ista_forward(X, D, eta=eta, lam=lam)


TASKS = [
    Task(
        id="6.1",
        function="ista_forward",
        notebook="ch06_ista.md",
        book="Chapter 6, sparsification: ISTA",
        title="Y = ReLU(X + η(XD − XDᵀD) − ηλ); returns (Y, cache)",
        kind="function",
        strategy=_ista_spec(),
        build=_build_ista,
        reference=_ref_ista_forward,
        outputs=forward_output(),
        argnames=("X", "D"),
        explicit=_ISTA_EXPLICIT,
        examples=8,
        checks=("Y equals minicrate.ista_forward (pre-activations kept 0.1 away from the kink)",),
        mistakes=_ISTA_FORWARD_MISTAKES,
        solution=_ref_ista_fwd_fn,
    ),
    Task(
        id="6.2",
        function="ista_backward",
        notebook="ch06_ista.md",
        book="Chapter 6 (derivation: chapter 8, backpropagation by hand)",
        title="(dX, {'D': dD}) for the ISTA step, given dY and your forward's cache",
        kind="backward",
        strategy=_ista_spec(),
        build=_build_ista,
        reference=_ref_ista_backward,
        outputs=backward_outputs("dX", ("D",)),
        argnames=("X", "D"),
        explicit=_ISTA_EXPLICIT,
        examples=8,
        forward_name="ista_forward",
        reference_forward=_ref_ista_fwd_fn,
        checks=(
            "dX and dD equal minicrate.ista_backward",
            "dX and dD agree with finite differences of minicrate.ista_forward",
        ),
        mistakes=_ISTA_BACKWARD_MISTAKES,
        fd=FiniteDifferences(forward=_ista_fd_forward, wrt={"dX": "X", "grads['D']": "D"}),
        solution=solution_of("layers.ista", "ista_backward"),
    ),
]
