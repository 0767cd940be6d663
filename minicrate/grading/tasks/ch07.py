"""Chapter 7's exercise tasks: LayerNorm (7.1, 7.2) and the CRATE encoder layer (7.3, 7.4).

The references are :mod:`minicrate.ops.layernorm` and :mod:`minicrate.layers.encoder`;
the known mistakes come from :mod:`minicrate.grading.mistakes` (``layernorm``,
``layer``, which wires the library's blocks wrongly, and the ISTA and MSSA
block mistakes the layer's backward reuses), built from the library's own outputs.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import normal, seeds
from minicrate.core.backend import host_to
from minicrate.grading.mistakes import layer as wrong_layer
from minicrate.grading.mistakes import layernorm as wrong_ln
from minicrate.grading.mistakes.ista import RELU_MASK_HINT, ista_backward_without_mask, ista_preactivation
from minicrate.grading.mistakes.mssa import SHARED_QK_HINT, mssa_backward_variant
from minicrate.grading.tasks.common import (
    backward_outputs,
    forward_output,
    grad_names,
    host,
    label,
    lead,
    named_backward,
    only,
    solution_of,
)
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task
from minicrate.layers.encoder import LAYER_KEYS, encoder_layer_backward, encoder_layer_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

# --------------------------------------------------------------------------
# LayerNorm (7.1, 7.2)
# --------------------------------------------------------------------------


@st.composite
def _ln_spec(draw):
    return {
        "lead": draw(st.sampled_from([(), (3,), (2, 3)])),
        "d": draw(st.integers(2, 6)),
        "eps": draw(st.sampled_from([1e-5, 0.1])),
        "seed": draw(seeds),
    }


_LN_EXPLICIT = (
    {"lead": (2, 3), "d": 4, "eps": 1e-5, "seed": 31},
    {"lead": (1,), "d": 2, "eps": 0.1, "seed": 32},
)


def _build_ln(spec, xp):
    shape = (*spec["lead"], spec["d"])
    X = normal(xp, shape, spec["seed"], scale=2.0)
    X = X + normal(xp, shape[:-1] + (1,), spec["seed"] + 1)  # tokens with their own offsets
    gamma = 1.0 + normal(xp, (spec["d"],), spec["seed"] + 2, scale=0.3)
    beta = normal(xp, (spec["d"],), spec["seed"] + 3, scale=0.3)
    dY = normal(xp, shape, spec["seed"] + 4)
    return Case((X, gamma, beta), {"eps": spec["eps"]}, label(X=X, eps=spec["eps"]), dout=dY, spec=spec)


def _ln_host(case):
    """``(X, gamma, beta, eps)`` of a case, the arrays as host copies."""
    X, gamma, beta = (host(a) for a in case.args)
    return X, gamma, beta, case.kwargs["eps"]


def _ln_host_cache(case):
    """The host upstream gradient and the library forward's cache of the case's host copies."""
    X, gamma, beta, eps = _ln_host(case)
    return host(case.dout), layernorm_forward(X, gamma, beta, eps=eps)[1]


def _ref_ln_forward(case):
    return {"Y": layernorm_forward(*case.args, **case.kwargs)[0]}


def _ref_ln_backward(case):
    _, cache = layernorm_forward(*case.args, **case.kwargs)
    dX, g = layernorm_backward(case.dout, cache)
    return named_backward("dX", ("gamma", "beta"), dX, g)


def _ln_wrong_forward(build):
    """A mistake's ``wrong`` from a wrong forward ``build(X, gamma, beta, eps) -> Y``."""
    return lambda case: {"Y": build(*_ln_host(case))}


def _ln_wrong_grads(build):
    """A mistake's ``wrong`` from ``build(dY, cache) -> {"gamma": ..., "beta": ...}``."""

    def wrong(case):
        grads = build(*_ln_host_cache(case))
        return dict(zip(grad_names(*grads), grads.values(), strict=True))

    return wrong


def _ln_wrong_dX(build):
    """A mistake's ``wrong`` from ``build(dY, cache) -> dX``."""
    return lambda case: {"dX": build(*_ln_host_cache(case))}


_LN_FORWARD_MISTAKES = (
    Mistake("unbiased variance",
            "LayerNorm uses the biased variance, the mean of (x − μ)² over the d features "
            "(divide by d, not d − 1), like torch.nn.LayerNorm",
            _ln_wrong_forward(wrong_ln.unbiased_variance)),
    Mistake("ε outside the square root", "divide by √(σ² + ε), not √σ² + ε",
            _ln_wrong_forward(wrong_ln.eps_outside_the_root)),
    Mistake("normalised over the tokens",
            "normalise each token over its d features (the last axis), not each feature over the tokens",
            _ln_wrong_forward(wrong_ln.normalised_over_tokens)),
    Mistake("no affine", "finish with γ ⊙ x̂ + β", _ln_wrong_forward(wrong_ln.without_affine)),
    Mistake("γ and β swapped", "γ scales and β shifts: y = γ ⊙ x̂ + β", _ln_wrong_forward(wrong_ln.affine_swapped)),
)

_LN_BACKWARD_MISTAKES = (
    Mistake("dγ, dβ averaged (mean vs sum over the batch)",
            "γ and β are shared by every token of every sample, so their gradients sum over all of them; you averaged",
            _ln_wrong_grads(wrong_ln.grads_averaged)),
    Mistake("dγ, dβ not summed",
            "γ and β have shape (d,), and so do their gradients: sum over every axis but the last",
            _ln_wrong_grads(wrong_ln.grads_per_token)),
    Mistake("missing the x̂ term",
            "μ and σ depend on x too: dX = (ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)) / √(σ² + ε) with "
            "ĝ = γ ⊙ dY; you dropped the x̂ ⊙ mean(ĝ ⊙ x̂) term (the path through σ)",
            _ln_wrong_dX(wrong_ln.dX_without_xhat_term)),
    Mistake("missing the mean term", "the mean μ depends on x too: subtract mean(ĝ) (the path through μ)",
            _ln_wrong_dX(wrong_ln.dX_without_mean_term)),
    Mistake("forgot γ", "the upstream gradient reaches x̂ through γ: use ĝ = γ ⊙ dY",
            _ln_wrong_dX(wrong_ln.dX_without_gamma)),
)


def _ref_ln_fwd_fn(X, gamma, beta, *, eps=1e-5):
    """The reference forward with the student's signature (also differentiated by finite differences)."""
    return layernorm_forward(X, gamma, beta, eps=eps)


# --------------------------------------------------------------------------
# The encoder layer (7.3, 7.4)
# --------------------------------------------------------------------------


@st.composite
def layer_spec(draw):
    """Sizes of a layer case (7.3, 7.4 and the decoder's 11.1, 11.2): batch, tokens, K heads of width p."""
    K, p = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return {
        "B": draw(st.integers(0, 2)),
        "N": draw(st.integers(1, 4)),
        "K": K,
        "p": max(p, 2) if K == 1 else p,
        "seed": draw(seeds),
    }


_LAYER_EXPLICIT = (
    {"B": 2, "N": 3, "K": 2, "p": 2, "seed": 41},
    {"B": 0, "N": 1, "K": 1, "p": 2, "seed": 42},
)


def _layer_params(K, p, seed):
    d = K * p
    r = np.random.default_rng(seed)
    return {
        "ln1_gamma": 1.0 + 0.2 * r.standard_normal(d),
        "ln1_beta": 0.2 * r.standard_normal(d),
        "U": r.standard_normal((K, d, p)) / math.sqrt(d),
        "W_out": r.standard_normal((d, K * p)) / math.sqrt(K * p),
        "b_out": 0.2 * r.standard_normal(d),
        "ln2_gamma": 1.0 + 0.2 * r.standard_normal(d),
        "ln2_beta": 0.2 * r.standard_normal(d),
        "D": r.standard_normal((d, d)) / math.sqrt(d),
    }


def _min_preactivation(Z, params):
    """The smallest |ISTA pre-activation| of the library's layer (η = λ = 0.1, the defaults)."""
    ista = encoder_layer_forward(Z, params)[1]["ista"]
    return np.min(np.abs(ista_preactivation(ista["X"], ista["D"], ista["eta"], 0.1)))


def build_layer(spec, xp):
    """Seeds are tried in turn until every ISTA pre-activation is 0.05 away from the kink."""
    K, p = spec["K"], spec["p"]
    shape = (*lead(spec), spec["N"], K * p)
    for attempt in range(200):
        seed = spec["seed"] + 1000 * attempt
        params = _layer_params(K, p, seed)
        Z = np.random.default_rng(seed + 1).standard_normal(shape)
        if _min_preactivation(Z, params) > 0.05:
            break
    dY = np.random.default_rng(seed + 2).standard_normal(shape)
    params_x = {k: host_to(xp, v) for k, v in params.items()}
    return Case((host_to(xp, Z), params_x), {}, f"Z {shape}, K={K}, p={p}", dout=host_to(xp, dY), spec=spec)


def _layer_host(case):
    """``(Z, params)`` of a case as host copies."""
    return host(case.args[0]), {k: host(v) for k, v in case.args[1].items()}


def _ref_layer_forward(case):
    return {"Y": encoder_layer_forward(*case.args)[0]}


def _ref_layer_backward(case):
    _, cache = encoder_layer_forward(*case.args)
    dZ, grads = encoder_layer_backward(case.dout, cache)
    return named_backward("dZ", LAYER_KEYS, dZ, grads)


def _layer_wrong_forward(build, **switches):
    """A mistake's ``wrong`` from ``build(Z, params, **switches) -> Y``."""
    return lambda case: {"Y": build(*_layer_host(case), **switches)}


def _layer_host_cache(case):
    """The host upstream gradient and the library layer's cache of the case's host copies."""
    return host(case.dout), encoder_layer_forward(*_layer_host(case))[1]


def _layer_wrong_dZ(build):
    """A mistake's ``wrong`` from ``build(dY, cache) -> dZ``."""
    return lambda case: {"dZ": build(*_layer_host_cache(case))}


def _layer_wrong_backward(keys, **blocks):
    """A mistake's ``wrong`` from :func:`~minicrate.grading.mistakes.layer.layer_backward_variant`
    with ``blocks`` changed, restricted to the outputs ``keys`` it changes."""

    def wrong(case):
        dZ, grads = wrong_layer.layer_backward_variant(*_layer_host_cache(case), **blocks)
        return only(named_backward("dZ", LAYER_KEYS, dZ, grads), keys)

    return wrong


_ALL = ("dZ", *grad_names(*LAYER_KEYS))
_BEFORE_LN2 = ("dZ", *grad_names("ln1_gamma", "ln1_beta", "U", "W_out", "b_out"))
_variant = wrong_layer.layer_forward_variant

_LAYER_FORWARD_MISTAKES = (
    Mistake("no residual around MSSA", "the compression step is a residual update: Z½ = Z + MSSA(LN₁(Z))",
            _layer_wrong_forward(_variant, residual="none")),
    Mistake("residual from the normalised input",
            "the skip carries the un-normalised Z: Z½ = Z + MSSA(LN₁(Z)), not LN₁(Z) + MSSA(...)",
            _layer_wrong_forward(_variant, residual="normalised")),
    Mistake("residual around ISTA",
            "there is no skip around ISTA in CRATE (its warm start is the identity path): Z' = ISTA(LN₂(Z½))",
            _layer_wrong_forward(_variant, ista_residual=True)),
    Mistake("no LayerNorm before ISTA", "ISTA's input is LN₂(Z½), normalised with ln2_gamma/ln2_beta",
            _layer_wrong_forward(_variant, ln2=False)),
    Mistake("LayerNorms swapped", "ln1_* normalises the MSSA input, ln2_* the ISTA input",
            _layer_wrong_forward(wrong_layer.layernorms_swapped)),
)

_LAYER_BACKWARD_MISTAKES = (
    Mistake("missing the skip gradient",
            "Z½ = Z + MSSA(LN₁(Z)): the skip passes dZ½ straight to dZ, so dZ = dZ½ + "
            "LN₁ᵀ(MSSAᵀ(dZ½)); you kept only the branch",
            _layer_wrong_dZ(wrong_layer.dZ_without_skip)),
    Mistake("missing the MSSA branch",
            "dZ = dZ½ + LN₁ᵀ(MSSAᵀ(dZ½)): the branch through MSSA and LN₁ contributes too",
            _layer_wrong_dZ(wrong_layer.half_step_gradient)),
    Mistake("skipped LN₂ in the backward",
            "ISTA's input is LN₂(Z½): backpropagate through LN₂ (layernorm_backward) to get dZ½",
            _layer_wrong_backward(_BEFORE_LN2, through_ln2=False)),
    Mistake("missing S̄ᵀ term (shared query/key)", SHARED_QK_HINT,
            _layer_wrong_backward(("dZ", *grad_names("ln1_gamma", "ln1_beta", "U")),
                                  mssa_bwd=functools.partial(mssa_backward_variant, transpose_term="missing"))),
    Mistake("forgetting the ReLU mask", RELU_MASK_HINT,
            _layer_wrong_backward(_ALL, ista_bwd=ista_backward_without_mask)),
)


def _layer_fd_inputs(case):
    Z, params = case.args
    return {"Z": Z, **params}


def _layer_fd_forward(Z, **params):
    return encoder_layer_forward(Z, params)


def _ref_layer_fwd_fn(Z, params, **kw):
    return encoder_layer_forward(Z, params, **kw)


TASKS = [
    Task(
        id="7.1",
        function="layernorm_forward",
        notebook="ch07_encoder_layer.md",
        book="Chapter 7, the CRATE layer",
        title="Y = γ ⊙ (x − μ)/√(σ² + ε) + β per token (biased variance); returns (Y, cache)",
        kind="function",
        strategy=_ln_spec(),
        build=_build_ln,
        reference=_ref_ln_forward,
        outputs=forward_output(),
        argnames=("X", "gamma", "beta"),
        explicit=_LN_EXPLICIT,
        examples=6,
        checks=("Y equals minicrate.layernorm_forward (ε = 1e-5 and 0.1)",),
        mistakes=_LN_FORWARD_MISTAKES,
        solution=_ref_ln_fwd_fn,
    ),
    Task(
        id="7.2",
        function="layernorm_backward",
        notebook="ch07_encoder_layer.md",
        book="Chapter 7 (derivation: chapter 8, backpropagation by hand)",
        title="(dX, {'gamma', 'beta'}) for LayerNorm",
        kind="backward",
        strategy=_ln_spec(),
        build=_build_ln,
        reference=_ref_ln_backward,
        outputs=backward_outputs("dX", ("gamma", "beta")),
        argnames=("X", "gamma", "beta"),
        explicit=_LN_EXPLICIT,
        examples=6,
        forward_name="layernorm_forward",
        reference_forward=_ref_ln_fwd_fn,
        checks=(
            "dX, dγ, dβ equal minicrate.layernorm_backward",
            "dX, dγ, dβ agree with finite differences of minicrate.layernorm_forward",
        ),
        mistakes=_LN_BACKWARD_MISTAKES,
        fd=FiniteDifferences(
            forward=_ref_ln_fwd_fn,
            wrt={"dX": "X", "grads['gamma']": "gamma", "grads['beta']": "beta"},
        ),
        solution=solution_of("ops.layernorm", "layernorm_backward"),
    ),
    Task(
        id="7.3",
        function="encoder_layer_forward",
        notebook="ch07_encoder_layer.md",
        book="Chapter 7, the CRATE layer",
        title="Z½ = Z + MSSA(LN₁(Z)); Y = ISTA(LN₂(Z½)) (official form); returns (Y, cache)",
        kind="function",
        strategy=layer_spec(),
        build=build_layer,
        reference=_ref_layer_forward,
        outputs=forward_output(),
        argnames=("Z", "params"),
        explicit=_LAYER_EXPLICIT,
        examples=5,
        checks=(
            "Y equals minicrate.encoder_layer_forward (pre-LN, untied W_out, s = 1/√p, η = λ = 0.1)",
        ),
        mistakes=_LAYER_FORWARD_MISTAKES,
        solution=_ref_layer_fwd_fn,
    ),
    Task(
        id="7.4",
        function="encoder_layer_backward",
        notebook="ch07_encoder_layer.md",
        book="Chapter 7 (derivation: chapter 8, backpropagation by hand)",
        title="(dZ, grads) for the whole layer, grads keyed like params",
        kind="backward",
        strategy=layer_spec(),
        build=build_layer,
        reference=_ref_layer_backward,
        outputs=backward_outputs("dZ", LAYER_KEYS),
        argnames=("Z", "params"),
        explicit=_LAYER_EXPLICIT,
        examples=5,
        forward_name="encoder_layer_forward",
        reference_forward=_ref_layer_fwd_fn,
        checks=(
            "dZ and all eight parameter gradients equal minicrate.encoder_layer_backward",
            "they agree with finite differences of minicrate.encoder_layer_forward "
            "(ISTA pre-activations kept 0.05 from the kink)",
        ),
        mistakes=_LAYER_BACKWARD_MISTAKES,
        fd=FiniteDifferences(
            forward=_layer_fd_forward,
            inputs=_layer_fd_inputs,
            wrt={"dZ": "Z", **{f"grads[{k!r}]": k for k in LAYER_KEYS}},
            cases=1,
            max_entries=24,
        ),
        solution=solution_of("layers.encoder", "encoder_layer_backward"),
    ),
]
