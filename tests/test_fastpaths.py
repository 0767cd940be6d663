"""The fused encoder layer (minicrate.layers.fused.encoder) against the plain one (minicrate.layers.encoder).

The plain blocks are the reference (their gradients are checked by finite
differences in test_encoder.py); every fast path must give the same numbers
to float64 rounding, on every backend, in every switch it accepts.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicrate as mc
from minicrate.checks.strategies import normal, seeds
from minicrate.layers.fused import encoder as fast
from minicrate.layers.fused import kernels

SWITCHES = st.fixed_dictionaries({
    "scale": st.sampled_from([None, 1.0, 0.3]), "eta": st.sampled_from([0.1, 0.3]),
    "lam": st.sampled_from([0.1, 0.5]), "causal": st.booleans(),
    "ln_eps": st.sampled_from([1e-5, 1e-6]),
})


def _params(xp, d, K, seed, bias=True, dtype="float64"):
    """A layer with every parameter away from its initial value (γ ≠ 1, β ≠ 0)."""
    p = d // K
    params = {
        "U": normal(xp, (K, d, p), seed, scale=1 / math.sqrt(d), dtype=dtype),
        "W_out": normal(xp, (d, K * p), seed + 1, scale=0.5, dtype=dtype),
        "D": normal(xp, (d, d), seed + 2, scale=0.5, dtype=dtype),
    }
    if bias:
        params["b_out"] = normal(xp, (d,), seed + 3, dtype=dtype)
    for i, k in enumerate(("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")):
        shift = 1.0 if "gamma" in k else 0.0
        params[k] = normal(xp, (d,), seed + 4 + i, scale=0.5, dtype=dtype) + shift
    return params


def _assert_close(a, b, rtol, what):
    a, b = mc.to_numpy(a), mc.to_numpy(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    scale = max(float(np.max(np.abs(b))), 1e-30)
    err = float(np.max(np.abs(a - b))) / scale
    assert err <= rtol, f"{what}: max abs difference / max abs value = {err:.2e} > {rtol:.0e}"


def _both(Z, params, dY, switches):
    plain_Y, plain_cache = mc.encoder_layer_forward(Z, params, **switches)
    fast_Y, fast_cache = fast.layer_forward(Z, params, **switches)
    plain = (plain_Y, *mc.encoder_layer_backward(dY, plain_cache), plain_cache)
    fused = (fast_Y, *fast.layer_backward(dY, fast_cache), fast_cache)
    return plain, fused


@settings(max_examples=8)
@given(switches=SWITCHES, seed=seeds, shape=st.sampled_from([(2, 5), (3,), (2, 1)]),
       dims=st.sampled_from([(6, 2), (8, 4), (6, 1)]))
def test_fast_layer_equals_plain(xp, switches, seed, shape, dims):
    """Output, input gradient and every parameter gradient, batched or not, any K."""
    d, K = dims
    batch, N = shape[:-1], shape[-1] + 2
    params = _params(xp, d, K, seed, bias=seed % 2 == 0)
    Z = normal(xp, (*batch, N, d), seed + 20)
    dY = normal(xp, (*batch, N, d), seed + 21)
    (Y0, dZ0, g0, c0), (Y1, dZ1, g1, c1) = _both(Z, params, dY, switches)
    _assert_close(Y1, Y0, 1e-12, "Y")
    _assert_close(dZ1, dZ0, 1e-11, "dZ")
    assert set(g1) == set(params)
    for k in params:
        _assert_close(g1[k], g0[k], 1e-11, f"grad {k}")
    # the white-box read-outs the plain cache offers
    _assert_close(c1["mssa_input"], c0["mssa_input"], 1e-12, "mssa_input")
    _assert_close(c1["ista_output"], c0["ista_output"], 1e-12, "ista_output")
    _assert_close(c1["mssa"]["A"], c0["mssa"]["A"], 1e-12, "attention")


def test_fast_layer_float32_close_to_plain_float64(xp):
    """float32 (the training dtype) stays within float32 rounding of the float64 reference."""
    params64 = _params(xp, 16, 4, 3)
    params32 = {k: xp.astype(v, xp.float32) for k, v in params64.items()}
    Z = normal(xp, (4, 9, 16), 5)
    dY = normal(xp, (4, 9, 16), 6)
    Y0, c0 = mc.encoder_layer_forward(Z, params64)
    dZ0, g0 = mc.encoder_layer_backward(dY, c0)
    Y1, c1 = fast.layer_forward(xp.astype(Z, xp.float32), params32)
    dZ1, g1 = fast.layer_backward(xp.astype(dY, xp.float32), c1)
    assert Y1.dtype == xp.float32 and dZ1.dtype == xp.float32
    _assert_close(Y1, Y0, 1e-5, "Y")
    _assert_close(dZ1, dZ0, 1e-4, "dZ")
    for k in params64:
        assert g1[k].dtype == xp.float32
        _assert_close(g1[k], g0[k], 1e-4, f"grad {k}")


def test_fast_backward_leaves_cache_and_inputs_intact(xp):
    """Nothing in place on inputs, parameters or the cache: a second backward agrees."""
    params = _params(xp, 8, 2, 7)
    Z = normal(xp, (2, 5, 8), 1)
    dY = normal(xp, (2, 5, 8), 2)
    Z_host, dY_host = mc.to_numpy(Z).copy(), mc.to_numpy(dY).copy()
    host = {k: mc.to_numpy(v).copy() for k, v in params.items()}
    _, cache = fast.layer_forward(Z, params)
    dZ_a, g_a = fast.layer_backward(dY, cache)
    dZ_b, g_b = fast.layer_backward(dY, cache)
    _assert_close(dZ_b, dZ_a, 0.0, "dZ twice")
    for k in g_a:
        _assert_close(g_b[k], g_a[k], 0.0, f"grad {k} twice")
    np.testing.assert_array_equal(mc.to_numpy(Z), Z_host)
    np.testing.assert_array_equal(mc.to_numpy(dY), dY_host)
    for k, v in params.items():
        np.testing.assert_array_equal(mc.to_numpy(v), host[k])


def test_fast_layer_gradients_match_fd():
    """An independent check of the fused backward (float64 central differences)."""
    xp = mc.get_backend("numpy")
    params = _params(xp, 6, 2, 11)
    Z = normal(xp, (2, 4, 6), 12)
    Y, cache = fast.layer_forward(Z, params)
    dY = normal(xp, Y.shape, 13)
    dZ, grads = fast.layer_backward(dY, cache)

    def f(Z, **p):
        return fast.layer_forward(Z, p)[0]

    mc.check_vjp(f, {"Z": Z, **params}, dY, {"Z": dZ, **grads}).raise_if_failed()


def test_fast_softmax_is_transposed_row_softmax(xp):
    """The stored attention is Aᵀ: its columns sum to one, A = Atᵀ equals the row softmax."""
    params = _params(xp, 8, 2, 4)
    Z = normal(xp, (3, 6, 8), 9)
    _, cache = fast.layer_forward(Z, params, causal=True)
    At = mc.to_numpy(cache["At"])
    np.testing.assert_allclose(At.sum(axis=-2), 1.0, rtol=1e-12)
    assert np.all(np.tril(At[0], k=-1) == 0.0), "causal: Aᵀ is upper triangular (row i sees j <= i)"


@pytest.mark.parametrize("switch", [{"tie_out": True}, {"use_layernorm": False}])
def test_fast_layer_refuses_other_forms(switch):
    xp = mc.get_backend("numpy")
    assert not fast.supports(**switch)
    with pytest.raises(ValueError, match="official form"):
        fast.layer_forward(normal(xp, (2, 3, 4), 0), _params(xp, 4, 2, 0), **switch)


@pytest.mark.parametrize("workers", [2, 3])
def test_batch_split_equals_one_chunk(workers):
    """minicrate.training.parallel.threads: chunks of the batch on threads give the one-chunk loss and gradients."""
    from minicrate.training.parallel import threads as parallel

    config = mc.CRATEConfig(image_size=8, patch_size=2, dim=16, depth=2, heads=2, num_classes=5,
                            dtype="float64")
    params = mc.init_params(config, seed=2)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((7, 1, 8, 8))
    labels = rng.integers(0, 5, size=7)
    loss, grads, logits = mc.loss_and_grads(params, images, labels, config)
    loss_p, grads_p, logits_p = parallel.loss_and_grads(params, images, labels, config,
                                                        workers=workers)
    assert abs(loss_p - loss) <= 1e-13 * abs(loss)
    _assert_close(logits_p, logits, 1e-13, "logits")
    for k in grads:
        _assert_close(grads_p[k], grads[k], 1e-12, f"grad {k}")
    logits_f, caches = parallel.forward(params, images, config, workers=workers)
    _assert_close(logits_f, logits, 1e-13, "forward logits")
    assert len(caches) == workers


def test_chunks_cover_the_batch():
    from minicrate.training.parallel.threads import chunks

    for n in (1, 2, 7, 64):
        for w in (1, 2, 3, 8):
            parts = chunks(n, w)
            assert [i for s in parts for i in range(s.start, s.stop)] == list(range(n))
            sizes = [s.stop - s.start for s in parts]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("causal", [False, True])
def test_fast_softmax_block_shift_and_its_fallback(xp, dtype, causal, monkeypatch):
    """The fused softmax shifts each N×N block by its maximum; when a row lies so far below
    it that its sum would underflow, it redoes the call with row maxima (as it always does
    with the causal mask, so that earlier outputs never depend on later tokens, even in the
    last bit).  Both give the row softmax to rounding."""
    calls = []
    real = kernels.softmax_transposed_rowmax
    monkeypatch.setattr(kernels, "softmax_transposed_rowmax", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(3)
    W = rng.standard_normal((2, 3, 6, 4))
    far = W.copy()
    far[0, 1, 2] *= 40.0  # one token 40x longer: its score dwarfs the rest of block (0, 1)
    for tokens, expect_fallback in ((W, False), (far, True)):
        S = np.einsum("...ip,...jp->...ij", tokens, tokens)
        # reference: each row's softmax (row i sees every j, or j <= i when causal)
        seen = np.where(np.triu(np.ones((6, 6), bool), k=1), -np.inf, S) if causal else S
        A_ref = np.exp(seen - seen.max(-1, keepdims=True))
        A_ref /= A_ref.sum(-1, keepdims=True)
        calls.clear()
        At = kernels.softmax_transposed(xp, mc.core.backend.host_to(xp, S, dtype), causal)
        assert bool(calls) == (expect_fallback or causal)
        A = mc.to_numpy(At).swapaxes(-1, -2)
        assert np.all(np.isfinite(A))
        np.testing.assert_allclose(A, A_ref, rtol=2e-5 if dtype == "float32" else 1e-12, atol=1e-30)
