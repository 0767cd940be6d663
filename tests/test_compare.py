"""``minicrate compare``: the comparison library (twin, runs, table, figure) and the command."""

import json

import numpy as np
import pytest

import minicrate as mc
from minicrate.cli import main
from minicrate.measure.comparison import format_markdown, layer_caches, layerwise_both, summary
from minicrate.measure.layerwise import layerwise
from minicrate.models import lm
from minicrate.training.compare import compare, transformer_twin


def test_layerwise_both_is_the_layerwise_protocol():
    """On a CRATE classifier it gives minicrate.measure.layerwise's numbers (same protocol)."""
    config = mc.preset("digits", depth=2)
    params = mc.init_params(config, seed=1)
    x = np.random.default_rng(0).standard_normal((20, 1, 8, 8)).astype(np.float32)
    ours, theirs = layerwise_both("classifier", params, config, x, batch_size=7), layerwise(params, config, x)
    for k in ("rc", "nonzero", "rc_std"):
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5)
    vit = transformer_twin(config, mc.param_count)
    measured = layerwise_both("classifier", mc.init_params(vit), vit, x)
    assert measured["nonzero"] == [1.0, 1.0]  # the residual stream has no exact zeros
    assert len(measured["rc_tokens"]) == 2 and all(v > 0 for v in measured["rc"])


def test_layer_caches_of_every_kind():
    config = lm.LMConfig(vocab_size=5, context=4, dim=8, depth=1, heads=2, block="transformer", mlp_ratio=1.0)
    assert len(layer_caches("lm", lm.init_params(config), config, np.zeros((2, 4), dtype=np.int64))) == 1
    mae = mc.MAEConfig(image_size=4, patch_size=2, dim=8, depth=2, heads=2)
    got = layerwise_both("mae", mc.init_mae_params(mae), mae, np.zeros((3, 1, 4, 4), dtype=np.float32))
    assert len(got["rc"]) == 2 and got["n_inputs"] == 3
    with pytest.raises(ValueError, match="kind must be 'classifier', 'lm' or 'mae'"):
        layer_caches("rnn", {}, config, None)


def test_twin_changes_only_the_block():
    config = mc.preset("mnist")
    twin = transformer_twin(config, mc.param_count)
    changed = {f for f in ("dim", "depth", "heads", "patch_size", "pool", "image_size", "label_smoothing")
               if getattr(config, f) != getattr(twin, f)}
    assert not changed and twin.block == "transformer" and twin.dim_head == config.head_dim // 4
    with pytest.raises(ValueError, match="config must be a CRATE configuration"):
        transformer_twin(twin, mc.param_count)


def test_summary_means_and_spreads():
    rows = [{"model": "crate", "test_accuracy": a, "params": 10, "wall_time_s": 1.0, "epochs": 2, "seed": s}
            for s, a in enumerate((0.9, 0.96))]
    (s,) = summary(rows)
    assert s["mean"] == pytest.approx(0.93) and s["spread"] == pytest.approx(0.03) and s["n"] == 2


def test_compare_writes_json_markdown_and_figure(tmp_path, capsys):
    code = main(["compare", "--data", "digits", "--out", str(tmp_path), "--length", "1"])
    assert code == 0
    report = json.loads((tmp_path / "compare.json").read_text())
    rows = {r["model"]: r for r in report["rows"]}
    assert set(rows) == {"crate", "vit"}
    for r in rows.values():
        assert set(r) >= {"model", "data", "params", "seed", "test_accuracy", "wall_time_s", "epochs"}
    assert abs(rows["vit"]["params"] / rows["crate"]["params"] - 1) < 0.1
    assert "| crate |" in (tmp_path / "compare.md").read_text()
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert "vit" in capsys.readouterr().out
    assert format_markdown(report).startswith("# CRATE against the transformer: digits")


def test_compare_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="data must be one of"):
        compare("cifar", tmp_path)
    with pytest.raises(ValueError, match="seeds must name at least one seed"):
        compare("digits", tmp_path, seeds=[])
    with pytest.raises(ValueError, match="length must be >= 1"):
        compare("digits", tmp_path, length=0)
