"""Decoder layer (spec §5.2, §8.5): FD checks of every gradient in the three
forms, and the two senses in which it inverts the encoder layer (spec §5.1):
the O(κ²) MSSA round trip and synthesis inverting ISTA up to the threshold."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicrate as mc
from minicrate.checks.strategies import attention_shapes, normal, orthonormal_bases, seeds, union_of_subspaces
from minicrate.layers import decoder as dec
from minicrate.layers.fused import decoder as fused_decoder
from minicrate.measure import roundtrip

FORMS = {
    "released": {},
    "tied_output": {"tie_out": True, "tied_scale": 0.7},
    "paper": {**dec.PAPER_FORM, "tied_scale": 0.5},
}


def _layer(xp, s, seed, form):
    d, K, p = s["d"], s["K"], s["p"]
    params = {"E": normal(xp, (d, d), seed, scale=1 / math.sqrt(d)),
              "U": normal(xp, (K, d, p), seed + 1, scale=1 / math.sqrt(d))}
    if not FORMS[form].get("tie_out"):
        params["W_out"] = normal(xp, (d, K * p), seed + 2, scale=1 / math.sqrt(d))
        params["b_out"] = normal(xp, (d,), seed + 3, scale=0.1)
    if FORMS[form].get("use_layernorm", True):
        for i, name in enumerate(("ln1", "ln2")):
            params[f"{name}_gamma"] = 1.0 + normal(xp, (d,), seed + 4 + i, scale=0.2)
            params[f"{name}_beta"] = normal(xp, (d,), seed + 6 + i, scale=0.2)
    return params


def _as_kwargs(form):
    """decoder_layer_forward with every parameter as a top-level argument (for check_vjp)."""
    options = FORMS[form]

    def f(Z, **params):
        return dec.decoder_layer_forward(Z, params, **options)

    return f


# d >= 4: LayerNorm of 2-3 features is badly conditioned (its variance can be ~h²).
@given(s=attention_shapes(max_tokens=4).filter(lambda s: s["d"] >= 4), seed=seeds,
       form=st.sampled_from(sorted(FORMS)))
@settings(max_examples=6)
def test_decoder_layer_gradients_match_fd(xp, s, seed, form):
    params = _layer(xp, s, seed, form)
    Z = normal(xp, (s["B"], s["N"], s["d"]), seed + 10)
    Y, cache = dec.decoder_layer_forward(Z, params, **FORMS[form])
    dY = normal(xp, Y.shape, seed + 11)
    dZ, grads = dec.decoder_layer_backward(dY, cache)
    assert set(grads) == set(params)
    mc.check_vjp(_as_kwargs(form), {"Z": Z, **params}, dY, {"Z": dZ, **grads},
                 max_entries=10, seed=seed % 1000).raise_if_failed()


def test_decoder_layer_matches_official_code_form():
    """x ↦ F.linear(LN₁x, E) ↦ y − Attention(LN₂y), written out with NumPy."""
    rng = np.random.default_rng(0)
    B, N, K, p = 2, 5, 2, 3
    d = K * p
    params = {"E": rng.standard_normal((d, d)), "U": rng.standard_normal((K, d, p)),
              "W_out": rng.standard_normal((d, d)), "b_out": rng.standard_normal(d),
              "ln1_gamma": rng.standard_normal(d), "ln1_beta": rng.standard_normal(d),
              "ln2_gamma": rng.standard_normal(d), "ln2_beta": rng.standard_normal(d)}
    Z = rng.standard_normal((B, N, d))

    def ln(x, g, b):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * g + b

    y = ln(Z, params["ln1_gamma"], params["ln1_beta"]) @ params["E"].T
    x = ln(y, params["ln2_gamma"], params["ln2_beta"])
    qkv = x @ params["U"].transpose(1, 0, 2).reshape(d, d)  # nn.Linear(d, K·p) weight = Uᵀ
    w = qkv.reshape(B, N, K, p).transpose(0, 2, 1, 3)
    dots = w @ w.transpose(0, 1, 3, 2) / math.sqrt(p)
    attn = np.exp(dots - dots.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = (attn @ w).transpose(0, 2, 1, 3).reshape(B, N, d) @ params["W_out"].T + params["b_out"]
    Y, _ = dec.decoder_layer_forward(Z, params)
    np.testing.assert_allclose(Y, y - out, rtol=1e-12, atol=1e-12)


def test_missing_parameters_are_named():
    with pytest.raises(ValueError, match="W_out"):
        dec.decoder_layer_forward(np.ones((1, 2, 2)), {"E": np.eye(2), "U": np.ones((1, 2, 2)),
                                                         "ln1_gamma": np.ones(2), "ln1_beta": np.zeros(2),
                                                         "ln2_gamma": np.ones(2), "ln2_beta": np.zeros(2)})
    with pytest.raises(ValueError, match="E must have trailing shape"):
        dec.decoder_layer_forward(np.ones((1, 2, 2)), {"E": np.eye(3), "U": np.ones((1, 2, 2))}, **dec.PAPER_FORM)


# ---------------------------------------------------------------- tying


def test_tied_layer_params_are_the_encoder_arrays():
    depth = 3
    params = {f"layers.{j}.{k}": np.full((2, 2), 10.0 * j + i) for j in range(depth)
              for i, k in enumerate(("D", "U"))}
    params.update({f"decoder.{i}.W_out": np.zeros((2, 2)) for i in range(depth)})
    for i in range(depth):
        layer, keys = dec.decoder_layer_params(params, i, depth, tie_encoder=True)
        j = depth - 1 - i
        assert layer["E"] is params[f"layers.{j}.D"] and layer["U"] is params[f"layers.{j}.U"]
        assert keys["E"] == f"layers.{j}.D" and keys["W_out"] == f"decoder.{i}.W_out"
        assert "ln1_gamma" not in layer  # absent keys are simply not used
    own, keys = dec.decoder_layer_params({"decoder.0.E": np.eye(2)}, 0, 1)
    assert keys == {"E": "decoder.0.E"}
    with pytest.raises(ValueError, match="decoder layer index"):
        dec.mirror_layer(3, 3)


def test_accumulate_sums_both_uses():
    grads = {"layers.0.D": np.ones((2, 2))}
    dec.accumulate(grads, {"E": 2 * np.ones((2, 2)), "W_out": np.zeros(1)},
                   {"E": "layers.0.D", "W_out": "decoder.0.W_out"})
    np.testing.assert_array_equal(grads["layers.0.D"], 3 * np.ones((2, 2)))
    assert "decoder.0.W_out" in grads


def test_shared_matrix_gradient_is_the_sum_of_both_uses(xp):
    """An encoder layer followed by the decoder layer tied to it (E ≡ D, U ≡ U):
    the FD derivative with respect to the one shared array equals the sum of the
    encoder's and the decoder's gradients, and each part alone is wrong."""
    d, K, p, seed = 4, 2, 2, 3
    s = {"d": d, "K": K, "p": p}
    enc = {"U": normal(xp, (K, d, p), seed, scale=0.5), "D": normal(xp, (d, d), seed + 1, scale=0.5),
           "W_out": normal(xp, (d, d), seed + 2, scale=0.5), "b_out": normal(xp, (d,), seed + 3, scale=0.1)}
    for i, name in enumerate(("ln1", "ln2")):
        enc[f"{name}_gamma"] = 1.0 + normal(xp, (d,), seed + 4 + i, scale=0.1)
        enc[f"{name}_beta"] = normal(xp, (d,), seed + 6 + i, scale=0.1)
    dec_own = {k: v for k, v in _layer(xp, s, seed + 20, "released").items() if k not in ("E", "U")}
    Z = normal(xp, (2, 3, d), seed + 30)

    def f(D, U):
        h, c1 = mc.encoder_layer_forward(Z, {**enc, "D": D, "U": U}, lam=0.0)
        layer, _ = dec.decoder_layer_params({"layers.0.D": D, "layers.0.U": U,
                                             **{f"decoder.0.{k}": v for k, v in dec_own.items()}},
                                            0, 1, tie_encoder=True)
        y, c2 = dec.decoder_layer_forward(h, layer)
        return y, (c1, c2)

    Y, (c1, c2) = f(enc["D"], enc["U"])
    dY = normal(xp, Y.shape, seed + 31)
    dh, g_dec = dec.decoder_layer_backward(dY, c2)
    _, g_enc = mc.encoder_layer_backward(dh, c1)
    grads = {"layers.0.D": g_enc["D"], "layers.0.U": g_enc["U"]}
    dec.accumulate(grads, g_dec, {**dec.decoder_layer_keys(0, 1, tie_encoder=True)})
    inputs = {"D": enc["D"], "U": enc["U"]}
    mc.check_vjp(f, inputs, dY, {"D": grads["layers.0.D"], "U": grads["layers.0.U"]}).raise_if_failed()
    assert not mc.check_vjp(f, inputs, dY, {"D": g_enc["D"], "U": g_enc["U"]}).passed
    assert not mc.check_vjp(f, inputs, dY, {"D": g_dec["E"], "U": g_dec["U"]}).passed


# ---------------------------------------------------------------- the inverse


def test_mssa_roundtrip_error_shrinks_like_kappa_squared(xp):
    """Paper form, tokens near a union of 4 orthogonal 8-dim subspaces of R^32:
    decoder step after encoder step returns Z with error ∝ κ² (fitted slope >= 1.8)."""
    U_host = np.asarray(orthonormal_bases(mc.get_backend("numpy"), 4, 32, 8, seed=0))
    U = orthonormal_bases(xp, 4, 32, 8, seed=0)
    Z, _ = union_of_subspaces(xp, U_host, 16, seed=1)
    kappas = [1.0, 0.5, 0.25, 0.125, 0.0625]
    errors = roundtrip.roundtrip_errors(Z, U, kappas)
    slope = roundtrip.loglog_slope(kappas, errors)
    assert slope >= 1.8, (slope, errors)
    # the step itself is only first order: without the decoder the error is ∝ κ
    moved = [float(xp.linalg.vector_norm(roundtrip.encoder_mssa_step(Z, U, k) - Z)) for k in kappas]
    assert 0.9 <= roundtrip.loglog_slope(kappas, moved) <= 1.1
    assert errors[-1] < 0.1 * moved[-1] / float(xp.linalg.vector_norm(Z))


def test_loglog_slope():
    xs = [1.0, 2.0, 4.0]
    assert roundtrip.loglog_slope(xs, [3 * x**2 for x in xs]) == pytest.approx(2.0)


def _sparse_code(rng, n, d, lam, density=0.3):
    """Non-negative sparse rows whose non-zeros all exceed 2λ."""
    active = rng.random((n, d)) < density
    return np.where(active, 2 * lam + rng.random((n, d)), 0.0)


@pytest.mark.parametrize("lam", [0.05, 0.1, 0.3])
def test_synthesis_inverts_ista_up_to_the_threshold(xp, lam):
    """Orthogonal D, X = S Dᵀ with S >= 0 sparse: one ISTA step with η = 1 gives
    exactly the non-negative LASSO solution ReLU(S − λ), and synthesis returns X
    with error exactly λ·√nnz(S) (each kept coefficient is shrunk by λ)."""
    rng = np.random.default_rng(0)
    d, n = 16, 12
    D = orthonormal_bases(xp, 1, d, d, seed=5)[0, ...]
    S = _sparse_code(rng, n, d, lam)
    X = roundtrip.synthesize(mc.core.backend.host_to(xp, S), D)
    A = roundtrip.ista_iterate(X, D, eta=1.0, lam=lam, steps=1)
    np.testing.assert_allclose(mc.to_numpy(A), np.maximum(S - lam, 0), atol=1e-12)
    err = float(xp.linalg.vector_norm(roundtrip.synthesize(A, D) - X))
    assert err == pytest.approx(lam * math.sqrt(np.count_nonzero(S)), rel=1e-10)


def test_code_step_size_needs_iterations_to_invert(xp):
    """With the code's η = 0.1 one ISTA step is not inverted by synthesis; iterating
    the same step converges to ReLU(S − λ) and synthesis again recovers X up to λ."""
    lam = 0.1
    rng = np.random.default_rng(1)
    D = orthonormal_bases(xp, 1, 16, 16, seed=6)[0, ...]
    S = _sparse_code(rng, 12, 16, lam)
    X = roundtrip.synthesize(mc.core.backend.host_to(xp, S), D)
    bound = lam * math.sqrt(np.count_nonzero(S))
    one = roundtrip.ista_iterate(X, D, eta=0.1, lam=lam, steps=1)
    np.testing.assert_allclose(mc.to_numpy(one), mc.to_numpy(mc.ista_forward(X, D, eta=0.1, lam=lam)[0]))
    assert float(xp.linalg.vector_norm(roundtrip.synthesize(one, D) - X)) > 3 * bound
    many = roundtrip.ista_iterate(X, D, eta=0.1, lam=lam, steps=400)
    np.testing.assert_allclose(mc.to_numpy(many), np.maximum(S - lam, 0), atol=1e-9)
    assert float(xp.linalg.vector_norm(roundtrip.synthesize(many, D) - X)) <= bound * (1 + 1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_decoder_layer_equals_the_plain_one(xp, bias):
    s = {"B": 2, "N": 5, "K": 2, "p": 3, "d": 6}
    params = _layer(xp, s, 7, "released")
    if not bias:
        del params["b_out"]
    Z = normal(xp, (2, 5, 6), 17)
    dY = normal(xp, (2, 5, 6), 18)
    Y, cache = dec.decoder_layer_forward(Z, params)
    Yf, cache_f = fused_decoder.fast_decoder_layer_forward(Z, params)
    np.testing.assert_allclose(mc.to_numpy(Yf), mc.to_numpy(Y), rtol=1e-12, atol=1e-12)
    dZ, grads = dec.decoder_layer_backward(dY, cache)
    dZf, grads_f = fused_decoder.fast_decoder_layer_backward(dY, cache_f)
    np.testing.assert_allclose(mc.to_numpy(dZf), mc.to_numpy(dZ), rtol=1e-10, atol=1e-12)
    assert set(grads_f) == set(grads) == set(params)
    for k in grads:
        np.testing.assert_allclose(mc.to_numpy(grads_f[k]), mc.to_numpy(grads[k]), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="released form"):
        fused_decoder.fast_decoder_layer_forward(Z, params, tie_out=True)


def test_backward_and_helpers_reject_bad_input():
    params = {"E": np.eye(2), "U": np.ones((1, 2, 2))}
    Y, cache = dec.decoder_layer_forward(np.ones((1, 3, 2)) * np.arange(2), params, **dec.PAPER_FORM)
    with pytest.raises(TypeError, match="cache returned by decoder_layer_forward"):
        dec.decoder_layer_backward(Y, {"ln1": None})
    with pytest.raises(ValueError, match="forward output's shape"):
        dec.decoder_layer_backward(np.ones((1, 2, 2)), cache)
    with pytest.raises(TypeError, match="dY must have a real floating dtype"):
        dec.decoder_layer_backward(np.ones((1, 3, 2), dtype=int), cache)
    with pytest.raises(TypeError, match="depth must be an integer"):
        dec.decoder_layer_params({}, 0, 2.0)
    with pytest.raises(TypeError, match="params must be a dict"):
        dec.decoder_layer_params([1], 0, 1)
