"""Standard multi-head self-attention: FD checks of every gradient (with and without biases,
output map and causal mask), the timm layout, and the named errors."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicrate as mc
from minicrate.checks.strategies import normal, seeds, small_dims

H = 3e-3  # FD step: the truncation error of the softmax's higher derivatives stays ~1e-9 (1e-3 adds round-off)


@st.composite
def shapes(draw):
    """B, N, K, p and a width d that need not be K·p."""
    K, p = draw(small_dims(1, 3)), draw(small_dims(1, 3))
    return {"B": draw(small_dims(1, 2)), "N": draw(small_dims(1, 4)), "K": K, "p": p,
            "d": draw(small_dims(1, 5))}


def _inputs(xp, s, seed, biases=True, out=True):
    B, N, K, p, d = s["B"], s["N"], s["K"], s["p"], s["d"]
    if not out:
        d = K * p
    return {
        "X": normal(xp, (B, N, d), seed),
        "W_qkv": normal(xp, (3 * K * p, d), seed + 1, scale=1 / math.sqrt(d)),
        "b_qkv": normal(xp, (3 * K * p,), seed + 2, scale=0.3) if biases else None,
        "W_out": normal(xp, (d, K * p), seed + 3) if out else None,
        "b_out": normal(xp, (d,), seed + 4) if biases and out else None,
    }


@given(s=shapes(), seed=seeds, biases=st.booleans(), out=st.booleans(), causal=st.booleans(),
       scale=st.sampled_from([None, 1.0]))
def test_attention_gradients_match_fd(xp, s, seed, biases, out, causal, scale):
    inputs = _inputs(xp, s, seed, biases, out)
    options = {"heads": s["K"], "causal": causal, "scale": scale}
    Y, cache = mc.attention_forward(**inputs, **options)
    dY = normal(xp, Y.shape, seed + 5)
    dX, grads = mc.attention_backward(dY, cache)
    assert set(grads) == {k for k in ("W_qkv", "b_qkv", "W_out", "b_out") if inputs[k] is not None}
    mc.check_vjp(mc.attention_forward, {**inputs, **options}, dY, {"X": dX, **grads}, h=H).raise_if_failed()


def test_matches_a_direct_per_head_computation():
    """The timm layout: rows of W_qkv are q; k; v, each in K blocks of p; scale p^-1/2."""
    K, p, d, N = 2, 3, 4, 5
    inputs = _inputs(np, {"B": 1, "N": N, "K": K, "p": p, "d": d}, 1)
    Y, cache = mc.attention_forward(**inputs, heads=K)
    X = inputs["X"][0]
    qkv = X @ inputs["W_qkv"].T + inputs["b_qkv"]
    heads = []
    for k in range(K):
        q, kk, v = (qkv[:, i * K * p + k * p: i * K * p + (k + 1) * p] for i in range(3))
        S = q @ kk.T / math.sqrt(p)
        A = np.exp(S - S.max(1, keepdims=True))
        heads.append((A / A.sum(1, keepdims=True)) @ v)
    expected = np.concatenate(heads, axis=1) @ inputs["W_out"].T + inputs["b_out"]
    np.testing.assert_allclose(Y[0], expected, rtol=1e-12, atol=1e-12)
    assert cache["scale"] == pytest.approx(1 / math.sqrt(p))


def test_causal_mask_and_rows_sum_to_one(xp):
    inputs = _inputs(xp, {"B": 2, "N": 5, "K": 2, "p": 2, "d": 3}, 0)
    Y, cache = mc.attention_forward(**inputs, heads=2, causal=True)
    A = mc.to_numpy(cache["A"])
    np.testing.assert_allclose(A.sum(-1), 1.0, rtol=1e-12)
    assert np.all(np.triu(A, k=1) == 0)
    # token t's output does not depend on later tokens
    X2 = mc.to_numpy(inputs["X"]).copy()
    X2[:, 3:] += 1.0
    Y2, _ = mc.attention_forward(**{**inputs, "X": mc.core.backend.host_to(xp, X2)}, heads=2, causal=True)
    np.testing.assert_allclose(mc.to_numpy(Y)[:, :3], mc.to_numpy(Y2)[:, :3], rtol=1e-12, atol=1e-12)


def test_key_bias_gets_no_gradient():
    """Adding b_k shifts every score of a row by q·b_k: softmax ignores it, so its gradient is 0."""
    inputs = _inputs(np, {"B": 2, "N": 4, "K": 2, "p": 3, "d": 5}, 3)
    Y, cache = mc.attention_forward(**inputs, heads=2)
    _, grads = mc.attention_backward(normal(np, Y.shape, 4), cache)
    db = grads["b_qkv"]
    assert np.abs(db[6:12]).max() < 1e-13 < np.abs(db[:6]).max()


def test_no_output_map_is_the_concatenated_heads():
    inputs = _inputs(np, {"B": 1, "N": 3, "K": 1, "p": 4, "d": 4}, 2, out=False)
    Y, cache = mc.attention_forward(**inputs, heads=1)
    np.testing.assert_array_equal(Y, cache["H"])


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"W_qkv": np.ones((12, 5))}, r"W_qkv must have shape \(3·heads·p, d\) = \(3·2·p, 4\)"),
        ({"W_qkv": np.ones((10, 4))}, r"W_qkv must have shape \(3·heads·p, d\)"),
        ({"b_qkv": np.ones(11)}, r"b_qkv must have shape \(3·heads·p,\) = \(12,\), got \(11,\)"),
        ({"W_out": np.ones((4, 3))}, r"W_out must have shape \(d, heads·p\) = \(4, 4\)"),
        ({"b_out": np.ones(3)}, r"b_out must have shape \(d,\) = \(4,\), got \(3,\)"),
        ({"W_out": None}, "b_out must be None when W_out is None"),
        ({"X": np.ones((3, 4), dtype=np.float32)}, "share one dtype"),
        ({"heads": 0}, "heads must be >= 1"),
    ],
)
def test_attention_bad_input(change, pattern):
    inputs = {**_inputs(np, {"B": 1, "N": 3, "K": 2, "p": 2, "d": 4}, 0), "heads": 2, **change}
    with pytest.raises((ValueError, TypeError), match=pattern):
        mc.attention_forward(**inputs)


def test_no_output_map_needs_heads_times_p_equal_d():
    inputs = {**_inputs(np, {"B": 1, "N": 3, "K": 2, "p": 2, "d": 3}, 0), "W_out": None, "b_out": None}
    with pytest.raises(ValueError, match=r"W_out=None \(no output projection\) needs heads·p = d = 3"):
        mc.attention_forward(**inputs, heads=2)
