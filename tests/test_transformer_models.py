"""The models with ``block="transformer"`` (ViT, GPT, BERT, ViT-MAE), the head width ``dim_head``
and the release's single-head form: FD checks of whole models, parameter counts matched to
CRATE's on every comparison recipe, and old checkpoints (no ``block`` field) loading as CRATE."""

import dataclasses
import math

import numpy as np
import pytest

import minicrate as mc
from minicrate.checks.strategies import normal
from minicrate.core import checkpoint
from minicrate.models import lm
from minicrate.models.classifier import CRATEConfig
from minicrate.models.mae import mae_param_count
from minicrate.training.compare import RECIPES, transformer_twin
from minicrate.training.lmfiles import load_checkpoint as load_lm_checkpoint
from minicrate.training.mae import load_mae_run, mae_recipe, save_mae_checkpoint

NEW_FIELDS = ("dim_head", "project_out", "block", "mlp_ratio")


def _flat_check(f, params, cotangent, grads, *, sample=None, **inputs):
    names = {k: k.replace(".", "__") for k in params}
    g = lambda **flat: f({k: flat[v] for k, v in names.items()}, **{k: flat[k] for k in inputs})
    return mc.check_vjp(g, {**inputs, **{names[k]: v for k, v in params.items()}}, cotangent,
                        {names[k]: v for k, v in grads.items()}, max_entries=sample)


def _sample(xp):
    return None if mc.core.backend.backend_name(xp) == "numpy" else 2


def test_vit_classifier_gradients_match_fd(xp):
    config = CRATEConfig(image_size=4, patch_size=2, channels=2, dim=4, depth=2, heads=2, num_classes=3,
                         dtype="float64", block="transformer", dim_head=3, mlp_ratio=1.5)
    params = mc.init_params(config, seed=3, backend=xp)
    images = normal(xp, (2, 2, 4, 4), 4)
    logits, cache = mc.forward(params, images, config)
    dlogits = normal(xp, logits.shape, 5)
    grads = mc.backward(dlogits, cache)
    assert set(grads) == set(params) and "layers.1.W_qkv" in params and "layers.0.U" not in params
    _flat_check(lambda p, images: mc.forward(p, images, config)[0], params, dlogits, grads,
                sample=_sample(xp), images=images).raise_if_failed()


@pytest.mark.parametrize("form", ["causal", "masked"])
def test_gpt_and_bert_gradients_match_fd(form):
    config = lm.LMConfig(vocab_size=5, form=form, context=4, dim=4, depth=1, heads=2, dtype="float64",
                         block="transformer", mlp_ratio=1.25, tie_embedding=form == "causal", embed_std=1.0)
    params = lm.init_params(config, seed=1)
    tokens = np.array([[0, 1, 2, 3], [4, 3, 2, 1]])
    logits, cache = lm.forward(params, tokens, config)
    dlogits = normal(np, logits.shape, 3)
    grads = lm.backward(dlogits, cache)
    assert set(grads) == set(params)
    _flat_check(lambda p: lm.forward(p, tokens, config)[0], params, dlogits, grads).raise_if_failed()
    assert [u.shape for u in lm.intermediates(cache)["U"]] == [(2, 4, 2)]  # the value maps


def test_vit_mae_gradients_match_fd():
    config = mc.MAEConfig(image_size=4, patch_size=2, channels=1, dim=4, depth=1, heads=2, dtype="float64",
                          block="transformer", mlp_ratio=1.0)
    params = mc.init_mae_params(config, seed=0)
    params["cls_token"], params["mask_token"] = normal(np, (4,), 7), normal(np, (4,), 8)  # FD-sized tokens
    images = normal(np, (2, 1, 4, 4), 1)
    mask = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], bool)
    pred, cache = mc.mae_forward(params, images, mask, config)
    dpred = normal(np, pred.shape, 2)
    grads = mc.mae_backward(dpred, cache)
    assert set(grads) == set(params) and "decoder.0.W1" in params
    _flat_check(lambda p: mc.mae_forward(p, images, mask, config)[0], params, dpred, grads).raise_if_failed()


def test_crate_with_free_head_width_and_single_head_form():
    """dim_head: U is (K, d, p) with K·p != d; project_out=False: no W_out (the release's heads=1, p=d)."""
    for kwargs, absent in (({"dim_head": 3}, ()), ({"heads": 1, "dim_head": 4, "project_out": False},
                                                   ("layers.0.W_out", "layers.0.b_out"))):
        config = CRATEConfig(image_size=4, patch_size=2, dim=4, depth=1, heads=kwargs.pop("heads", 2), num_classes=3,
                             dtype="float64", **kwargs)
        params = mc.init_params(config, seed=0)
        assert params["layers.0.U"].shape == (config.heads, 4, config.head_dim)
        assert all(k not in params for k in absent)
        assert mc.param_count(config) == sum(v.size for v in params.values())
        images = normal(np, (2, 1, 4, 4), 1)
        logits, cache = mc.forward(params, images, config, fast=True)  # falls back to the plain layer
        dlogits = normal(np, logits.shape, 2)
        grads = mc.backward(dlogits, cache)
        assert set(grads) == set(params)
        _flat_check(lambda p, x=images, c=config: mc.forward(p, x, c)[0], params, dlogits, grads).raise_if_failed()


def test_single_head_form_is_mssa_without_output_map():
    Z = normal(np, (2, 3, 4), 0)
    params = {"U": normal(np, (1, 4, 4), 1, 0.5), "D": normal(np, (4, 4), 2, 0.5)}
    Y, cache = mc.encoder_layer_forward(Z, params, use_layernorm=False, project_out=False)
    M, _ = mc.mssa_forward(Z, params["U"], np.eye(4), None)
    expected, _ = mc.ista_forward(Z + M, params["D"])
    np.testing.assert_allclose(Y, expected, rtol=1e-13)
    with pytest.raises(ValueError, match=r"project_out=False \(no output map\) needs K·p = d = 4"):
        mc.encoder_layer_forward(Z, {**params, "U": params["U"][:, :, :2]}, use_layernorm=False, project_out=False)


def test_defaults_keep_every_crate_model_identical():
    """The new fields' defaults are the old behaviour: same keys, shapes and numbers."""
    for config in (mc.preset("digits"), mc.preset("crate_base")):
        assert config.block == "crate" and config.head_dim == config.dim // config.heads
    assert round(mc.param_count(mc.preset("crate_base")) / 1e6, 2) == 22.80
    a = mc.init_params(mc.preset("digits"), seed=5)
    b = mc.init_params(dataclasses.replace(mc.preset("digits"), dim_head=16), seed=5)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("data", list(RECIPES))
def test_twins_match_crate_parameter_counts_within_ten_percent(data):
    spec = RECIPES[data]
    if spec["kind"] == "classifier":
        config, count = mc.recipe(spec["recipe"])[0], mc.param_count
    elif spec["kind"] == "mae":
        config, count = mae_recipe(spec["recipe"])[0], mae_param_count
    else:
        config, count = lm.LMConfig(vocab_size=65, **spec["model"]), lm.param_count
    twin = transformer_twin(config, count)
    assert twin.block == "transformer" and twin.dim == config.dim and twin.depth == config.depth
    assert twin.head_dim == config.head_dim // 4 and twin.heads == config.heads
    print(f"{data}: CRATE {count(config):,} parameters, transformer {count(twin):,} "
          f"(MLP ratio {twin.mlp_ratio:.3f})")
    assert abs(count(twin) / count(config) - 1) < 0.10
    assert abs(count(twin) / count(config) - 1) < 0.01  # in fact within 1 %


@pytest.mark.parametrize("kwargs, pattern", [
    ({"block": "mamba"}, r"CRATEConfig.block must be 'crate' or 'transformer', got 'mamba'"),
    ({"block": "transformer", "tie_out": True}, "tie_out=True and use_layernorm=False are CRATE's switches"),
    ({"dim_head": 0}, r"CRATEConfig.dim_head must be a positive integer or None, got 0"),
    ({"dim_head": 2.5}, r"CRATEConfig.dim_head must be a positive integer or None"),
    ({"project_out": False, "dim_head": 8}, r"project_out=False needs heads·p = dim, got heads=4, p=8, dim=64"),
    ({"mlp_ratio": 0.0}, r"mlp_ratio must be finite and > 0"),
    ({"dim": 10, "heads": 4}, "dim 10 must be divisible by heads 4"),
])
def test_bad_block_configs(kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        CRATEConfig(**{"dim": 64, "heads": 4, **kwargs})


def test_dim_head_frees_the_width_from_the_heads():
    config = CRATEConfig(dim=10, heads=4, dim_head=3)
    assert config.head_dim == 3 and mc.init_params(config)["layers.0.U"].shape == (4, 10, 3)
    with pytest.raises(ValueError, match="tie_decoder=True ties CRATE's decoder"):
        mc.MAEConfig(block="transformer", tie_decoder=True)


def _old(config_dict):
    return {k: v for k, v in config_dict.items() if k not in NEW_FIELDS}


def test_old_checkpoints_without_the_new_fields_load_as_crate(tmp_path):
    config = mc.preset("digits", depth=1)
    params = mc.init_params(config, seed=0)
    checkpoint.save(tmp_path / "c.npz", params, _old(dataclasses.asdict(config)))
    loaded, loaded_config = mc.load(tmp_path / "c.npz")
    assert loaded_config == config and loaded_config.block == "crate"
    # a transformer's checkpoint round-trips with its block
    vit = dataclasses.replace(config, block="transformer", mlp_ratio=1.0, dim_head=4)
    mc.save(tmp_path / "v.npz", mc.init_params(vit), vit)
    assert mc.load(tmp_path / "v.npz")[1] == vit
    # MAE and language-model checkpoints keep their configs in extra
    mae = mc.MAEConfig(image_size=4, patch_size=2, dim=8, depth=1, heads=2)
    mae_params = mc.init_mae_params(mae)
    checkpoint.save(tmp_path / "m.npz", mae_params, None, extra={"mae_config": _old(dataclasses.asdict(mae))})
    assert load_mae_run(tmp_path / "m.npz")[1] == mae
    save_mae_checkpoint(tmp_path / "m2.npz", mc.init_mae_params(dataclasses.replace(mae, block="transformer")),
                        dataclasses.replace(mae, block="transformer"))
    assert load_mae_run(tmp_path / "m2.npz")[1].block == "transformer"
    lmc = lm.LMConfig(vocab_size=5, context=4, dim=4, depth=1, heads=2)
    checkpoint.save(tmp_path / "l.npz", lm.init_params(lmc), None, extra={"lm_config": _old(lmc.to_dict())})
    assert load_lm_checkpoint(tmp_path / "l.npz")[1] == lmc


def test_param_count_of_the_standard_layer():
    """A ViT layer with p = d/K and h = 4d holds 12d² + 13d (CRATE's: 3d² + 5d)."""
    d = 64
    base = mc.param_count(mc.preset("digits", depth=1))
    vit = mc.param_count(mc.preset("digits", depth=1, block="transformer"))
    assert vit - base == (12 * d * d + 13 * d) - (3 * d * d + 5 * d)
    assert math.isclose(mc.preset("digits", block="transformer").mlp_hidden(64), 256)
