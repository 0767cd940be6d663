"""The ISTA, LayerNorm and encoder-layer mistake builders (minicrate.grading.mistakes.ista,
.layernorm, .layer): each builder that is more than a plain library call is checked against the
slip it names, written out here as a small formula; the layer compositions equal the library's
layer when nothing is changed."""

import math

import numpy as np
import pytest

from minicrate.grading.mistakes import ista as wi
from minicrate.grading.mistakes import layer as wl
from minicrate.grading.mistakes import layernorm as wln
from minicrate.grading.tasks.ch07 import build_layer
from minicrate.layers.encoder import encoder_layer_backward, encoder_layer_forward
from minicrate.layers.ista import ista_backward, ista_forward
from minicrate.layers.mssa import mssa_backward, mssa_forward
from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

LEADS = [(), (3,), (2, 3)]


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# ISTA
# --------------------------------------------------------------------------


def _ista_setup(lead, seed=0, d=4, N=3, eta=0.1, lam=0.5):
    r = np.random.default_rng(seed)
    X = r.standard_normal((*lead, N, d))
    D = r.standard_normal((d, d)) / math.sqrt(d)
    dY = r.standard_normal(X.shape)
    Q = X + eta * (X @ D - X @ D.T @ D)  # the step's linear part, written out
    return X, D, dY, eta, lam, Q


@pytest.mark.task6_1
@pytest.mark.parametrize("lead", LEADS)
def test_ista_linear_part_and_preactivation(lead):
    X, D, _, eta, lam, Q = _ista_setup(lead)
    _close(wi.ista_linear(X, D, eta), Q)
    P = wi.ista_preactivation(X, D, eta, lam)
    _close(P, Q - eta * lam)
    _close(np.maximum(P, 0.0), ista_forward(X, D, eta=eta, lam=lam)[0])


@pytest.mark.task6_1
@pytest.mark.parametrize("lead", LEADS)
def test_wrong_ista_forwards_are_the_slips_they_name(lead):
    X, D, _, eta, lam, Q = _ista_setup(lead, seed=1)
    relu = lambda x: np.maximum(x, 0.0)
    _close(wi.plus_threshold(X, D, eta, lam), relu(Q + eta * lam))
    _close(wi.swapped_dictionary(X, D, eta, lam), relu(X + eta * (X @ D.T - X @ D @ D.T) - eta * lam))
    _close(wi.two_sided_threshold(X, D, eta, lam), np.sign(Q) * relu(np.abs(Q) - eta * lam))
    _close(wi.without_warm_start(X, D, eta, lam), relu(eta * (X @ D - X @ D.T @ D) - eta * lam))
    _close(wi.threshold_without_eta(X, D, eta, lam), relu(Q - lam))


@pytest.mark.task6_2
@pytest.mark.parametrize("lead", LEADS)
def test_wrong_ista_backwards_are_the_slips_they_name(lead):
    X, D, dY, eta, lam, Q = _ista_setup(lead, seed=2)
    _, cache = ista_forward(X, D, eta=eta, lam=lam)
    dP = dY * (Q - eta * lam > 0)
    d = X.shape[-1]
    G = X.reshape(-1, d).T @ dP.reshape(-1, d)
    _close(wi.dD_without_transposed_term(dY, cache), eta * (G - D @ G))
    _close(wi.dX_by_the_forward_map(dY, cache), dP + eta * (dP @ D - dP @ D.T @ D))
    dX, grads = wi.ista_backward_without_mask(dY, cache)
    Gu = X.reshape(-1, d).T @ dY.reshape(-1, d)
    _close(dX, dY + eta * (dY @ D.T - dY @ D.T @ D))
    _close(grads["D"], eta * (Gu - D @ (Gu + Gu.T)))
    assert not np.all(cache["active"]), "the case should have inactive entries"


# --------------------------------------------------------------------------
# LayerNorm
# --------------------------------------------------------------------------


def _ln_setup(lead, seed=0, d=5, eps=0.1):
    r = np.random.default_rng(seed)
    X = 2.0 * r.standard_normal((*lead, d)) + r.standard_normal((*lead, 1))
    gamma = 1.0 + 0.3 * r.standard_normal(d)
    beta = 0.3 * r.standard_normal(d)
    dY = r.standard_normal(X.shape)
    return X, gamma, beta, dY, eps


@pytest.mark.task7_1
@pytest.mark.parametrize("lead", LEADS)
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_wrong_layernorm_forwards_are_the_slips_they_name(lead, eps):
    X, gamma, beta, _, eps = _ln_setup(lead, seed=3, eps=eps)
    mu = X.mean(-1, keepdims=True)
    var = X.var(-1, keepdims=True)
    _close(wln.unbiased_variance(X, gamma, beta, eps),
           gamma * (X - mu) / np.sqrt(X.var(-1, ddof=1, keepdims=True) + eps) + beta)
    _close(wln.eps_outside_the_root(X, gamma, beta, eps), gamma * (X - mu) / (np.sqrt(var) + eps) + beta)
    _close(wln.without_affine(X, gamma, beta, eps), (X - mu) / np.sqrt(var + eps))
    _close(wln.affine_swapped(X, gamma, beta, eps), beta * (X - mu) / np.sqrt(var + eps) + gamma)
    if lead:  # tokens to normalise over
        mu_t, var_t = X.mean(-2, keepdims=True), X.var(-2, keepdims=True)
        _close(wln.normalised_over_tokens(X, gamma, beta, eps), gamma * (X - mu_t) / np.sqrt(var_t + eps) + beta)
    else:
        with pytest.raises(IndexError):
            wln.normalised_over_tokens(X, gamma, beta, eps)


def test_unbiased_variance_of_one_feature_is_nan():
    assert np.all(np.isnan(wln.unbiased_variance(np.ones((3, 1)), np.ones(1), np.zeros(1), 1e-5)))


@pytest.mark.task7_2
@pytest.mark.parametrize("lead", LEADS)
def test_wrong_layernorm_backwards_are_the_slips_they_name(lead):
    X, gamma, beta, dY, eps = _ln_setup(lead, seed=4)
    _, cache = layernorm_forward(X, gamma, beta, eps=eps)
    inv = 1.0 / np.sqrt(X.var(-1, keepdims=True) + eps)
    X_hat = (X - X.mean(-1, keepdims=True)) * inv
    g = gamma * dY
    mean = lambda a: a.mean(-1, keepdims=True)
    _close(wln.dX_without_xhat_term(dY, cache), inv * (g - mean(g)))
    _close(wln.dX_without_mean_term(dY, cache), inv * (g - X_hat * mean(g * X_hat)))
    _close(wln.dX_without_gamma(dY, cache), inv * (dY - mean(dY) - X_hat * mean(dY * X_hat)))
    d = X.shape[-1]
    averaged = wln.grads_averaged(dY, cache)
    _close(averaged["gamma"], (dY * X_hat).reshape(-1, d).mean(0))
    _close(averaged["beta"], dY.reshape(-1, d).mean(0))
    per_token = wln.grads_per_token(dY, cache)
    _close(per_token["gamma"], dY * X_hat)
    _close(per_token["beta"], dY)


# --------------------------------------------------------------------------
# The encoder layer
# --------------------------------------------------------------------------


def _layer_setup(lead, seed=0, N=3, K=2, p=2):
    """An encoder-layer case as the grader builds it (task 7.3's builder: ISTA away from its kink)."""
    case = build_layer({"B": lead[0] if lead else 0, "N": N, "K": K, "p": p, "seed": seed}, np)
    Z, params = case.args
    return Z, params, case.dout


def _ln(X, params, which):
    return layernorm_forward(X, params[f"{which}_gamma"], params[f"{which}_beta"])[0]


@pytest.mark.task7_3
@pytest.mark.parametrize("lead", [(), (2,)])
def test_layer_forward_variant_defaults_equal_the_library_and_switches_rewire(lead):
    Z, params, _ = _layer_setup(lead, seed=5)
    np.testing.assert_array_equal(wl.layer_forward_variant(Z, params), encoder_layer_forward(Z, params)[0])
    X1 = encoder_layer_forward(Z, params)[1]["mssa_input"]  # LN₁(Z)
    M = mssa_forward(X1, params["U"], params["W_out"], params["b_out"])[0]
    ista = lambda X: ista_forward(X, params["D"])[0]
    _close(wl.layer_forward_variant(Z, params, residual="none"), ista(_ln(M, params, "ln2")))
    _close(wl.layer_forward_variant(Z, params, residual="normalised"), ista(_ln(X1 + M, params, "ln2")))
    _close(wl.layer_forward_variant(Z, params, ln2=False), ista(Z + M))
    _close(wl.layer_forward_variant(Z, params, ista_residual=True), ista(_ln(Z + M, params, "ln2")) + Z + M)
    swapped = {**params, "ln1_gamma": params["ln2_gamma"], "ln2_gamma": params["ln1_gamma"],
               "ln1_beta": params["ln2_beta"], "ln2_beta": params["ln1_beta"]}
    _close(wl.layernorms_swapped(Z, params), encoder_layer_forward(Z, swapped)[0])
    with pytest.raises(ValueError, match="residual"):
        wl.layer_forward_variant(Z, params, residual="post")


@pytest.mark.task7_4
@pytest.mark.parametrize("lead", [(), (2,)])
def test_layer_backward_variant_defaults_equal_the_library(lead):
    Z, params, dY = _layer_setup(lead, seed=6)
    _, cache = encoder_layer_forward(Z, params)
    dZ, grads = encoder_layer_backward(dY, cache)
    dZ_v, grads_v = wl.layer_backward_variant(dY, cache)
    np.testing.assert_array_equal(dZ_v, dZ)
    assert grads_v.keys() == grads.keys()
    for k in grads:
        np.testing.assert_array_equal(grads_v[k], grads[k])


@pytest.mark.task7_4
def test_layer_backward_slips():
    Z, params, dY = _layer_setup((2,), seed=7)
    _, cache = encoder_layer_forward(Z, params)
    dZ, grads = encoder_layer_backward(dY, cache)
    dX2 = ista_backward(dY, cache["ista"])[0]
    dZ_half = layernorm_backward(dX2, cache["ln2"])[0]
    _close(wl.half_step_gradient(dY, cache), dZ_half)
    _close(wl.dZ_without_skip(dY, cache), dZ - dZ_half)
    # without LN₂ in the backward: the branch sees ISTA's input gradient; the ISTA and LN₂ gradients are unchanged
    dZ_v, grads_v = wl.layer_backward_variant(dY, cache, through_ln2=False)
    dX1 = mssa_backward(dX2, cache["mssa"])[0]
    _close(dZ_v, dX2 + layernorm_backward(dX1, cache["ln1"])[0])
    for k in ("D", "ln2_gamma", "ln2_beta"):
        np.testing.assert_array_equal(grads_v[k], grads[k])
    # a wrong block backward is used in its place, and the rest of the chain runs on its output
    dZ_m, grads_m = wl.layer_backward_variant(dY, cache, ista_bwd=wi.ista_backward_without_mask)
    dX2_m, g_m = wi.ista_backward_without_mask(dY, cache["ista"])
    dZ_half_m = layernorm_backward(dX2_m, cache["ln2"])[0]
    _close(dZ_m, dZ_half_m + layernorm_backward(mssa_backward(dZ_half_m, cache["mssa"])[0], cache["ln1"])[0])
    _close(grads_m["D"], g_m["D"])
    assert not np.allclose(dZ_m, dZ)
