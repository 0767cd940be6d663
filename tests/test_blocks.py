"""FD checks of the small blocks: linear, softmax, LayerNorm, patch embedding,
class token + positions, loss (spec §8.4, §8.6).  float64, rtol 1e-6; a
correct backward shows ~1e-9."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minicrate as mc
from minicrate.checks.strategies import normal, seeds, small_dims


@given(shape=st.tuples(small_dims(1, 3), small_dims(1, 4)), n_out=small_dims(1, 4), bias=st.booleans(),
       seed=seeds)
def test_linear(xp, shape, n_out, bias, seed):
    X = normal(xp, (*shape, 3), seed)
    W = normal(xp, (n_out, 3), seed + 1)
    b = normal(xp, (n_out,), seed + 2) if bias else None
    dY = normal(xp, (*shape, n_out), seed + 3)
    Y, cache = mc.linear_forward(X, W, b)
    dX, g = mc.linear_backward(dY, cache)
    grads = {"X": dX, "W": g["W"], **({"b": g["b"]} if bias else {})}
    mc.check_vjp(mc.linear_forward, {"X": X, "W": W, "b": b}, dY, grads).raise_if_failed()


@given(N=small_dims(1, 5), seed=seeds)
def test_softmax_backward(xp, N, seed):
    S = normal(xp, (2, N, N), seed, scale=2.0)
    dA = normal(xp, (2, N, N), seed + 1)
    A = mc.softmax(S)
    mc.check_vjp(mc.softmax, {"S": S}, dA, {"S": mc.softmax_backward(dA, A)}).raise_if_failed()


def test_softmax_is_stable_for_huge_logits(xp):
    S = xp.asarray([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    A = mc.softmax(S)
    np.testing.assert_allclose(mc.to_numpy(A), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-12)


@given(B=small_dims(1, 3), d=small_dims(2, 6), seed=seeds)
def test_layernorm(xp, B, d, seed):
    X = normal(xp, (B, 3, d), seed)
    gamma = normal(xp, (d,), seed + 1)
    beta = normal(xp, (d,), seed + 2)
    dY = normal(xp, (B, 3, d), seed + 3)
    _, cache = mc.layernorm_forward(X, gamma, beta)
    dX, g = mc.layernorm_backward(dY, cache)
    mc.check_vjp(mc.layernorm_forward, {"X": X, "gamma": gamma, "beta": beta}, dY,
                 {"X": dX, "gamma": g["gamma"], "beta": g["beta"]}).raise_if_failed()


def test_layernorm_of_constant_token_is_finite(xp):
    X = xp.ones((2, 4), dtype=xp.float64) * 3.0
    Y, cache = mc.layernorm_forward(X, xp.ones(4, dtype=xp.float64), xp.zeros(4, dtype=xp.float64))
    dX, _ = mc.layernorm_backward(xp.ones((2, 4), dtype=xp.float64), cache)
    assert bool(xp.all(Y == 0)) and bool(xp.all(xp.isfinite(dX)))


def test_patchify_order_and_inverse(xp):
    images = xp.reshape(xp.arange(2 * 2 * 4 * 4, dtype=xp.float64), (2, 2, 4, 4))
    P = mc.patchify(images, 2)
    assert P.shape == (2, 4, 8)
    # first patch: rows 0-1, cols 0-1, channel fastest: (0,0,c0),(0,0,c1),(0,1,c0),...
    np.testing.assert_array_equal(mc.to_numpy(P[0, 0, :4]), [0, 16, 1, 17])
    back = mc.unpatchify(P, 2, 2, 4, 4)
    np.testing.assert_array_equal(mc.to_numpy(back), mc.to_numpy(images))


def test_patchify_rejects_indivisible(xp):
    with pytest.raises(ValueError, match="divisible by patch_size 3"):
        mc.patchify(xp.ones((1, 1, 8, 8), dtype=xp.float64), 3)


@given(seed=seeds, cls=st.booleans())
def test_patch_embedding_and_positions(xp, seed, cls):
    B, Np, P, d = 2, 3, 4, 5
    params = {"ln_in_gamma": normal(xp, (P,), seed), "ln_in_beta": normal(xp, (P,), seed + 1),
              "W": normal(xp, (d, P), seed + 2), "b": normal(xp, (d,), seed + 3),
              "ln_out_gamma": normal(xp, (d,), seed + 4), "ln_out_beta": normal(xp, (d,), seed + 5)}
    patches = normal(xp, (B, Np, P), seed + 6)
    cls_token = normal(xp, (d,), seed + 7) if cls else None
    pos = normal(xp, (Np + cls, d), seed + 8)
    dZ = normal(xp, (B, Np + cls, d), seed + 9)

    def f(patches, cls_token, pos_embedding, **p):
        T, _ = mc.patch_embed_forward(patches, p)
        return mc.add_cls_pos_forward(T, cls_token, pos_embedding)[0]

    T, c1 = mc.patch_embed_forward(patches, params)
    _, c2 = mc.add_cls_pos_forward(T, cls_token, pos)
    dT, g2 = mc.add_cls_pos_backward(dZ, c2)
    dP, g1 = mc.patch_embed_backward(dT, c1)
    grads = {"patches": dP, "pos_embedding": g2["pos_embedding"], **g1}
    if cls:
        grads["cls_token"] = g2["cls_token"]
    inputs = {"patches": patches, "cls_token": cls_token, "pos_embedding": pos, **params}
    mc.check_vjp(f, inputs, dZ, grads).raise_if_failed()


@given(B=small_dims(1, 4), C=small_dims(2, 5), smoothing=st.sampled_from([0.0, 0.1, 0.3]), seed=seeds)
def test_cross_entropy(xp, B, C, smoothing, seed):
    logits = normal(xp, (B, C), seed, scale=3.0)
    labels = xp.asarray(np.random.default_rng(seed).integers(0, C, B))
    loss, cache = mc.cross_entropy_forward(logits, labels, smoothing=smoothing)
    d = mc.cross_entropy_backward(1.0, cache)
    f = lambda logits: mc.cross_entropy_forward(logits, labels, smoothing=smoothing)[0]
    mc.check_vjp(f, {"logits": logits}, xp.asarray(1.0, dtype=xp.float64), {"logits": d}).raise_if_failed()


def test_cross_entropy_matches_definition():
    logits = np.array([[2.0, 0.0, -1.0]])
    p = np.exp(logits) / np.exp(logits).sum()
    q = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    loss, _ = mc.cross_entropy_forward(logits, np.array([0]), smoothing=0.1)
    assert float(loss) == pytest.approx(-(q * np.log(p)).sum())
