"""The encoder layer in every switch combination and the whole classifier:
FD checks, parameter counts, presets, bad configurations (spec §3.3, §4, §8.5)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicrate as mc
from minicrate.checks.strategies import normal, seeds
from minicrate.models.stack import layer_params

LAYER_SWITCHES = st.fixed_dictionaries({
    "tie_out": st.booleans(), "use_layernorm": st.booleans(), "scale": st.sampled_from([None, 1.0]),
    "eta": st.sampled_from([0.1, 0.3]), "lam": st.sampled_from([0.1, 0.5]), "causal": st.booleans(),
})


def _layer(xp, d, K, seed, tie_out, use_layernorm):
    p = d // K
    params = {"U": normal(xp, (K, d, p), seed, scale=1 / math.sqrt(d)), "D": normal(xp, (d, d), seed + 1, scale=0.5)}
    if not tie_out:
        params.update(W_out=normal(xp, (d, d), seed + 2, scale=0.5), b_out=normal(xp, (d,), seed + 3))
    if use_layernorm:
        for i, k in enumerate(("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")):
            params[k] = normal(xp, (d,), seed + 4 + i, scale=0.5) + (1.0 if "gamma" in k else 0.0)
    return params


@settings(max_examples=10)
@given(switches=LAYER_SWITCHES, seed=seeds)
def test_encoder_layer_gradients_match_fd(xp, switches, seed):
    params = _layer(xp, 4, 2, seed, switches["tie_out"], switches["use_layernorm"])
    Z = normal(xp, (2, 3, 4), seed + 10)
    Y, cache = mc.encoder_layer_forward(Z, params, **switches)
    # Keep away from the ReLU kink: skip draws with a pre-activation near 0.
    X2 = cache["ista"]["X"]
    D = cache["params"]["D"]
    eta, lam = switches["eta"], switches["lam"]
    pre = mc.to_numpy(X2 + eta * ((X2 - X2 @ xp.matrix_transpose(D)) @ D)) - eta * lam
    if np.min(np.abs(pre)) < 0.02:
        return
    dY = normal(xp, Y.shape, seed + 11)
    dZ, grads = mc.encoder_layer_backward(dY, cache)
    assert set(grads) == set(params)

    def f(Z, **p):
        return mc.encoder_layer_forward(Z, p, **switches)[0]

    mc.check_vjp(f, {"Z": Z, **params}, dY, {"Z": dZ, **grads}).raise_if_failed()


def test_whole_classifier_gradients_match_fd(xp):
    """Every parameter of a depth-2 classifier against finite differences."""
    config = mc.CRATEConfig(image_size=4, patch_size=2, channels=2, dim=4, depth=2, heads=2,
                            num_classes=3, dtype="float64")
    params = mc.init_params(config, seed=3, backend=xp)
    images = normal(xp, (2, 2, 4, 4), 4)
    logits, cache = mc.forward(params, images, config)
    dlogits = normal(xp, logits.shape, 5)
    grads = mc.backward(dlogits, cache)
    assert set(grads) == set(params)
    names = {k: k.replace(".", "__") for k in params}

    def f(images, **flat):
        return mc.forward({k: flat[v] for k, v in names.items()}, images, config)[0]

    # Every entry on NumPy; a random sample of each parameter elsewhere (slower backends).
    sample = None if mc.core.backend.backend_name(xp) == "numpy" else 3
    report = mc.check_vjp(f, {"images": images, **{names[k]: v for k, v in params.items()}}, dlogits,
                          {names[k]: v for k, v in grads.items()}, max_entries=sample)
    report.raise_if_failed()


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_loss_and_grads_and_pooling(pool):
    config = mc.CRATEConfig(image_size=4, patch_size=2, dim=4, depth=1, heads=2, num_classes=3,
                            pool=pool, dtype="float64")
    params = mc.init_params(config, seed=0)
    images = np.random.default_rng(0).standard_normal((3, 1, 4, 4))
    labels = np.array([0, 1, 2])
    loss, grads, logits = mc.loss_and_grads(params, images, labels, config)
    names = {k: k.replace(".", "__") for k in params}

    def f(**flat):
        return mc.cross_entropy_forward(mc.forward({k: flat[v] for k, v in names.items()}, images, config)[0],
                                        labels, smoothing=0.1)[0]

    mc.check_vjp(f, {names[k]: v for k, v in params.items()}, np.float64(1.0),
                 {names[k]: v for k, v in grads.items()}).raise_if_failed()
    assert logits.shape == (3, 3) and math.isfinite(loss)


@pytest.mark.parametrize("name, millions", [("crate_tiny", 6.09), ("crate_small", 13.12),
                                            ("crate_base", 22.80), ("crate_large", 77.64)])
def test_preset_parameter_counts_match_paper(name, millions):
    assert round(mc.param_count(mc.preset(name)) / 1e6, 2) == millions


@pytest.mark.parametrize("config", [
    mc.CRATEConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2),
    mc.CRATEConfig(image_size=8, patch_size=2, dim=8, depth=2, heads=4, tie_out=True),
    mc.CRATEConfig(image_size=8, patch_size=4, dim=6, depth=1, heads=3, use_layernorm=False),
])
def test_param_count_equals_initialised_sizes(config):
    params = mc.init_params(config)
    assert mc.param_count(config) == sum(math.prod(v.shape) for v in params.values())


def test_same_seed_same_model_on_every_backend(xp):
    config = mc.preset("digits", depth=1)
    a = mc.init_params(config, seed=7, backend=xp)
    b = mc.init_params(config, seed=7)
    for k in b:
        np.testing.assert_array_equal(mc.to_numpy(a[k]), b[k])


def test_official_init_scales():
    params = mc.init_params(mc.preset("digits"), seed=0, dtype="float64")
    d = 64
    D = params["layers.0.D"]
    assert np.abs(D).max() <= math.sqrt(6 / d)
    np.testing.assert_allclose(np.diag(D.T @ D).mean(), 2.0, rtol=0.15)  # DᵀD ≈ 2I at init
    assert np.abs(params["layers.0.U"]).max() <= 1 / math.sqrt(d)


@pytest.mark.parametrize("kwargs, pattern", [
    ({"image_size": 10, "patch_size": 4}, "image_size 10 must be divisible by patch_size 4"),
    ({"dim": 10, "heads": 4}, "dim 10 must be divisible by heads 4"),
    ({"pool": "max"}, "pool must be 'cls' or 'mean'"),
    ({"depth": 0}, "depth must be a positive integer"),
    ({"eta": -1.0}, "eta and lam must be >= 0"),
])
def test_bad_configs(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        mc.CRATEConfig(**kwargs)


def test_wrong_image_shape_is_explained():
    config = mc.preset("digits")
    with pytest.raises(ValueError, match=r"images must have shape \(B, 1, 8, 8\)"):
        mc.forward(mc.init_params(config), np.ones((2, 1, 28, 28), dtype=np.float32), config)


def test_layer_params_strips_prefix():
    params = mc.init_params(mc.preset("digits", depth=2))
    assert set(layer_params(params, 1)) == {"ln1_gamma", "ln1_beta", "U", "W_out", "b_out",
                                            "ln2_gamma", "ln2_beta", "D"}


def test_intermediates_expose_measurement_points():
    config = mc.preset("digits", depth=2)
    params = mc.init_params(config)
    images = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    _, cache = mc.forward(params, images, config)
    inter = mc.intermediates(cache)
    assert len(inter["mssa_inputs"]) == 2 and inter["attention"][0].shape == (3, 4, 5, 5)
    assert inter["ista_outputs"][1].min() >= 0


def test_save_load_round_trips_bit_exactly(tmp_path):
    config = mc.preset("digits", depth=2, tie_out=True)
    params = mc.init_params(config, seed=4)
    mc.save(tmp_path / "model.npz", params, config)
    loaded, loaded_config = mc.load(tmp_path / "model.npz")
    assert loaded_config == config and set(loaded) == set(params)
    for k in params:
        assert loaded[k].dtype == params[k].dtype
        np.testing.assert_array_equal(loaded[k], params[k])
