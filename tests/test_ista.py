"""ISTA: FD checks (inputs kept away from the ReLU kink), and ISTA as a
descent step on the non-negative LASSO objective (spec §3, §8.3)."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import minicrate as mc
from minicrate.checks.strategies import normal, seeds, small_dims

MARGIN = 0.05  # pre-activations this far from 0; the FD stencil reaches 2h = 2e-3


def _pre_activation(X, D, eta, lam):
    return X + eta * (X @ D - X @ D.T @ D) - eta * lam


@given(B=small_dims(1, 2), N=small_dims(1, 4), d=small_dims(1, 5), seed=seeds,
       eta=st.sampled_from([0.1, 0.5]), lam=st.sampled_from([0.0, 0.1, 1.0]))
def test_ista_gradients_match_fd(xp, B, N, d, seed, eta, lam):
    X_host = np.random.default_rng(seed).standard_normal((B, N, d))
    D_host = np.random.default_rng(seed + 1).standard_normal((d, d)) / np.sqrt(d)
    assume(np.min(np.abs(_pre_activation(X_host, D_host, eta, lam))) > MARGIN)
    X, D = xp.asarray(X_host), xp.asarray(D_host)
    Y, cache = mc.ista_forward(X, D, eta=eta, lam=lam)
    dY = normal(xp, Y.shape, seed + 2)
    dX, g = mc.ista_backward(dY, cache)
    mc.check_vjp(mc.ista_forward, {"X": X, "D": D, "eta": eta, "lam": lam}, dY,
                 {"X": dX, "D": g["D"]}).raise_if_failed()


def test_ista_matches_official_three_product_form(xp):
    rng = np.random.default_rng(0)
    X, D = rng.standard_normal((3, 5, 4)), rng.standard_normal((4, 4))
    Y, _ = mc.ista_forward(xp.asarray(X), xp.asarray(D), eta=0.1, lam=0.1)
    np.testing.assert_allclose(mc.to_numpy(Y), np.maximum(_pre_activation(X, D, 0.1, 0.1), 0), rtol=1e-12)


@given(seed=seeds, d=small_dims(2, 6), lam=st.sampled_from([0.01, 0.1, 0.5]))
def test_one_step_does_not_increase_lasso_objective(seed, d, lam):
    """From a non-negative start A₀ = X, a prox-gradient step with η <= 1/‖D‖²
    cannot increase λ‖A‖₁ + ½‖X − ADᵀ‖² (spec §3.1; standard ISTA descent)."""
    rng = np.random.default_rng(seed)
    X = np.abs(rng.standard_normal((6, d)))
    D = rng.standard_normal((d, d))
    eta = 1.0 / np.linalg.norm(D, 2) ** 2
    Y, _ = mc.ista_forward(X, D, eta=eta, lam=lam)
    assert mc.lasso_objective(Y, X, D, lam) <= mc.lasso_objective(X, X, D, lam) + 1e-12


def test_ista_output_is_non_negative_and_sparse():
    rng = np.random.default_rng(1)
    Y, _ = mc.ista_forward(rng.standard_normal((50, 8)), rng.standard_normal((8, 8)) / 3)
    assert Y.min() >= 0 and 0.2 < (Y > 0).mean() < 0.8


@pytest.mark.parametrize("kw, pattern", [({"eta": -0.1}, "eta must be finite and >= 0"),
                                         ({"lam": float("nan")}, "lam must be finite")])
def test_ista_bad_hyperparameters(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        mc.ista_forward(np.ones((2, 3)), np.eye(3), **kw)


def test_ista_bad_dictionary_shape():
    with pytest.raises(ValueError, match=r"D must have shape \(d, d\) = \(3, 3\)"):
        mc.ista_forward(np.ones((2, 3)), np.eye(4))
