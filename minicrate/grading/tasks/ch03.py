r"""Chapter 3's exercise tasks: the coding rate R, the compression term R^c and their gradients.

==== ========================= =================================================
task function                  notebook
==== ========================= =================================================
3.1  coding_rate               ch03_coding_rate.md
3.2  coding_rate_grad          ch03_coding_rate.md
3.3  compression_rate          ch03_compression_rate.md
3.4  compression_rate_grad     ch03_compression_rate.md
==== ========================= =================================================

Every known mistake is built from :mod:`minicrate.objective.rates` itself, so
the grader holds no second copy of the rates: a slipped factor is a multiple of
the reference; a wrong constant α = d/(Nε²) or β = p/(Nε²) is the library's
rate at the ε that gives that constant; per-head rates are the library's R^c
of one head at a time, per-sample dU its gradient of one sample at a time (the
builders are in :mod:`minicrate.grading.mistakes.rates`).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import normal, seeds, well_conditioned_tokens
from minicrate.grading.mistakes.rates import ALPHA_HINTS, BETA_HINTS, alpha_eps, beta_eps, per_head_rates, per_sample_dU
from minicrate.grading.tasks.common import T, batch_count, host, label, one, pair, solution_of
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task
from minicrate.objective.rates import coding_rate, coding_rate_grad, compression_rate, compression_rate_grad

EPS_VALUES = (0.25, 0.5, 1.0, 2.0)

# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------


@st.composite
def _tokens_spec(draw):
    return {
        "B": draw(st.integers(0, 3)),  # 0: a single sample (N, d)
        "N": draw(st.integers(1, 6)),
        "d": draw(st.integers(1, 6)),
        "eps": draw(st.sampled_from(EPS_VALUES)),
        "seed": draw(seeds),
    }


def _build_tokens(spec, xp):
    shape = (spec["B"], spec["N"], spec["d"]) if spec["B"] else (spec["N"], spec["d"])
    Z = well_conditioned_tokens(xp, shape, spec["seed"])
    return Case((Z, spec["eps"]), {}, label(Z=Z, eps=spec["eps"]), spec=spec)


_TOKENS_EXPLICIT = (
    {"B": 0, "N": 1, "d": 1, "eps": 0.5, "seed": 1},
    {"B": 2, "N": 3, "d": 5, "eps": 0.5, "seed": 2},
    {"B": 3, "N": 5, "d": 2, "eps": 1.0, "seed": 3},
)


@st.composite
def _heads_spec(draw):
    d = draw(st.integers(1, 6))
    return {
        "B": draw(st.integers(0, 3)),
        "N": draw(st.integers(1, 6)),
        "d": d,
        "K": draw(st.integers(1, 3)),
        "p": draw(st.integers(1, 3)),
        "eps": draw(st.sampled_from(EPS_VALUES)),
        "seed": draw(seeds),
    }


def _build_heads(spec, xp):
    shape = (spec["B"], spec["N"], spec["d"]) if spec["B"] else (spec["N"], spec["d"])
    Z = well_conditioned_tokens(xp, shape, spec["seed"])
    U = normal(xp, (spec["K"], spec["d"], spec["p"]), spec["seed"] + 1, scale=1.0 / math.sqrt(spec["d"]))
    return Case((Z, U, spec["eps"]), {}, label(Z=Z, U=U, eps=spec["eps"]), spec=spec)


_HEADS_EXPLICIT = (
    {"B": 0, "N": 1, "d": 1, "K": 1, "p": 1, "eps": 0.5, "seed": 4},
    {"B": 2, "N": 4, "d": 6, "K": 3, "p": 2, "eps": 0.5, "seed": 5},
    {"B": 3, "N": 3, "d": 4, "K": 2, "p": 3, "eps": 1.0, "seed": 6},
)


def _alpha_eps(case, kind):
    """Z and the ε at which the library's α is the wrong constant ``kind``."""
    Z = host(case.args[0])
    return Z, alpha_eps(Z, case.args[1], kind)


def _beta_eps(case, kind):
    """Z, U and the ε at which the library's β is the wrong constant ``kind``."""
    Z, U = host(case.args[0]), host(case.args[1])
    return Z, U, beta_eps(Z, U, case.args[2], kind)


# --------------------------------------------------------------------------
# References and the finite-difference forwards
# --------------------------------------------------------------------------


def _ref_coding_rate(case):
    return {"R": coding_rate(*case.args)}


def _ref_coding_rate_grad(case):
    return {"dR/dZ": coding_rate_grad(*case.args)}


def _ref_rc(case):
    return {"R^c": compression_rate(*case.args)}


def _ref_rc_grad(case):
    dZ, dU = compression_rate_grad(*case.args)
    return {"dZ": dZ, "dU": dU}


def _ref_host(reference, case):
    """The reference outputs of ``case`` as float64 NumPy arrays."""
    return {k: host(v) for k, v in reference(case).items()}


def _ones_like_rates(case):
    return np.ones(case.args[0].shape[:-2])


# --------------------------------------------------------------------------
# Mistakes: 3.1 and 3.2
# --------------------------------------------------------------------------


def _scaled(reference, factor):
    """The reference outputs times ``factor`` (a slipped constant factor or sign)."""
    return lambda case: {k: factor * v for k, v in _ref_host(reference, case).items()}


def _rate_reduced(reduce):
    return lambda case: {"R": reduce(_ref_host(_ref_coding_rate, case)["R"])}


def _rate_mistakes():
    ms = [
        Mistake(
            "missing ½ (log det instead of ½ log det)",
            "R = ½ log det(I + α ZᵀZ): your value is twice that; keep the factor ½",
            _scaled(_ref_coding_rate, 2.0),
        )
    ]
    ms += [
        Mistake(f"wrong constant α ({k})", h, lambda case, k=k: {"R": coding_rate(*_alpha_eps(case, k))})
        for k, h in ALPHA_HINTS.items()
    ]
    ms += [
        Mistake(
            "log base 2",
            "use the natural logarithm (rates are in nats): your value is R/ln 2",
            _scaled(_ref_coding_rate, 1 / math.log(2)),
        ),
        Mistake(
            "sum over the batch (mean vs sum over the batch)",
            "return one rate per sample, shape Z.shape[:-2]: you summed the rates over the batch",
            _rate_reduced(np.sum),
        ),
        Mistake(
            "mean over the batch (mean vs sum over the batch)",
            "return one rate per sample, shape Z.shape[:-2]: you averaged the rates over the batch",
            _rate_reduced(np.mean),
        ),
    ]
    return tuple(ms)


def _without_alpha(case):
    """dR/dZ without its leading α: the reference divided by α = d/(Nε²)."""
    Z, eps = case.args
    N, d = Z.shape[-2], Z.shape[-1]
    return {"dR/dZ": _ref_host(_ref_coding_rate_grad, case)["dR/dZ"] / (d / (N * eps**2))}


def _rate_grad_mistakes():
    ms = [
        Mistake(
            "factor 2 in ∇logdet",
            "your gradient is twice the right one -- the factor 2 in ∇logdet: the derivative "
            "of log det(I + αZᵀZ) is 2αZ(I + αZᵀZ)⁻¹ and the ½ in R cancels that 2, "
            "so dR/dZ = αZ(I + αZᵀZ)⁻¹",
            _scaled(_ref_coding_rate_grad, 2.0),
        ),
        Mistake(
            "factor ½ in ∇logdet",
            "your gradient is half the right one: differentiating ZᵀZ gives two equal terms, "
            "so d log det(I + αZᵀZ) = 2α tr((I + αZᵀZ)⁻¹ Zᵀ dZ); with the ½ of R, "
            "dR/dZ = αZ(I + αZᵀZ)⁻¹",
            _scaled(_ref_coding_rate_grad, 0.5),
        ),
        Mistake(
            "missing α in front",
            "the chain rule brings the constant out: dR/dZ = α Z (I + αZᵀZ)⁻¹; yours lacks the leading α",
            _without_alpha,
        ),
        Mistake(
            "sign",
            "dR/dZ points to where R grows; yours has the opposite sign",
            _scaled(_ref_coding_rate_grad, -1.0),
        ),
    ]
    ms += [
        Mistake(
            f"wrong constant α ({k})", h, lambda case, k=k: {"dR/dZ": coding_rate_grad(*_alpha_eps(case, k))}
        )
        for k, h in ALPHA_HINTS.items()
    ]
    ms.append(
        Mistake(
            "transposed gradient",
            "a gradient has the shape of its input: dR/dZ is (..., N, d) like Z "
            "(tokens are rows); yours is transposed",
            lambda case: {"dR/dZ": T(_ref_host(_ref_coding_rate_grad, case)["dR/dZ"])},
        )
    )
    return tuple(ms)


# --------------------------------------------------------------------------
# Mistakes: 3.3 and 3.4
# --------------------------------------------------------------------------


def _rc_mean_over_heads(case):
    return {"R^c": _ref_host(_ref_rc, case)["R^c"] / case.args[1].shape[0]}


def _rc_mistakes():
    ms = [
        Mistake(
            "missing ½",
            "each head's rate is ½ log det(I + β W_kᵀW_k); your value is twice that",
            _scaled(_ref_rc, 2.0),
        )
    ]
    ms += [
        Mistake(f"wrong constant β ({k})", h, lambda case, k=k: {"R^c": compression_rate(*_beta_eps(case, k))})
        for k, h in BETA_HINTS.items()
    ]
    ms += [
        Mistake("mean over heads", "R^c is the *sum* of the K heads' rates; you averaged them", _rc_mean_over_heads),
        Mistake(
            "heads not summed",
            "R^c sums the K heads' rates, so it has shape Z.shape[:-2]; yours keeps a heads axis",
            lambda case: {"R^c": per_head_rates(*(host(a) for a in case.args[:2]), case.args[2])},
        ),
    ]
    return tuple(ms)


def _rc_grad_wrong_beta(kind):
    def wrong(case):
        dZ, dU = compression_rate_grad(*_beta_eps(case, kind))
        return {"dZ": dZ, "dU": dU}

    return wrong


def _dU_averaged(case):
    """dU divided by the number of samples: the mean, not the sum, over the batch."""
    return {"dU": _ref_host(_ref_rc_grad, case)["dU"] / batch_count(case.args[0])}


def _rc_grad_mistakes():
    ms = [
        Mistake(
            "factor 2 in ∇logdet",
            "your gradient is twice the right one -- the factor 2 in ∇logdet: the ½ of each "
            "head's rate cancels the 2 from differentiating W_kᵀW_k, so "
            "dR^c/dZ = β Σ_k W_k M_k⁻¹ U_kᵀ with W_k = ZU_k, M_k = I + βW_kᵀW_k",
            _scaled(_ref_rc_grad, 2.0),
        ),
        Mistake(
            "sign",
            "the gradient points to where R^c grows; yours has the opposite sign",
            _scaled(_ref_rc_grad, -1.0),
        ),
    ]
    ms += [Mistake(f"wrong constant β ({k})", h, _rc_grad_wrong_beta(k)) for k, h in BETA_HINTS.items()]
    ms += [
        Mistake(
            "dU averaged over the batch (mean vs sum over the batch)",
            "dU must be the gradient of the *sum* of the per-sample rates: add the samples' "
            "contributions ZᵀG over the batch, do not average them",
            _dU_averaged,
        ),
        Mistake(
            "dU not summed over the batch",
            "U is shared by all samples, so dU has U's shape (K, d, p): sum the per-sample "
            "gradients over the batch axis",
            lambda case: {"dU": per_sample_dU(*(host(a) for a in case.args[:2]), case.args[2])},
        ),
    ]
    return tuple(ms)


# --------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------


TASKS = [
    Task(
        id="3.1",
        function="coding_rate",
        notebook="ch03_coding_rate.md",
        book="Chapter 3, the lossy coding rate",
        title="R(Z) = ½ log det(I_d + α ZᵀZ), α = d/(Nε²), one value per sample",
        kind="function",
        strategy=_tokens_spec(),
        build=_build_tokens,
        reference=_ref_coding_rate,
        outputs=one("R"),
        argnames=("Z", "eps"),
        explicit=_TOKENS_EXPLICIT,
        examples=8,
        checks=("R equals minicrate.coding_rate on Hypothesis-drawn Z of shape (N, d) or (B, N, d)",),
        mistakes=_rate_mistakes(),
        solution=solution_of("objective.rates", "coding_rate"),
    ),
    Task(
        id="3.2",
        function="coding_rate_grad",
        notebook="ch03_coding_rate.md",
        book="Chapter 3, the lossy coding rate",
        title="dR/dZ = α Z (I_d + α ZᵀZ)⁻¹ (a linear solve, not an inverse)",
        kind="function",
        strategy=_tokens_spec(),
        build=_build_tokens,
        reference=_ref_coding_rate_grad,
        outputs=one("dR/dZ"),
        argnames=("Z", "eps"),
        explicit=_TOKENS_EXPLICIT,
        examples=8,
        checks=(
            "dR/dZ equals minicrate.coding_rate_grad",
            "dR/dZ agrees with central finite differences of minicrate.coding_rate",
        ),
        mistakes=_rate_grad_mistakes(),
        solution=solution_of("objective.rates", "coding_rate_grad"),
        fd=FiniteDifferences(forward=coding_rate, wrt={"dR/dZ": "Z"}, cotangent=_ones_like_rates),
    ),
    Task(
        id="3.3",
        function="compression_rate",
        notebook="ch03_compression_rate.md",
        book="Chapter 3, the compression term R^c",
        title="R^c(Z|U) = Σ_k ½ log det(I_p + β (ZU_k)ᵀ(ZU_k)), β = p/(Nε²)",
        kind="function",
        strategy=_heads_spec(),
        build=_build_heads,
        reference=_ref_rc,
        outputs=one("R^c"),
        argnames=("Z", "U", "eps"),
        explicit=_HEADS_EXPLICIT,
        examples=8,
        checks=("R^c equals minicrate.compression_rate (U need not be orthonormal; K·p need not be d)",),
        mistakes=_rc_mistakes(),
        solution=solution_of("objective.rates", "compression_rate"),
    ),
    Task(
        id="3.4",
        function="compression_rate_grad",
        notebook="ch03_compression_rate.md",
        book="Chapter 3 (the gradient of R^c, the start of chapter 5's MSSA)",
        title="(dR^c/dZ, dR^c/dU) with W_k = ZU_k, M_k = I + βW_kᵀW_k; dU summed over the batch",
        kind="function",
        strategy=_heads_spec(),
        build=_build_heads,
        reference=_ref_rc_grad,
        outputs=pair("dZ", "dU"),
        argnames=("Z", "U", "eps"),
        explicit=_HEADS_EXPLICIT,
        examples=8,
        checks=(
            "dZ and dU equal minicrate.compression_rate_grad",
            "dZ and dU agree with finite differences of minicrate.compression_rate (summed over the batch)",
        ),
        mistakes=_rc_grad_mistakes(),
        solution=solution_of("objective.rates", "compression_rate_grad"),
        fd=FiniteDifferences(forward=compression_rate, wrt={"dZ": "Z", "dU": "U"}, cotangent=_ones_like_rates),
    ),
]
