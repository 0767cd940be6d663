"""The pre-norm transformer block: FD checks of every parameter on every backend (biases or none,
causal or not, head width independent of d/heads, no output map), its two residuals, and errors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicrate as mc
from minicrate.checks.strategies import normal, seeds
from minicrate.layers.transformer import TRANSFORMER_KEYS, transformer_layer_shapes, value_bases

BLOCK_SWITCHES = st.fixed_dictionaries({
    "causal": st.booleans(), "scale": st.sampled_from([None, 1.0]), "biases": st.booleans(),
    "shape": st.sampled_from([(4, 2, 2, 6, True), (5, 2, 3, 3, True), (4, 1, 4, 5, False)]),
})


def block_params(xp, d, K, p, h, seed, *, project_out=True, biases=True):
    params = {}
    for i, (k, shape) in enumerate(transformer_layer_shapes(d, K, p, h, project_out=project_out).items()):
        if k.startswith("b") and not biases:
            continue
        scale = 1 / math.sqrt(shape[-1]) if k.startswith("W") else 0.3
        params[k] = normal(xp, shape, seed + i, scale=scale) + (1.0 if k.endswith("gamma") else 0.0)
    return params


@settings(max_examples=10)
@given(switches=BLOCK_SWITCHES, seed=seeds)
def test_block_gradients_match_fd(xp, switches, seed):
    d, K, p, h, out = switches["shape"]
    params = block_params(xp, d, K, p, h, seed, project_out=out, biases=switches["biases"])
    Z = normal(xp, (2, 3, d), seed + 20)
    options = {"heads": K, "causal": switches["causal"], "scale": switches["scale"]}
    Y, cache = mc.transformer_block_forward(Z, params, **options)
    dY = normal(xp, Y.shape, seed + 21)
    dZ, grads = mc.transformer_block_backward(dY, cache)
    assert set(grads) == set(params)

    def f(Z, **p):
        return mc.transformer_block_forward(Z, p, **options)[0]

    # Every entry on NumPy; a random sample of each argument elsewhere (slower backends).
    sample = None if mc.core.backend.backend_name(xp) == "numpy" else 4
    mc.check_vjp(f, {"Z": Z, **params}, dY, {"Z": dZ, **grads}, max_entries=sample).raise_if_failed()


def test_block_is_two_residual_branches():
    d, K, p, h = 4, 2, 2, 6
    params = block_params(np, d, K, p, h, 0)
    Z = normal(np, (2, 3, d), 1)
    Y, cache = mc.transformer_block_forward(Z, params, heads=K)
    X1, _ = mc.layernorm_forward(Z, params["ln1_gamma"], params["ln1_beta"])
    M, _ = mc.attention_forward(X1, params["W_qkv"], params["b_qkv"], params["W_out"], params["b_out"], heads=K)
    X2, _ = mc.layernorm_forward(Z + M, params["ln2_gamma"], params["ln2_beta"])
    F, _ = mc.mlp_forward(X2, params["W1"], params["b1"], params["W2"], params["b2"])
    np.testing.assert_allclose(Y, Z + M + F, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(cache["attn_input"], X1)
    # with both branches' output maps at zero, the block is the identity (its gradient too)
    zero = {**params, **{k: np.zeros_like(params[k]) for k in ("W_out", "b_out", "W2", "b2")}}
    Y0, c0 = mc.transformer_block_forward(Z, zero, heads=K)
    np.testing.assert_array_equal(Y0, Z)
    dY = normal(np, Z.shape, 2)
    np.testing.assert_array_equal(mc.transformer_block_backward(dY, c0)[0], dY)


def test_parameter_count_and_shapes():
    d, K, p, h = 8, 2, 4, 32
    shapes = transformer_layer_shapes(d, K, p, h)
    assert tuple(shapes) == TRANSFORMER_KEYS
    assert sum(math.prod(s) for s in shapes.values()) == 12 * d * d + 13 * d  # Kp = d, h = 4d
    assert "W_out" not in transformer_layer_shapes(4, 1, 4, 4, project_out=False)
    with pytest.raises(ValueError, match=r"project_out=False .* needs heads·head_dim = d = 8, got 2·2 = 4"):
        transformer_layer_shapes(8, 2, 2, 4, project_out=False)


def test_value_bases_read_the_value_rows():
    d, K, p = 5, 2, 3
    W = normal(np, (3 * K * p, d), 0)
    U = value_bases(W, K)
    assert U.shape == (K, d, p)
    X = normal(np, (4, d), 1)
    np.testing.assert_array_equal(np.concatenate([X @ U[k] for k in range(K)], axis=1), X @ W[2 * K * p:].T)


def test_missing_key_is_named():
    params = block_params(np, 4, 2, 2, 4, 0)
    del params["W1"]
    with pytest.raises(ValueError, match=r"params is missing \['W1'\]"):
        mc.transformer_block_forward(np.ones((1, 2, 4)), params, heads=2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("biases", [True, False])
def test_fused_block_equals_the_plain_block(xp, causal, biases):
    """The fused block (minicrate.layers.fused.transformer) against the reference, float64."""
    from minicrate.layers.fused import transformer as fused

    d, K, p, h = 6, 3, 2, 5
    params = block_params(xp, d, K, p, h, 4, biases=biases)
    Z = normal(xp, (3, 5, d), 7)
    Y, cache = mc.transformer_block_forward(Z, params, heads=K, causal=causal)
    Yf, cache_f = fused.block_forward(Z, params, heads=K, causal=causal)
    np.testing.assert_allclose(mc.to_numpy(Yf), mc.to_numpy(Y), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mc.to_numpy(cache_f["attn"]["A"]), mc.to_numpy(cache["attn"]["A"]), atol=1e-14)
    np.testing.assert_allclose(mc.to_numpy(cache_f["attn_input"]), mc.to_numpy(cache["attn_input"]), atol=1e-13)
    dY = normal(xp, Y.shape, 8)
    dZ, grads = mc.transformer_block_backward(dY, cache)
    dZf, grads_f = fused.block_backward(dY, cache_f)
    np.testing.assert_allclose(mc.to_numpy(dZf), mc.to_numpy(dZ), rtol=1e-11, atol=1e-12)
    assert set(grads_f) == set(grads)
    for k in grads:
        np.testing.assert_allclose(mc.to_numpy(grads_f[k]), mc.to_numpy(grads[k]), rtol=1e-11, atol=1e-12,
                                   err_msg=k)
    # backward can run twice on one cache (nothing cached is overwritten)
    np.testing.assert_array_equal(mc.to_numpy(fused.block_backward(dY, cache_f)[0]), mc.to_numpy(dZf))


def test_fused_block_float32_agrees_to_rounding():
    from minicrate.layers.fused import transformer as fused

    params = {k: v.astype(np.float32) for k, v in block_params(np, 8, 2, 4, 8, 1).items()}
    Z = normal(np, (4, 9, 8), 2, dtype="float32")
    Y, cache = mc.transformer_block_forward(Z, params, heads=2)
    Yf, cache_f = fused.block_forward(Z, params, heads=2)
    assert Yf.dtype == np.float32
    np.testing.assert_allclose(Yf, Y, rtol=1e-5, atol=1e-5)
    dY = normal(np, Y.shape, 3, dtype="float32")
    for k, g in mc.transformer_block_backward(dY, cache)[1].items():
        np.testing.assert_allclose(fused.block_backward(dY, cache_f)[1][k], g, rtol=1e-4, atol=1e-4, err_msg=k)
