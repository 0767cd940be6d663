r"""Chapter 11's exercise tasks: the decoder layer's forward (11.1) and backward (11.2).

The decoder layer (released code form, rows are tokens) undoes an encoder layer:

.. math:: \tilde Z^{\ell+1/2} = \operatorname{LN}_1(\tilde Z^\ell)E^\top, \qquad
          \tilde Z^{\ell+1} = \tilde Z^{\ell+1/2}
          - \operatorname{MSSA}(\operatorname{LN}_2(\tilde Z^{\ell+1/2}))

The reference is :mod:`minicrate.layers.decoder`.  The known mistakes are its
output with one change: the reference transformed with its own cache (the MSSA
added instead of subtracted, the skip from the normalised tokens, dE transposed),
the layer called with ``Eᵀ``, or the library's blocks wired with one slip
(:mod:`minicrate.grading.mistakes.decoder`).
"""

from __future__ import annotations

import math

import numpy as np

from minicrate.core.backend import host_to
from minicrate.grading.mistakes.decoder import decoder_backward_wired, decoder_forward_wired
from minicrate.grading.mistakes.mssa import SHARED_QK_HINT
from minicrate.grading.tasks.ch07 import layer_spec
from minicrate.grading.tasks.common import backward_outputs, forward_output, grad_names, host, named_backward, only
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task
from minicrate.layers.decoder import DECODER_KEYS, decoder_layer_backward, decoder_layer_forward

_DECODER_EXPLICIT = (
    {"B": 2, "N": 3, "K": 2, "p": 2, "seed": 121},
    {"B": 0, "N": 1, "K": 1, "p": 2, "seed": 122},
)


def build_decoder(spec, xp):
    """``(Z, params)`` and the upstream ``dY`` of a decoder-layer case, all from one seeded generator."""
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


def _host_args(case):
    """The case's ``Z`` and ``params`` as float64 NumPy arrays."""
    return host(case.args[0]), {k: host(v) for k, v in case.args[1].items()}


def decoder_solution(Z, params, *, scale=None):
    """minicrate's decoder layer forward with the student's signature."""
    return decoder_layer_forward(Z, params, scale=scale)


def _decoder_backward_solution(dY, cache):
    return decoder_layer_backward(dY, cache)


decoder_solution.__name__ = "decoder_layer_forward"
_decoder_backward_solution.__name__ = "decoder_layer_backward"

# --------------------------------------------------------------------------
# 11.1 forward


def _ref_decoder_forward(case):
    return {"Y": decoder_solution(*case.args)[0]}


def _from_reference(change):
    """A wrong output ``change(Y, cache)`` made from the reference output and its cache."""

    def wrong(case):
        return {"Y": change(*decoder_layer_forward(*_host_args(case)))}

    return wrong


def _wired(**switches):
    return lambda case: {"Y": decoder_forward_wired(*_host_args(case), **switches)}


def _E_untransposed(case):
    # the synthesis X1 E instead of X1 Eᵀ is the layer with E transposed
    Z, params = _host_args(case)
    return {"Y": decoder_layer_forward(Z, {**params, "E": params["E"].T})[0]}


_DECODER_FORWARD_MISTAKES = (
    Mistake(
        "MSSA added instead of subtracted",
        "the decoder runs the compression step backwards: the encoder moves along −∇R^c ≈ "
        "+MSSA, its time reversal along +∇R^c ≈ −MSSA, so Z̃' = Z̃½ − MSSA(LN₂(Z̃½))",
        # Y = Z̃½ − M, so Z̃½ + M = 2 Z̃½ − Y
        _from_reference(lambda Y, cache: 2 * cache["Z_half"] - Y),
    ),
    Mistake(
        "E not transposed",
        "E is stored (d, d) like an nn.Linear weight: the synthesis is LN₁(Z̃) Eᵀ",
        _E_untransposed,
    ),
    Mistake(
        "skip from the normalised tokens",
        "the skip carries the un-normalised Z̃½: Z̃' = Z̃½ − MSSA(LN₂(Z̃½))",
        # the MSSA's input, LN₂(Z̃½), in place of Z̃½
        _from_reference(lambda Y, cache: Y - cache["Z_half"] + cache["mssa"]["Z"]),
    ),
    Mistake("no LayerNorm before E", "normalise first: Z̃½ = LN₁(Z̃) Eᵀ", _wired(ln1=False)),
    Mistake("no LayerNorm before MSSA", "MSSA's input is LN₂(Z̃½)", _wired(ln2=False)),
)

# --------------------------------------------------------------------------
# 11.2 backward


def _ref_decoder_backward(case):
    _, cache = decoder_solution(*case.args)
    return named_backward("dZ", DECODER_KEYS, *decoder_layer_backward(case.dout, cache))


def _host_backward(case):
    """``(dY, cache)``: the upstream gradient and the library forward's cache, on the host."""
    return host(case.dout), decoder_layer_forward(*_host_args(case))[1]


def _wired_backward(keys, **switches):
    """The blocks' backwards wired with one slip; only the outputs in ``keys`` change."""

    def wrong(case):
        out = named_backward("dZ", DECODER_KEYS, *decoder_backward_wired(*_host_backward(case), **switches))
        return only(out, keys)

    return wrong


def _dE_transposed(case):
    _, grads = decoder_layer_backward(*_host_backward(case))
    return {"grads['E']": grads["E"].T}


_DECODER_BACKWARD_MISTAKES = (
    Mistake(
        "MSSA upstream gradient with the wrong sign",
        "Z̃' = Z̃½ − MSSA(...): the MSSA branch receives −dY, so its gradients (and the "
        "path through it) flip sign",
        _wired_backward(("dZ",) + grad_names("U", "W_out", "b_out", "E"), upstream_sign=1.0),
    ),
    Mistake(
        "missing the skip gradient",
        "the skip passes dY straight on: dZ̃½ = dY + LN₂ᵀ(MSSAᵀ(−dY))",
        _wired_backward(("dZ",) + grad_names("E"), skip=False),
    ),
    Mistake(
        "dE transposed",
        "dE has E's orientation: dE = Σ dZ̃½ᵀ LN₁(Z̃) (tokens and batch summed)",
        _dE_transposed,
    ),
    Mistake(
        "missing S̄ᵀ term (shared query/key)",
        SHARED_QK_HINT,
        _wired_backward(("dZ",) + grad_names("U", "E", "ln2_gamma", "ln2_beta"), transpose_term="missing"),
    ),
    Mistake(
        "skipped LN₁ in the backward",
        "the first step normalised Z̃: finish with layernorm_backward through LN₁",
        _wired_backward(("dZ",), through_ln1=False),
    ),
)


def _decoder_fd_inputs(case):
    Z, params = case.args
    return {"Z": Z, **params}


def _decoder_fd_forward(Z, **params):
    return decoder_layer_forward(Z, params)


TASKS = [
    Task(
        id="11.1",
        function="decoder_layer_forward",
        notebook="ch11_decoder_layer.md",
        book="Chapter 11, the decoder",
        title="Z̃½ = LN₁(Z̃)Eᵀ; Y = Z̃½ − MSSA(LN₂(Z̃½)) (code form); returns (Y, cache)",
        kind="function",
        strategy=layer_spec(),  # the encoder layer's sizes (task 7.3)
        build=build_decoder,
        reference=_ref_decoder_forward,
        outputs=forward_output(),
        argnames=("Z", "params"),
        explicit=_DECODER_EXPLICIT,
        examples=5,
        checks=("Y equals minicrate.decoder_layer_forward (LayerNorms on, untied W_out, s = 1/√p)",),
        mistakes=_DECODER_FORWARD_MISTAKES,
        solution=decoder_solution,
    ),
    Task(
        id="11.2",
        function="decoder_layer_backward",
        notebook="ch11_decoder_layer.md",
        book="Chapter 11, the decoder",
        title="(dZ, grads) for the decoder layer, grads keyed like params",
        kind="backward",
        strategy=layer_spec(),  # the encoder layer's sizes (task 7.3)
        build=build_decoder,
        reference=_ref_decoder_backward,
        outputs=backward_outputs("dZ", DECODER_KEYS),
        argnames=("Z", "params"),
        explicit=_DECODER_EXPLICIT,
        examples=5,
        forward_name="decoder_layer_forward",
        reference_forward=decoder_solution,
        checks=(
            "dZ and all eight parameter gradients equal minicrate.decoder_layer_backward",
            "they agree with finite differences of minicrate.decoder_layer_forward",
        ),
        mistakes=_DECODER_BACKWARD_MISTAKES,
        solution=_decoder_backward_solution,
        fd=FiniteDifferences(
            forward=_decoder_fd_forward,
            inputs=_decoder_fd_inputs,
            wrt={"dZ": "Z", **{f"grads[{k!r}]": k for k in DECODER_KEYS}},
            cases=1,
            max_entries=24,
        ),
    ),
]
"""Tasks 11.1 and 11.2."""
