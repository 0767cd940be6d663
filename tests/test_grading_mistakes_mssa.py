"""The MSSA mistake builders (minicrate.grading.mistakes.mssa): the library's output at the
default switches, and each switch the slip it names, checked against a small per-head formula
written out here."""

import math

import numpy as np
import pytest

from minicrate.grading.mistakes.mssa import (
    column_softmax_heads,
    interleaved_heads,
    mssa_backward_variant,
    output_with_heads,
)
from minicrate.layers.mssa import mssa_backward, mssa_forward
from minicrate.ops.functional import softmax

SHAPES = [((), 3, 1, 2), ((2,), 4, 2, 3), ((2, 2), 2, 3, 1)]  # (lead, N, K, p)


def _setup(lead, N, K, p, seed, scale=None):
    r = np.random.default_rng(seed)
    d = K * p
    Z = r.standard_normal((*lead, N, d))
    U = r.standard_normal((K, d, p)) / math.sqrt(d)
    W_out = r.standard_normal((d, K * p)) / math.sqrt(K * p)
    b_out = 0.3 * r.standard_normal(d)
    dY = r.standard_normal((*lead, N, d))
    Y, cache = mssa_forward(Z, U, W_out, b_out, scale=scale)
    return Z, U, W_out, b_out, dY, Y, cache


def _slow_backward(dY, Z, U, W_out, s, *, transpose_term, softmax_axis, scale_in_backward, value_term):
    """dZ and dU head by head and sample by sample, with the switches spelled out."""
    K, d, p = U.shape
    Zs, dYs = Z.reshape(-1, *Z.shape[-2:]), dY.reshape(-1, *dY.shape[-2:])
    dZ, dU = np.zeros_like(Zs), np.zeros_like(U)
    for b in range(Zs.shape[0]):
        dH = dYs[b] @ W_out
        for k in range(K):
            W = Zs[b] @ U[k]
            A = softmax(s * W @ W.T, axis=-1)
            dO = dH[:, k * p : (k + 1) * p]
            dA = dO @ W.T
            dS = A * (dA - np.sum(A * dA, axis=softmax_axis, keepdims=True))
            path = {"both": dS + dS.T, "missing": dS, "only_transpose": dS.T}[transpose_term]
            dW = (s if scale_in_backward else 1.0) * path @ W + (A.T @ dO if value_term else 0.0)
            dZ[b] += dW @ U[k].T
            dU[k] += Zs[b].T @ dW
    return dZ.reshape(Z.shape), dU


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("scale", [None, 0.7])
def test_defaults_are_exactly_the_library_backward(shape, scale):
    *_, dY, _, cache = _setup(*shape, seed=3, scale=scale)
    dZ, grads = mssa_backward(dY, cache)
    dZ_v, grads_v = mssa_backward_variant(dY, cache)
    np.testing.assert_array_equal(dZ_v, dZ)
    assert sorted(grads_v) == sorted(grads)
    for k in grads:
        np.testing.assert_array_equal(grads_v[k], grads[k])


SWITCHES = [
    {},
    {"transpose_term": "missing"},
    {"transpose_term": "only_transpose"},
    {"softmax_axis": -2},
    {"scale_in_backward": False},
    {"value_term": False},
    {"transpose_term": "missing", "value_term": False},
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "right")
def test_each_switch_is_the_slip_it_names(shape, switches):
    Z, U, W_out, _, dY, _, cache = _setup(*shape, seed=5, scale=0.6)
    dZ, grads = mssa_backward_variant(dY, cache, **switches)
    options = {"transpose_term": "both", "softmax_axis": -1, "scale_in_backward": True, "value_term": True}
    dZ_slow, dU_slow = _slow_backward(dY, Z, U, W_out, 0.6, **{**options, **switches})
    np.testing.assert_allclose(dZ, dZ_slow, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["U"], dU_slow, rtol=1e-10, atol=1e-12)
    right = mssa_backward(dY, cache)[1]
    for k in ("W_out", "b_out"):  # the switches touch only the path to W_k
        np.testing.assert_array_equal(grads[k], right[k])
    if switches and shape[2] * shape[1] > 1:
        assert not np.allclose(dZ, mssa_backward(dY, cache)[0])


def test_unknown_transpose_term_and_tied_form_are_refused():
    *_, dY, _, cache = _setup((), 3, 2, 2, seed=1)
    with pytest.raises(ValueError, match="transpose_term"):
        mssa_backward_variant(dY, cache, transpose_term="half")
    Z, U = cache["Z"], cache["U"]
    _, tied = mssa_forward(Z, U, None, None)
    with pytest.raises(ValueError, match="official form"):
        mssa_backward_variant(dY, tied)


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_builders_are_the_heads_they_name(shape):
    lead, N, K, p = shape
    Z, U, W_out, b_out, _, Y, cache = _setup(*shape, seed=7)
    W = Z[..., None, :, :] @ U
    S = (W @ np.swapaxes(W, -1, -2)) / math.sqrt(p)
    O_cols = softmax(S, axis=-2) @ W  # (..., K, N, p)
    H_cols = np.moveaxis(O_cols, -3, -2).reshape(*lead, N, K * p)
    np.testing.assert_allclose(column_softmax_heads(cache), H_cols, rtol=1e-12, atol=1e-14)
    O = softmax(S, axis=-1) @ W
    np.testing.assert_allclose(interleaved_heads(cache), O.reshape(*lead, N, K * p), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(output_with_heads(Y, cache, H_cols), H_cols @ W_out.T + b_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(output_with_heads(Y, cache, cache["H"]), Y)
