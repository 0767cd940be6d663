"""The exact GELU (erf against math.erf/erfc) and the transformer's MLP: FD checks on every backend."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicrate as mc
from minicrate.checks.strategies import away_from_zero, normal, seeds, small_dims
from minicrate.ops.gelu import erf, erfc, normal_cdf


def test_erf_and_erfc_match_math_to_rounding(xp):
    x = np.concatenate([np.linspace(-9, 9, 4001), [0.0, 1.0, -1.0, 3.0, -3.0, 1e-300, -1e-300, 40.0, -40.0]])
    X = mc.core.backend.host_to(xp, x)
    e = mc.to_numpy(erfc(X))
    ref = np.array([math.erfc(v) for v in x])
    assert np.max(np.abs(e - ref)[ref > 0] / ref[ref > 0]) < 5e-14 and np.all(e[ref == 0] == 0)
    f = mc.to_numpy(erf(X))
    ref = np.array([math.erf(v) for v in x])
    nz = ref != 0
    assert np.max(np.abs(f - ref)[nz] / np.abs(ref[nz])) < 4e-16
    np.testing.assert_allclose(mc.to_numpy(normal_cdf(X)), 0.5 * np.array([math.erfc(-v / math.sqrt(2)) for v in x]),
                               rtol=5e-14, atol=0)


def test_float32_erfc_is_accurate_to_float32():
    x = np.linspace(-9, 9, 4001).astype(np.float32)
    e = erfc(x)
    assert e.dtype == np.float32
    ref = np.array([math.erfc(v) for v in x.astype(np.float64)])
    assert np.max(np.abs(e - ref) / ref) < 1e-5


def test_gelu_values_and_derivative_fd(xp):
    x = np.array([-40.0, -6.0, -1.0, -0.3, 0.2, 1.0, 6.0, 40.0])
    X = mc.core.backend.host_to(xp, x)
    ref = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    np.testing.assert_allclose(mc.to_numpy(mc.gelu(X)), ref, rtol=2e-14, atol=1e-300)
    # FD where it resolves the derivative (in the far tails it is below the FD error)
    inner = mc.core.backend.host_to(xp, x[2:6])
    dY = normal(xp, (4,), 1)
    mc.check_vjp(mc.gelu, {"X": inner}, dY, {"X": mc.gelu_backward(dY, inner)}).raise_if_failed()
    deriv = [0.5 * math.erfc(-v / math.sqrt(2)) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi) for v in x]
    np.testing.assert_allclose(mc.to_numpy(mc.gelu_backward(xp.ones_like(X), X)), deriv, rtol=1e-13, atol=1e-300)


@given(B=small_dims(1, 2), N=small_dims(1, 4), d=small_dims(1, 4), h=small_dims(1, 6), seed=seeds,
       biases=st.booleans())
def test_mlp_gradients_match_fd(xp, B, N, d, h, seed, biases):
    inputs = {
        "X": away_from_zero(xp, (B, N, d), seed),
        "W1": normal(xp, (h, d), seed + 1),
        "b1": normal(xp, (h,), seed + 2) if biases else None,
        "W2": normal(xp, (d, h), seed + 3),
        "b2": normal(xp, (d,), seed + 4) if biases else None,
    }
    Y, cache = mc.mlp_forward(**inputs)
    assert Y.shape == (B, N, d)
    dY = normal(xp, Y.shape, seed + 5)
    dX, grads = mc.mlp_backward(dY, cache)
    assert set(grads) == {k for k in ("W1", "b1", "W2", "b2") if inputs[k] is not None}
    mc.check_vjp(mc.mlp_forward, inputs, dY, {"X": dX, **grads}).raise_if_failed()


def test_mlp_is_gelu_between_two_linear_maps():
    rng = np.random.default_rng(0)
    X, W1, b1, W2, b2 = (rng.standard_normal(s) for s in [(2, 3, 4), (6, 4), (6,), (4, 6), (4,)])
    Y, _ = mc.mlp_forward(X, W1, b1, W2, b2)
    A = X @ W1.T + b1
    H = A * 0.5 * np.vectorize(math.erfc)(-A / math.sqrt(2))
    np.testing.assert_allclose(Y, H @ W2.T + b2, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("change, pattern", [
    ({"W1": np.ones((6, 5))}, r"W1 must have shape \(h, d\) with d = 4"),
    ({"W2": np.ones((4, 5))}, r"W2 must have shape \(d, h\) = \(4, 6\)"),
    ({"b1": np.ones(5)}, r"b1 must have shape \(h,\) = \(6,\), got \(5,\)"),
    ({"b2": np.ones(5)}, r"b2 must have shape \(d,\) = \(4,\), got \(5,\)"),
    ({"X": np.ones((3, 4), dtype=np.float32)}, "share one dtype"),
])
def test_mlp_bad_input(change, pattern):
    inputs = {"X": np.ones((3, 4)), "W1": np.ones((6, 4)), "b1": np.ones(6), "W2": np.ones((4, 6)),
              "b2": np.ones(4), **change}
    with pytest.raises((ValueError, TypeError), match=pattern):
        mc.mlp_forward(**inputs)
