r"""The exercise tasks graded by :mod:`minicrate.grading.core`: the registry :data:`TASKS`.

Each :class:`~minicrate.grading.core.Task` says how its cases are drawn (a
Hypothesis strategy of sizes, hyper-parameters and a seed, turned into float64
arrays by :mod:`minicrate.checks.strategies`), what the reference outputs are (the
:mod:`minicrate` implementation), how gradients are checked by finite
differences, and which **known mistakes** it recognises.  A mistake is a
deliberately wrong implementation written out below (NumPy, host side); when
a student's output equals it, the student sees its hint.

Task ids are ``chapter.number`` and tie together the book chapter, the
exercise notebook (``exercises/chNN_*.md``), the grader and the pytest marker
(``task3_2``):

==== ========================= =================================================
task function                  notebook
==== ========================= =================================================
3.1  coding_rate               ch03_coding_rate.md
3.2  coding_rate_grad          ch03_coding_rate.md
3.3  compression_rate          ch03_compression_rate.md
3.4  compression_rate_grad     ch03_compression_rate.md
==== ========================= =================================================

(The table grows with the notebooks; ``python -m minicrate grade --list``
prints the current one.)
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import seeds, well_conditioned_tokens
from minicrate.core.backend import to_numpy
from minicrate.grading.tasks.common import solution_of as _solution
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task

# --------------------------------------------------------------------------
# Small NumPy helpers for the reference-side wrong variants
# --------------------------------------------------------------------------


def _h(x):
    """Host float64 copy."""
    return np.asarray(to_numpy(x), dtype=np.float64)


def _T(x):
    return np.swapaxes(x, -1, -2)


def _half_logdet_I_plus(c, W):
    """½ log det(I + c WᵀW) for W (..., n, m), NumPy."""
    m = W.shape[-1]
    _, logdet = np.linalg.slogdet(np.eye(m) + c * (_T(W) @ W))
    return 0.5 * logdet


def _solve_right(W, c):
    """W (I + c WᵀW)⁻¹ for W (..., n, m)."""
    m = W.shape[-1]
    M = np.eye(m) + c * (_T(W) @ W)
    return _T(np.linalg.solve(M, _T(W)))


def _shape_label(**arrays):
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items())


def _one(name):
    """An ``outputs`` normaliser for a function returning one array."""

    def outputs(returned):
        if isinstance(returned, (tuple, list)):
            raise TypeError(
                f"should return one array ({name}), got a {type(returned).__name__} "
                f"of length {len(returned)}"
            )
        return {name: returned}

    return outputs


def _pair(first, second):
    def outputs(returned):
        if not (isinstance(returned, (tuple, list)) and len(returned) == 2):
            raise TypeError(
                f"should return a tuple ({first}, {second}), got {type(returned).__name__}"
            )
        return {first: returned[0], second: returned[1]}

    return outputs


EPS_VALUES = (0.25, 0.5, 1.0, 2.0)

# --------------------------------------------------------------------------
# Chapter 3: coding rate R and its gradient (tasks 3.1, 3.2)
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
    return Case((Z, spec["eps"]), {}, f"{_shape_label(Z=Z)}, eps={spec['eps']}", spec=spec)


_TOKENS_EXPLICIT = (
    {"B": 0, "N": 1, "d": 1, "eps": 0.5, "seed": 1},
    {"B": 2, "N": 3, "d": 5, "eps": 0.5, "seed": 2},
    {"B": 3, "N": 5, "d": 2, "eps": 1.0, "seed": 3},
)


def _alpha(case, kind="right"):
    """The coding-rate constant α = d/(Nε²), and the usual wrong versions."""
    Z, eps = case.args
    N, d = Z.shape[-2], Z.shape[-1]
    B = Z.shape[0] if Z.ndim == 3 else 1
    return {
        "right": d / (N * eps**2),
        "swapped": N / (d * eps**2),
        "no_d": 1.0 / (N * eps**2),
        "no_N": d / eps**2,
        "batch_N": d / (B * eps**2),
        "eps_not_squared": d / (N * eps),
    }[kind]


def _rate_variant(kind, factor=1.0):
    def wrong(case):
        Z = _h(case.args[0])
        return {"R": factor * _half_logdet_I_plus(_alpha(case, kind), Z)}

    return wrong


def _rate_reduced(op):
    def wrong(case):
        Z = _h(case.args[0])
        R = _half_logdet_I_plus(_alpha(case), Z)
        return {"R": op(R)}

    return wrong


ALPHA_HINTS = {
    "swapped": "α = d/(Nε²): the token width d = Z.shape[-1] goes on top and the number of "
    "tokens N = Z.shape[-2] below; you have them swapped (wrong N/d in the constant)",
    "no_d": "α = d/(Nε²) has the token width d = Z.shape[-1] in the numerator; yours lacks it",
    "no_N": "α = d/(Nε²) divides by the number of tokens N = Z.shape[-2]; yours does not",
    "batch_N": "wrong N in α = d/(Nε²): N is the number of tokens of one sample, Z.shape[-2], "
    "not the batch size Z.shape[0]",
    "eps_not_squared": "α = d/(Nε²) uses ε squared; yours divides by ε only",
}


def _rate_mistakes():
    ms = [
        Mistake(
            "missing ½ (log det instead of ½ log det)",
            "R = ½ log det(I + α ZᵀZ): your value is twice that; keep the factor ½",
            _rate_variant("right", 2.0),
        )
    ]
    ms += [Mistake(f"wrong constant α ({k})", h, _rate_variant(k)) for k, h in ALPHA_HINTS.items()]
    ms += [
        Mistake(
            "log base 2",
            "use the natural logarithm (rates are in nats): your value is R/ln 2",
            _rate_variant("right", 1 / math.log(2)),
        ),
        Mistake(
            "sum over the batch (mean vs sum over the batch)",
            "return one rate per sample, shape Z.shape[:-2]: you summed the rates over the batch",
            _rate_reduced(lambda R: np.sum(R)),
        ),
        Mistake(
            "mean over the batch (mean vs sum over the batch)",
            "return one rate per sample, shape Z.shape[:-2]: you averaged the rates over the batch",
            _rate_reduced(lambda R: np.mean(R)),
        ),
    ]
    return tuple(ms)


def _ref_coding_rate(case):
    from minicrate.objective.rates import coding_rate

    return {"R": coding_rate(*case.args)}


def _grad_variant(kind, factor=1.0, prefactor=True):
    def wrong(case):
        Z = _h(case.args[0])
        a = _alpha(case, kind)
        G = _solve_right(Z, a)
        return {"dR/dZ": factor * (a * G if prefactor else G)}

    return wrong


def _rate_grad_mistakes():
    ms = [
        Mistake(
            "factor 2 in ∇logdet",
            "your gradient is twice the right one -- the factor 2 in ∇logdet: the derivative "
            "of log det(I + αZᵀZ) is 2αZ(I + αZᵀZ)⁻¹ and the ½ in R cancels that 2, "
            "so dR/dZ = αZ(I + αZᵀZ)⁻¹",
            _grad_variant("right", 2.0),
        ),
        Mistake(
            "factor ½ in ∇logdet",
            "your gradient is half the right one: differentiating ZᵀZ gives two equal terms, "
            "so d log det(I + αZᵀZ) = 2α tr((I + αZᵀZ)⁻¹ Zᵀ dZ); with the ½ of R, "
            "dR/dZ = αZ(I + αZᵀZ)⁻¹",
            _grad_variant("right", 0.5),
        ),
        Mistake(
            "missing α in front",
            "the chain rule brings the constant out: dR/dZ = α Z (I + αZᵀZ)⁻¹; yours lacks "
            "the leading α",
            _grad_variant("right", prefactor=False),
        ),
        Mistake(
            "sign",
            "dR/dZ points to where R grows; yours has the opposite sign",
            _grad_variant("right", -1.0),
        ),
    ]
    ms += [Mistake(f"wrong constant α ({k})", h, _grad_variant(k)) for k, h in ALPHA_HINTS.items()]
    ms.append(
        Mistake(
            "transposed gradient",
            "a gradient has the shape of its input: dR/dZ is (..., N, d) like Z "
            "(tokens are rows); yours is transposed",
            lambda case: {"dR/dZ": _T(_h(_ref_coding_rate_grad(case)["dR/dZ"]))},
        )
    )
    return tuple(ms)


def _ref_coding_rate_grad(case):
    from minicrate.objective.rates import coding_rate_grad

    return {"dR/dZ": coding_rate_grad(*case.args)}


def _rate_forward(Z, eps):
    from minicrate.objective.rates import coding_rate

    return coding_rate(Z, eps)


def _ones_like_rates(case):
    return np.ones(case.args[0].shape[:-2])


# --------------------------------------------------------------------------
# Chapter 3: compression term R^c and its gradient (tasks 3.3, 3.4)
# --------------------------------------------------------------------------


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
    from minicrate.checks.strategies import normal

    shape = (spec["B"], spec["N"], spec["d"]) if spec["B"] else (spec["N"], spec["d"])
    Z = well_conditioned_tokens(xp, shape, spec["seed"])
    U = normal(
        xp, (spec["K"], spec["d"], spec["p"]), spec["seed"] + 1, scale=1.0 / math.sqrt(spec["d"])
    )
    return Case((Z, U, spec["eps"]), {}, f"{_shape_label(Z=Z, U=U)}, eps={spec['eps']}", spec=spec)


_HEADS_EXPLICIT = (
    {"B": 0, "N": 1, "d": 1, "K": 1, "p": 1, "eps": 0.5, "seed": 4},
    {"B": 2, "N": 4, "d": 6, "K": 3, "p": 2, "eps": 0.5, "seed": 5},
    {"B": 3, "N": 3, "d": 4, "K": 2, "p": 3, "eps": 1.0, "seed": 6},
)


def _beta(case, kind="right"):
    """β = p/(Nε²), and the usual wrong versions."""
    Z, U, eps = case.args
    N, d, p = Z.shape[-2], Z.shape[-1], U.shape[-1]
    B = Z.shape[0] if Z.ndim == 3 else 1
    return {
        "right": p / (N * eps**2),
        "d_not_p": d / (N * eps**2),
        "no_N": p / eps**2,
        "batch_N": p / (B * eps**2),
        "eps_not_squared": p / (N * eps),
    }[kind]


BETA_HINTS = {
    "d_not_p": "β = p/(Nε²) uses the head width p = U.shape[-1] (each projection ZU_k is "
    "p-dimensional data), not the model width d (wrong p in the constant)",
    "no_N": "β = p/(Nε²) divides by the number of tokens N = Z.shape[-2]; yours does not",
    "batch_N": "wrong N in β = p/(Nε²): N is the number of tokens of one sample, Z.shape[-2], "
    "not the batch size Z.shape[0]",
    "eps_not_squared": "β = p/(Nε²) uses ε squared; yours divides by ε only",
}


def _projections(case):
    Z, U = _h(case.args[0]), _h(case.args[1])
    return Z, U, Z[..., None, :, :] @ U  # (..., K, N, p)


def _rc_variant(kind="right", factor=1.0, reduce=np.sum):
    def wrong(case):
        _, _, W = _projections(case)
        per_head = _half_logdet_I_plus(_beta(case, kind), W)
        return {"R^c": factor * (reduce(per_head, axis=-1) if reduce else per_head)}

    return wrong


def _rc_mistakes():
    ms = [
        Mistake(
            "missing ½",
            "each head's rate is ½ log det(I + β W_kᵀW_k); your value is twice that",
            _rc_variant(factor=2.0),
        )
    ]
    ms += [Mistake(f"wrong constant β ({k})", h, _rc_variant(k)) for k, h in BETA_HINTS.items()]
    ms += [
        Mistake(
            "mean over heads",
            "R^c is the *sum* of the K heads' rates; you averaged them",
            _rc_variant(reduce=np.mean),
        ),
        Mistake(
            "heads not summed",
            "R^c sums the K heads' rates, so it has shape Z.shape[:-2]; yours keeps a heads axis",
            _rc_variant(reduce=None),
        ),
    ]
    return tuple(ms)


def _ref_rc(case):
    from minicrate.objective.rates import compression_rate

    return {"R^c": compression_rate(*case.args)}


def _rc_grad_parts(case, kind="right"):
    Z, U, W = _projections(case)
    b = _beta(case, kind)
    G = b * _solve_right(W, b)  # (..., K, N, p): β W_k M_k⁻¹
    dZ = np.sum(G @ _T(U), axis=-3)
    dU_per = _T(Z[..., None, :, :]) @ G  # (..., K, d, p)
    return dZ, dU_per


def _rc_grad_variant(kind="right", factor=1.0, dU_reduce="sum"):
    def wrong(case):
        dZ, dU_per = _rc_grad_parts(case, kind)
        K, d, p = case.args[1].shape
        flat = dU_per.reshape(-1, K, d, p)
        dU = {"sum": flat.sum(0), "mean": flat.mean(0), "none": dU_per}[dU_reduce]
        return {"dZ": factor * dZ, "dU": factor * dU}

    return wrong


def _rc_grad_mistakes():
    ms = [
        Mistake(
            "factor 2 in ∇logdet",
            "your gradient is twice the right one -- the factor 2 in ∇logdet: the ½ of each "
            "head's rate cancels the 2 from differentiating W_kᵀW_k, so "
            "dR^c/dZ = β Σ_k W_k M_k⁻¹ U_kᵀ with W_k = ZU_k, M_k = I + βW_kᵀW_k",
            _rc_grad_variant(factor=2.0),
        ),
        Mistake(
            "sign",
            "the gradient points to where R^c grows; yours has the opposite sign",
            _rc_grad_variant(factor=-1.0),
        ),
    ]
    ms += [
        Mistake(f"wrong constant β ({k})", h, _rc_grad_variant(k)) for k, h in BETA_HINTS.items()
    ]
    ms += [
        Mistake(
            "dU averaged over the batch (mean vs sum over the batch)",
            "dU must be the gradient of the *sum* of the per-sample rates: add the samples' "
            "contributions ZᵀG over the batch, do not average them",
            lambda case: {"dU": _rc_grad_variant(dU_reduce="mean")(case)["dU"]},
        ),
        Mistake(
            "dU not summed over the batch",
            "U is shared by all samples, so dU has U's shape (K, d, p): sum the per-sample "
            "gradients over the batch axis",
            lambda case: {"dU": _rc_grad_variant(dU_reduce="none")(case)["dU"]},
        ),
    ]
    return tuple(ms)


def _ref_rc_grad(case):
    from minicrate.objective.rates import compression_rate_grad

    dZ, dU = compression_rate_grad(*case.args)
    return {"dZ": dZ, "dU": dU}


def _rc_forward(Z, U, eps):
    from minicrate.objective.rates import compression_rate

    return compression_rate(Z, U, eps)


# --------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------


_TASK_LIST = [
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
        outputs=_one("R"),
        argnames=("Z", "eps"),
        explicit=_TOKENS_EXPLICIT,
        examples=8,
        checks=(
            "R equals minicrate.coding_rate on Hypothesis-drawn Z of shape (N, d) or (B, N, d)",
        ),
        mistakes=_rate_mistakes(),
        solution=_solution("objective.rates", "coding_rate"),
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
        outputs=_one("dR/dZ"),
        argnames=("Z", "eps"),
        explicit=_TOKENS_EXPLICIT,
        examples=8,
        checks=(
            "dR/dZ equals minicrate.coding_rate_grad",
            "dR/dZ agrees with central finite differences of minicrate.coding_rate",
        ),
        mistakes=_rate_grad_mistakes(),
        solution=_solution("objective.rates", "coding_rate_grad"),
        fd=FiniteDifferences(forward=_rate_forward, wrt={"dR/dZ": "Z"}, cotangent=_ones_like_rates),
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
        outputs=_one("R^c"),
        argnames=("Z", "U", "eps"),
        explicit=_HEADS_EXPLICIT,
        examples=8,
        checks=(
            "R^c equals minicrate.compression_rate (U need not be orthonormal; K·p need not be d)",
        ),
        mistakes=_rc_mistakes(),
        solution=_solution("objective.rates", "compression_rate"),
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
        outputs=_pair("dZ", "dU"),
        argnames=("Z", "U", "eps"),
        explicit=_HEADS_EXPLICIT,
        examples=8,
        checks=(
            "dZ and dU equal minicrate.compression_rate_grad",
            "dZ and dU agree with finite differences of minicrate.compression_rate "
            "(summed over the batch)",
        ),
        mistakes=_rc_grad_mistakes(),
        solution=_solution("objective.rates", "compression_rate_grad"),
        fd=FiniteDifferences(
            forward=_rc_forward, wrt={"dZ": "Z", "dU": "U"}, cotangent=_ones_like_rates
        ),
    ),
]

RATE_TASKS = _TASK_LIST
