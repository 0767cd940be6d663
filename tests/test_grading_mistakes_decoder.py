"""The decoder-layer mistake builders (minicrate.grading.mistakes.decoder): the library's layer
at the default switches, and each switch the one wiring change it names."""


import numpy as np
import pytest

from minicrate.grading.mistakes.decoder import decoder_backward_wired, decoder_forward_wired
from minicrate.grading.mistakes.mssa import mssa_backward_variant
from minicrate.grading.tasks.ch11 import build_decoder
from minicrate.layers.decoder import decoder_layer_backward, decoder_layer_forward
from minicrate.layers.mssa import mssa_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

SHAPES = [((), 1, 1, 2), ((2,), 3, 2, 2), ((2,), 4, 2, 3)]  # (lead, N, K, p)


def _setup(lead, N, K, p, seed):
    """A decoder-layer case as the grader builds it (task 11.1's builder)."""
    case = build_decoder({"B": lead[0] if lead else 0, "N": N, "K": K, "p": p, "seed": seed}, np)
    Z, params = case.args
    return Z, params, case.dout


def _ln(X, params, which):
    return layernorm_forward(X, params[f"{which}_gamma"], params[f"{which}_beta"])[0]


def _mssa(X, params):
    return mssa_forward(X, params["U"], params["W_out"], params["b_out"])[0]


@pytest.mark.parametrize("shape", SHAPES)
def test_defaults_are_exactly_the_library_layer(shape):
    Z, params, dY = _setup(*shape, seed=2)
    Y, cache = decoder_layer_forward(Z, params)
    np.testing.assert_array_equal(decoder_forward_wired(Z, params), Y)
    dZ, grads = decoder_layer_backward(dY, cache)
    dZ_w, grads_w = decoder_backward_wired(dY, cache)
    np.testing.assert_array_equal(dZ_w, dZ)
    assert sorted(grads_w) == sorted(grads)
    for k in grads:
        np.testing.assert_array_equal(grads_w[k], grads[k])


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_switches_leave_out_one_layernorm(shape):
    Z, params, _ = _setup(*shape, seed=4)
    no_ln1 = Z @ params["E"].T
    np.testing.assert_allclose(
        decoder_forward_wired(Z, params, ln1=False), no_ln1 - _mssa(_ln(no_ln1, params, "ln2"), params), rtol=1e-12
    )
    Z_half = _ln(Z, params, "ln1") @ params["E"].T
    np.testing.assert_allclose(decoder_forward_wired(Z, params, ln2=False), Z_half - _mssa(Z_half, params), rtol=1e-12)
    np.testing.assert_allclose(
        decoder_forward_wired(Z, params, ln1=False, ln2=False),
        decoder_layer_forward(Z, params, use_layernorm=False)[0],
        rtol=1e-12,
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_switches_change_one_wire(shape):
    Z, params, dY = _setup(*shape, seed=6)
    _, cache = decoder_layer_forward(Z, params)
    dZ, grads = decoder_layer_backward(dY, cache)
    X1 = cache["lin"][0]
    d = Z.shape[-1]

    # MSSA fed +dY: its gradients flip sign exactly (the backward is linear in dY)
    _, flipped = decoder_backward_wired(dY, cache, upstream_sign=1.0)
    for k in ("U", "W_out", "b_out", "ln2_gamma", "ln2_beta"):
        np.testing.assert_allclose(flipped[k], -grads[k], rtol=1e-12, atol=1e-14)

    # no skip: dZ̃½ loses dY, so dE loses Σ dYᵀ X1
    _, no_skip = decoder_backward_wired(dY, cache, skip=False)
    np.testing.assert_allclose(
        grads["E"] - no_skip["E"], dY.reshape(-1, d).T @ X1.reshape(-1, d), rtol=1e-10, atol=1e-12
    )

    # without LN₁'s backward: the library's dZ is LN₁ᵀ of what comes out
    dX1, _ = decoder_backward_wired(dY, cache, through_ln1=False)
    np.testing.assert_allclose(layernorm_backward(dX1, cache["ln1"])[0], dZ, rtol=1e-10, atol=1e-12)

    # missing S̄ᵀ: the MSSA part is mssa_backward_variant's
    _, no_qk = decoder_backward_wired(dY, cache, transpose_term="missing")
    np.testing.assert_array_equal(
        no_qk["U"], mssa_backward_variant(-dY, cache["mssa"], transpose_term="missing")[1]["U"]
    )
    np.testing.assert_array_equal(no_qk["W_out"], grads["W_out"])


def test_layer_without_layernorms_is_refused():
    Z, params, dY = _setup((), 2, 1, 2, seed=1)
    _, cache = decoder_layer_forward(Z, params, use_layernorm=False)
    with pytest.raises(ValueError, match="LayerNorms"):
        decoder_backward_wired(dY, cache)
