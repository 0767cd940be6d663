"""The paper's compression step ``mssa_step``: (1 − κβ)Z + κβ·MSSA(Z|U), issue 16.

It equals the formula written out here; it agrees with exact gradient descent
Z − κ∇R^c to first order in β (the difference falls like β² as ε grows); it runs on
every backend; and it names its bad arguments."""

import math

import numpy as np
import pytest

import minicrate as mc
from minicrate.checks.strategies import normal, orthonormal_bases, union_of_subspaces


def _written_out(Z, U, eps, kappa):
    """The step with every constant spelled out, in plain NumPy."""
    N, p = Z.shape[-2], U.shape[-1]
    beta = p / (N * eps**2)
    mssa = np.zeros_like(Z)
    for Uk in U:
        W = Z @ Uk  # (..., N, p): query, key and value
        S = W @ np.swapaxes(W, -1, -2)  # temperature 1
        A = np.exp(S - S.max(axis=-1, keepdims=True))
        A /= A.sum(axis=-1, keepdims=True)
        mssa += (A @ W) @ Uk.T
    mssa *= beta  # MSSA(Z | U) carries one β
    return (1 - kappa * beta) * Z + kappa * beta * mssa


def _tokens(K=4, d=16, p=4, n=6, seed=0):
    U = orthonormal_bases(np, K, d, p, seed=seed)  # K·p = d: the subspaces span R^d
    Z, _ = union_of_subspaces(np, U, n, seed=seed + 1, noise=0.3)
    return Z, U


@pytest.mark.parametrize("eps, kappa", [(0.5, 0.3), (1.0, 2.0), (3.0, 0.0)])
def test_equals_the_written_out_formula(eps, kappa):
    Z, U = _tokens()
    np.testing.assert_allclose(mc.mssa_step(Z, U, eps, kappa), _written_out(Z, U, eps, kappa),
                               rtol=1e-12, atol=1e-14)


def test_batched_tokens_are_stepped_one_sample_at_a_time():
    _, U = _tokens()
    Z = normal(np, (2, 3, 5, 16), 7, scale=0.25)
    out = mc.mssa_step(Z, U, 0.7, 1.5)
    assert out.shape == Z.shape
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(out[i, j], mc.mssa_step(Z[i, j], U, 0.7, 1.5), rtol=1e-12)


def test_agrees_with_gradient_descent_to_first_order_in_beta():
    """With κ fixed, Z − κ∇R^c = (1 − κβ)Z + κβ²Σ_k G_kW_kU_kᵀ + O(κβ³) and the MSSA step
    has softmax(G_k) in place of G_k: both leave Z by O(κβ), they differ by O(κβ²)."""
    Z, U = _tokens()
    N, p = Z.shape[-2], U.shape[-1]
    kappa = 0.2
    eps_grid = [4.0, 8.0, 16.0, 32.0]
    moved, differ, betas = [], [], []
    for eps in eps_grid:
        grad, _ = mc.compression_rate_grad(Z, U, eps)
        exact = Z - kappa * grad
        step = mc.mssa_step(Z, U, eps, kappa)
        moved.append(np.linalg.norm(step - Z))
        differ.append(np.linalg.norm(step - exact))
        betas.append(p / (N * eps**2))
    slope_moved = np.polyfit(np.log(betas), np.log(moved), 1)[0]
    slope_differ = np.polyfit(np.log(betas), np.log(differ), 1)[0]
    assert slope_moved == pytest.approx(1.0, abs=0.02)  # the step itself is first order in β
    assert slope_differ == pytest.approx(2.0, abs=0.05)  # the disagreement is second order
    ratios = [e / b**2 for e, b in zip(differ, betas, strict=True)]
    assert max(ratios) / min(ratios) < 1.1  # error / β² settles to a constant
    assert differ[-1] < 1e-3 * moved[-1]


def test_kappa_zero_is_the_identity_and_direction_is_attention_minus_tokens():
    Z, U = _tokens()
    np.testing.assert_array_equal(mc.mssa_step(Z, U, 1.0, 0.0), Z)
    N, p = Z.shape[-2], U.shape[-1]
    beta = p / N
    M, _ = mc.mssa_forward(Z, U, None, None, scale=1.0, tied_scale=beta)
    np.testing.assert_allclose(mc.mssa_step(Z, U, 1.0, 1.0) - Z, beta * (M - Z), rtol=1e-12, atol=1e-14)


def test_every_backend_matches_numpy(xp):
    Z, U = _tokens()
    want = mc.mssa_step(Z, U, 0.8, 1.3)
    got = mc.mssa_step(xp.asarray(Z), xp.asarray(U), 0.8, 1.3)
    assert type(got) is type(xp.asarray(Z))
    np.testing.assert_allclose(mc.to_numpy(got), want, rtol=1e-10, atol=1e-12)


def test_strict_backend_float32(strict):
    Z, U = _tokens()
    got = mc.mssa_step(strict.asarray(Z, dtype=strict.float32), strict.asarray(U, dtype=strict.float32),
                       1.0, 1.0)
    assert got.dtype == strict.float32
    np.testing.assert_allclose(mc.to_numpy(got), mc.mssa_step(Z, U, 1.0, 1.0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "change, error, pattern",
    [
        ({"eps": 0.0}, ValueError, r"eps must be finite and > 0, got 0\.0"),
        ({"eps": math.nan}, ValueError, r"eps must be finite and > 0"),
        ({"eps": "x"}, TypeError, r"eps must be a real number"),
        ({"kappa": -0.1}, ValueError, r"kappa must be finite and >= 0, got -0\.1"),
        ({"kappa": math.inf}, ValueError, r"kappa must be finite and >= 0"),
        ({"Z": np.ones(16)}, ValueError, r"Z must have at least 2 axes"),
        ({"Z": [[1.0] * 16]}, TypeError, r"Z must be an array"),
        ({"U": np.ones((4, 8, 4))}, ValueError, r"U must have shape \(K, d, p\) with d = 16"),
        ({"U": np.ones((16, 4))}, ValueError, r"U must have 3 axes"),
        ({"Z": np.ones((6, 16), dtype=np.float32)}, TypeError, "share one dtype"),
        ({"Z": np.full((6, 16), np.nan)}, ValueError, r"Z contains NaN or inf"),
    ],
)
def test_bad_arguments_are_named(change, error, pattern):
    Z, U = _tokens()
    args = {"Z": Z, "U": U, "eps": 1.0, "kappa": 0.5, **change}
    with pytest.raises(error, match=pattern):
        mc.mssa_step(**args)
