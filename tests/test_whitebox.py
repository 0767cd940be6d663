"""The white-box claims, numerically (spec §2.2, §3.1).

In the paper form -- orthonormal, mutually orthogonal U_k spanning R^d, tied
output scaled by β, temperature 1, no LayerNorm -- on unit-norm tokens drawn
near a union of subspaces, the MSSA update direction β(MSSA(Z) − Z) points
along −∇R^c, and a small step lowers R^c (compared at equal token norms, since
R^c falls under plain shrinking too).
"""

import numpy as np
import pytest

import minicrate as mc
from minicrate.checks.strategies import orthonormal_bases, union_of_subspaces


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eps", [0.5, 1.0])
def test_mssa_direction_follows_negative_gradient(xp, seed, eps):
    U = orthonormal_bases(xp, 4, 32, 8, seed)
    Z, _ = union_of_subspaces(xp, mc.to_numpy(U), 16, seed + 1, noise=0.1)
    beta = 8 / (Z.shape[0] * eps**2)
    M, _ = mc.mssa_forward(Z, U, None, None, scale=1.0, tied_scale=beta)
    step = mc.to_numpy(M - Z)
    neg_grad = -mc.to_numpy(mc.compression_rate_grad(Z, U, eps)[0])
    cosine = (step * neg_grad).sum() / np.linalg.norm(step) / np.linalg.norm(neg_grad)
    assert cosine >= 0.9  # measured 0.96 (ε = 0.5) and 0.99 (ε = 1)


@pytest.mark.parametrize("seed", range(3))
def test_small_mssa_step_lowers_compression_rate(seed):
    eps, kappa = 0.5, 0.1
    U = orthonormal_bases(np, 4, 32, 8, seed)
    Z, _ = union_of_subspaces(np, U, 16, seed + 1, noise=0.1)
    beta = 8 / (Z.shape[0] * eps**2)
    M, _ = mc.mssa_forward(Z, U, None, None, scale=1.0, tied_scale=beta)
    Z_next = (1 - kappa * beta) * Z + kappa * beta * M  # spec §2.2 step 5
    Z_next /= np.linalg.norm(Z_next, axis=1, keepdims=True)
    assert mc.compression_rate(Z_next, U, eps) < mc.compression_rate(Z, U, eps)


def test_paper_form_switches_run_the_paper_layer():
    """tie_out + scale 1 + no LayerNorm: the layer is ISTA(Z + MSSA_paper(Z))."""
    rng = np.random.default_rng(0)
    d, K = 8, 2
    U = orthonormal_bases(np, K, d, 4, 1)
    D = np.eye(d) + 0.1 * rng.standard_normal((d, d))
    Z = rng.standard_normal((5, d))
    Y, _ = mc.encoder_layer_forward(Z, {"U": U, "D": D}, tie_out=True, scale=1.0, use_layernorm=False)
    M, _ = mc.mssa_forward(Z, U, None, None, scale=1.0)
    expected, _ = mc.ista_forward(Z + M, D)
    np.testing.assert_allclose(Y, expected, rtol=1e-12)
