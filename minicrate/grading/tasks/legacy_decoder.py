r"""Exercise tasks for the decoder layer (chapter 11): forward (11.1) and backward (11.2).

Part of the registry of :mod:`minicrate.grading.tasks`.  The decoder layer
(spec §5.2, code form, rows are tokens) undoes an encoder layer:

.. math:: \tilde Z^{\ell+1/2} = \operatorname{LN}_1(\tilde Z^\ell)E^\top, \qquad
          \tilde Z^{\ell+1} = \tilde Z^{\ell+1/2}
          - \operatorname{MSSA}(\operatorname{LN}_2(\tilde Z^{\ell+1/2}))

The reference is :mod:`minicrate.layers.decoder`; the known mistakes are NumPy
variants built from the blocks of :mod:`minicrate.grading.encoder`.
"""

from __future__ import annotations

import math

import numpy as np

from minicrate.grading.tasks.legacy_encoder import (
    SHARED_QK_HINT,
    _backward_outputs,
    _expected_backward,
    _forward_output,
    _h,
    _layer_spec,
    np_layernorm_backward,
    np_layernorm_forward,
    np_mssa_backward,
    np_mssa_forward,
)
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task

DECODER_KEYS = ("ln1_gamma", "ln1_beta", "E", "ln2_gamma", "ln2_beta", "U", "W_out", "b_out")


def np_decoder_forward(
    Z, P, scale=None, *, sign=-1.0, E_transposed=True, skip="raw", ln1=True, ln2=True
):
    X1 = np_layernorm_forward(Z, P["ln1_gamma"], P["ln1_beta"])[0] if ln1 else Z
    Z_half = X1 @ (P["E"].T if E_transposed else P["E"])
    X2 = np_layernorm_forward(Z_half, P["ln2_gamma"], P["ln2_beta"])[0] if ln2 else Z_half
    M, _ = np_mssa_forward(X2, P["U"], P["W_out"], P["b_out"], scale)
    base = Z_half if skip == "raw" else X2
    return base + sign * M, {"X1": X1, "Z_half": Z_half, "X2": X2}


def np_decoder_backward(
    dY,
    Z,
    P,
    scale=None,
    *,
    upstream_sign=-1.0,
    skip=True,
    dE_transposed=False,
    transpose_term="both",
    through_ln1=True,
):
    _, parts = np_decoder_forward(Z, P, scale)
    X1, Z_half, X2 = parts["X1"], parts["Z_half"], parts["X2"]
    d = Z.shape[-1]
    grads = {}
    dX2, g = np_mssa_backward(
        upstream_sign * dY, X2, P["U"], P["W_out"], P["b_out"], scale, transpose_term=transpose_term
    )
    grads.update(g)
    dbranch, g = np_layernorm_backward(dX2, Z_half, P["ln2_gamma"])
    grads["ln2_gamma"], grads["ln2_beta"] = g["gamma"], g["beta"]
    dZ_half = (dY if skip else 0.0) + dbranch
    dE = dZ_half.reshape(-1, d).T @ X1.reshape(-1, d)
    grads["E"] = dE.T if dE_transposed else dE
    dX1 = dZ_half @ P["E"]
    if through_ln1:
        dZ, g = np_layernorm_backward(dX1, Z, P["ln1_gamma"])
    else:
        dZ, g = dX1, np_layernorm_backward(dX1, Z, P["ln1_gamma"])[1]
    grads["ln1_gamma"], grads["ln1_beta"] = g["gamma"], g["beta"]
    return dZ, grads


# Same shapes as the encoder layer's cases.
_decoder_spec = _layer_spec


_DECODER_EXPLICIT = (
    {"B": 2, "N": 3, "K": 2, "p": 2, "seed": 121},
    {"B": 0, "N": 1, "K": 1, "p": 2, "seed": 122},
)


def _build_decoder(spec, xp):
    from minicrate.core.backend import host_to

    K, p = spec["K"], spec["p"]
    d = K * p
    r = np.random.default_rng(spec["seed"])
    params = {
        "ln1_gamma": 1.0 + 0.2 * r.standard_normal(d),
        "ln1_beta": 0.2 * r.standard_normal(d),
        "E": r.standard_normal((d, d)) / math.sqrt(d),
        "ln2_gamma": 1.0 + 0.2 * r.standard_normal(d),
        "ln2_beta": 0.2 * r.standard_normal(d),
        "U": r.standard_normal((K, d, p)) / math.sqrt(d),
        "W_out": r.standard_normal((d, K * p)) / math.sqrt(K * p),
        "b_out": 0.2 * r.standard_normal(d),
    }
    shape = ((spec["B"],) if spec["B"] else ()) + (spec["N"], d)
    Z = r.standard_normal(shape)
    dY = r.standard_normal(shape)
    return Case(
        (host_to(xp, Z), {k: host_to(xp, v) for k, v in params.items()}),
        {},
        f"Z {shape}, K={K}, p={p}",
        dout=host_to(xp, dY),
        spec=spec,
    )


def _decoder_np(case):
    return _h(case.args[0]), {k: _h(v) for k, v in case.args[1].items()}


def _ref_decoder_fwd_fn(Z, params, *, scale=None):
    from minicrate.layers.decoder import decoder_layer_forward

    return decoder_layer_forward(Z, params, scale=scale)


def _ref_decoder_forward(case):
    return {"Y": _ref_decoder_fwd_fn(*case.args)[0]}


def _ref_decoder_backward(case):
    from minicrate.layers.decoder import decoder_layer_backward

    _, cache = _ref_decoder_fwd_fn(*case.args)
    dZ, grads = decoder_layer_backward(case.dout, cache)
    return _expected_backward("dZ", DECODER_KEYS, dZ, grads)


def _dec_fwd_variant(**kw):
    return lambda case: {"Y": np_decoder_forward(*_decoder_np(case), **kw)[0]}


_DECODER_FORWARD_MISTAKES = (
    Mistake(
        "MSSA added instead of subtracted",
        "the decoder runs the compression step backwards: the encoder moves along −∇R^c ≈ "
        "+MSSA, its time reversal along +∇R^c ≈ −MSSA, so Z̃' = Z̃½ − MSSA(LN₂(Z̃½))",
        _dec_fwd_variant(sign=1.0),
    ),
    Mistake(
        "E not transposed",
        "E is stored (d, d) like an nn.Linear weight: the synthesis is LN₁(Z̃) Eᵀ",
        _dec_fwd_variant(E_transposed=False),
    ),
    Mistake(
        "skip from the normalised tokens",
        "the skip carries the un-normalised Z̃½: Z̃' = Z̃½ − MSSA(LN₂(Z̃½))",
        _dec_fwd_variant(skip="normalised"),
    ),
    Mistake(
        "no LayerNorm before E", "normalise first: Z̃½ = LN₁(Z̃) Eᵀ", _dec_fwd_variant(ln1=False)
    ),
    Mistake("no LayerNorm before MSSA", "MSSA's input is LN₂(Z̃½)", _dec_fwd_variant(ln2=False)),
)


def _dec_bwd_variant(keys, **kw):
    def wrong(case):
        Z, P = _decoder_np(case)
        dZ, g = np_decoder_backward(_h(case.dout), Z, P, **kw)
        out = _expected_backward("dZ", DECODER_KEYS, dZ, g)
        return {k: v for k, v in out.items() if k in keys}

    return wrong


_G = lambda *names: tuple(f"grads[{n!r}]" for n in names)  # noqa: E731

_DECODER_BACKWARD_MISTAKES = (
    Mistake(
        "MSSA upstream gradient with the wrong sign",
        "Z̃' = Z̃½ − MSSA(...): the MSSA branch receives −dY, so its gradients (and the "
        "path through it) flip sign",
        _dec_bwd_variant(("dZ",) + _G("U", "W_out", "b_out", "E"), upstream_sign=1.0),
    ),
    Mistake(
        "missing the skip gradient",
        "the skip passes dY straight on: dZ̃½ = dY + LN₂ᵀ(MSSAᵀ(−dY))",
        _dec_bwd_variant(("dZ",) + _G("E"), skip=False),
    ),
    Mistake(
        "dE transposed",
        "dE has E's orientation: dE = Σ dZ̃½ᵀ LN₁(Z̃) (tokens and batch summed)",
        _dec_bwd_variant(_G("E"), dE_transposed=True),
    ),
    Mistake(
        "missing S̄ᵀ term (shared query/key)",
        SHARED_QK_HINT,
        _dec_bwd_variant(("dZ",) + _G("U", "E", "ln2_gamma", "ln2_beta"), transpose_term="missing"),
    ),
    Mistake(
        "skipped LN₁ in the backward",
        "the first step normalised Z̃: finish with layernorm_backward through LN₁",
        _dec_bwd_variant(("dZ",), through_ln1=False),
    ),
)


def _decoder_fd_inputs(case):
    Z, params = case.args
    return {"Z": Z, **params}


def _decoder_fd_forward(Z, **params):
    return _ref_decoder_fwd_fn(Z, params)


def _sol_decoder_backward(dY, cache):
    from minicrate.layers.decoder import decoder_layer_backward

    return decoder_layer_backward(dY, cache)


_ref_decoder_fwd_fn.__name__ = "decoder_layer_forward"
_sol_decoder_backward.__name__ = "decoder_layer_backward"

DECODER_TASKS = [
    Task(
        id="11.1",
        function="decoder_layer_forward",
        notebook="ch11_decoder_layer.md",
        book="Chapter 11, the decoder",
        title="Z̃½ = LN₁(Z̃)Eᵀ; Y = Z̃½ − MSSA(LN₂(Z̃½)) (code form); returns (Y, cache)",
        kind="function",
        strategy=_decoder_spec(),
        build=_build_decoder,
        reference=_ref_decoder_forward,
        outputs=_forward_output,
        argnames=("Z", "params"),
        explicit=_DECODER_EXPLICIT,
        examples=5,
        checks=(
            "Y equals minicrate.decoder_layer_forward (LayerNorms on, untied W_out, s = 1/√p)",
        ),
        mistakes=_DECODER_FORWARD_MISTAKES,
        solution=_ref_decoder_fwd_fn,
    ),
    Task(
        id="11.2",
        function="decoder_layer_backward",
        notebook="ch11_decoder_layer.md",
        book="Chapter 11, the decoder",
        title="(dZ, grads) for the decoder layer, grads keyed like params",
        kind="backward",
        strategy=_decoder_spec(),
        build=_build_decoder,
        reference=_ref_decoder_backward,
        outputs=_backward_outputs("dZ", DECODER_KEYS),
        argnames=("Z", "params"),
        explicit=_DECODER_EXPLICIT,
        examples=5,
        forward_name="decoder_layer_forward",
        reference_forward=_ref_decoder_fwd_fn,
        checks=(
            "dZ and all eight parameter gradients equal minicrate.decoder_layer_backward",
            "they agree with finite differences of minicrate.decoder_layer_forward",
        ),
        mistakes=_DECODER_BACKWARD_MISTAKES,
        solution=_sol_decoder_backward,
        fd=FiniteDifferences(
            forward=_decoder_fd_forward,
            inputs=_decoder_fd_inputs,
            wrt={"dZ": "Z", **{f"grads[{k!r}]": k for k in DECODER_KEYS}},
            cases=1,
            max_entries=24,
        ),
    ),
]
