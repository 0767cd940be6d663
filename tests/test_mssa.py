"""MSSA: FD checks of every gradient in both forms, the causal mask, and the
shared query/key term (spec §2, §8.2)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicrate as mc
from minicrate.checks.strategies import attention_shapes, normal, seeds


def _inputs(xp, s, seed, tied):
    B, N, K, p, d = s["B"], s["N"], s["K"], s["p"], s["d"]
    return {
        "Z": normal(xp, (B, N, d), seed),
        "U": normal(xp, (K, d, p), seed + 1, scale=1 / math.sqrt(d)),
        "W_out": None if tied else normal(xp, (d, K * p), seed + 2),
        "b_out": None if tied else normal(xp, (d,), seed + 3),
    }


@given(s=attention_shapes(), seed=seeds, tied=st.booleans(), causal=st.booleans(),
       scale=st.sampled_from([None, 1.0, 0.3]))
def test_mssa_gradients_match_fd(xp, s, seed, tied, causal, scale):
    inputs = _inputs(xp, s, seed, tied)
    options = {"scale": scale, "causal": causal, "tied_scale": 0.7 if tied else 1.0}
    Y, cache = mc.mssa_forward(**inputs, **options)
    dY = normal(xp, Y.shape, seed + 4)
    dZ, grads = mc.mssa_backward(dY, cache)
    assert set(grads) == ({"U"} if tied else {"U", "W_out", "b_out"})
    mc.check_vjp(mc.mssa_forward, {**inputs, **options}, dY, {"Z": dZ, **grads}).raise_if_failed()


def test_attention_rows_sum_to_one_and_causal_mask(xp):
    inputs = _inputs(xp, {"B": 2, "N": 5, "K": 2, "p": 2, "d": 4}, 0, False)
    _, cache = mc.mssa_forward(**inputs, causal=True)
    A = mc.to_numpy(cache["A"])
    np.testing.assert_allclose(A.sum(-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(A, k=1) == 0)


def test_missing_transpose_term_is_caught():
    """Dropping S̄ᵀ (treating q and k as different tensors) gives a wrong dZ."""
    inputs = _inputs(np, {"B": 1, "N": 4, "K": 1, "p": 3, "d": 3}, 1, False)
    Y, cache = mc.mssa_forward(**inputs)
    dY = normal(np, Y.shape, 9)
    dZ, _ = mc.mssa_backward(dY, cache)
    W, A, s = cache["W"], cache["A"], cache["scale"]
    dO = (dY @ inputs["W_out"]).reshape(1, 4, 1, 3).transpose(0, 2, 1, 3)
    dA = dO @ np.swapaxes(W, -1, -2)
    dS = A * (dA - (A * dA).sum(-1, keepdims=True))
    dW_wrong = np.swapaxes(A, -1, -2) @ dO + s * dS @ W
    dZ_wrong = (dW_wrong @ np.swapaxes(inputs["U"], -1, -2)).sum(1)
    assert not mc.check_vjp(mc.mssa_forward, inputs, dY, {"Z": dZ_wrong}).passed
    assert mc.check_vjp(mc.mssa_forward, inputs, dY, {"Z": dZ}).passed


def test_official_scale_is_inverse_sqrt_p(xp):
    inputs = _inputs(xp, {"B": 1, "N": 3, "K": 2, "p": 4, "d": 8}, 2, False)
    _, cache = mc.mssa_forward(**inputs)
    assert cache["scale"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"U": np.ones((2, 5, 2))}, r"U must have shape \(K, d, p\) with d = 4"),
        ({"W_out": np.ones((4, 3))}, r"W_out must have shape \(d, K\*p\) = \(4, 4\)"),
        ({"b_out": np.ones(3)}, r"b_out must have trailing shape \(4\)"),
        ({"W_out": None}, "b_out must be None when W_out is None"),
        ({"Z": np.ones((3, 4), dtype=np.float32)}, "share one dtype"),
    ],
)
def test_mssa_bad_input(change, pattern):
    inputs = {**_inputs(np, {"B": 1, "N": 3, "K": 2, "p": 2, "d": 4}, 0, False), **change}
    with pytest.raises((ValueError, TypeError), match=pattern):
        mc.mssa_forward(**inputs)
