"""The white-box study (issue 18): targets, the synthetic case, the per-layer step check, the command."""

import json
import os

import numpy as np
import pytest

import minicrate as mc
from minicrate.cli import main
from minicrate.layers.encoder import encoder_layer_forward
from minicrate.layers.mssa import mssa_forward
from minicrate.measure.steps import layer_steps
from minicrate.measure.synthetic import monotone_descent, random_bases, synthetic_descent, union_of_subspaces
from minicrate.objective.rates import measured_compression_rate
from minicrate.training.whitebox import form_config, targets

PNG = b"\x89PNG\r\n\x1a\n"


def test_targets_read_the_three_claims():
    init = {"rc": [100.0, 100.0, 100.0], "nonzero": [0.5, 0.4, 0.4]}
    good = {"rc": [100.0, 97.0, 94.0], "nonzero": [0.5, 0.4, 0.3]}
    assert targets(good, init) == {"fall": True, "fall_pct": 6.0, "below_init": True, "sparser": True}
    flat = {"rc": [100.0, 99.0, 96.0], "nonzero": [0.5, 0.4, 0.45]}  # 4 % fall; last denser than init
    assert targets(flat, init) == {"fall": False, "fall_pct": 4.0, "below_init": True, "sparser": False}
    above = {"rc": [90.0, 101.0, 80.0], "nonzero": [0.3, 0.4, 0.35]}  # layer 2 above init
    got = targets(above, init)
    assert got["fall"] and not got["below_init"] and not got["sparser"]  # 0.35 > first 0.3


def test_the_synthetic_tokens_lie_on_their_subspaces():
    Z, U, labels = union_of_subspaces(8, 16, heads=3, head_dim=4, noise=0.0, seed=1)
    assert Z.shape == (8, 16, 12) and U.shape == (3, 12, 4) and np.all(Z >= 0)
    for k in range(3):  # a token has energy only in its own subspace
        inside = np.linalg.norm(Z @ U[k], axis=-1)
        assert np.all(inside[labels != k] == 0) and np.all(inside[labels == k] > 0)
    B = random_bases(3, 4, seed=2)
    assert np.allclose(np.einsum("kdp,jdq->kjpq", B, B)[np.arange(3), np.arange(3)], np.eye(4))


def test_the_derivations_network_lowers_rc_at_every_layer_with_the_true_bases():
    r = synthetic_descent(depth=6, n_samples=16)
    assert r["layers"] == list(range(7))
    assert monotone_descent(r["true"]["rc"]) and monotone_descent(r["true"]["rc_measured"])
    assert r["true"]["rc"][-1] < 0.2 * r["true"]["rc"][0]
    assert r["true"]["nonzero"][-1] < r["true"]["nonzero"][0]  # ISTA's threshold zeroes the noise
    assert len(r["random"]["rc"]) == 7 and all(np.isfinite(r["random"]["rc"]))
    assert not monotone_descent([3.0, 2.0, 2.0]) and monotone_descent([3.0, 2.0, 1.0])


def test_the_plain_layer_keeps_the_tokens_on_either_side_of_the_compression_half():
    rng = np.random.default_rng(0)
    d, K, p = 8, 2, 4
    params = {"U": rng.standard_normal((K, d, p)) / np.sqrt(d), "W_out": rng.standard_normal((d, K * p)) / 3,
              "D": rng.standard_normal((d, d)) / np.sqrt(d),
              "ln1_gamma": np.ones(d), "ln1_beta": np.zeros(d), "ln2_gamma": np.ones(d), "ln2_beta": np.zeros(d)}
    Z = rng.standard_normal((3, 5, d))
    _, cache = encoder_layer_forward(Z, params)
    M, _ = mssa_forward(cache["mssa_input"], params["U"], params["W_out"], None)
    assert cache["input"] is Z
    np.testing.assert_allclose(cache["half"], Z + M, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", ["paper", "official"])
def test_layer_steps_measure_each_half_against_the_layers_own_bases(form):
    config = form_config({"data": "digits", "model": dict(depth=2, dtype="float64")}, form)
    params = mc.init_params(config, seed=0)
    images = np.random.default_rng(1).standard_normal((6, 1, 8, 8))
    steps = layer_steps(params, config, images, batch_size=4)  # two batches
    assert set(steps) >= {"rc_before", "rc_after", "lasso_before", "lasso_after", "mssa_lowers",
                          "ista_lowers", "ista_input_rms", "ista_input_mean", "nonzero_at_first_scale",
                          "nonzero_at_previous_mean"}
    assert all(len(v) == 2 for v in steps.values())
    _, cache = mc.forward(params, images, config, fast=False)  # recomputed by hand, layer 2
    c = cache["layers"][1]
    rc = measured_compression_rate(c["input"], c["mssa"]["U"], eps_sq=0.01, reduction="none")
    np.testing.assert_allclose(steps["rc_before"][1], rc.mean(), rtol=1e-12)
    X = c["ista"]["X"]
    lasso = mc.lasso_objective(c["ista_output"], X, c["ista"]["D"], config.lam)
    np.testing.assert_allclose(steps["lasso_after"][1], lasso.mean(), rtol=1e-12)
    assert all(0 <= v <= 1 for v in steps["mssa_lowers"] + steps["ista_lowers"])
    # Layer 1 is its own reference: neither counterfactual changes its input.
    nonzero = mc.nonzero_fraction(cache["layers"][0]["ista_output"], reduction="none").mean()
    for key in ("nonzero_at_first_scale", "nonzero_at_previous_mean"):
        np.testing.assert_allclose(steps[key][0], nonzero, rtol=1e-12)


def test_layer_steps_refuse_a_transformer_and_a_config_of_another_type():
    config = mc.preset("digits", depth=1, block="transformer")
    with pytest.raises(ValueError, match="needs a CRATE model"):
        layer_steps(mc.init_params(config, seed=0), config, np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(TypeError, match="config must be a CRATEConfig, got dict"):
        layer_steps(mc.init_params(config, seed=0), {"depth": 1}, np.zeros((1, 1, 8, 8), np.float32))


def test_the_command_writes_the_study_and_refuses_to_overwrite_it(tmp_path, capsys):
    out = str(tmp_path / "wb")
    args = ["whitebox", "--data", "digits", "--epochs", "2", "--images", "30", "--out", out, "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "R^c trained" in printed and "MSSA lowers R^c" in printed and "synthetic case" in printed
    result = json.loads(open(os.path.join(out, "whitebox.json")).read())
    assert set(result) >= {"config", "train_config", "test_accuracy", "trained", "init", "epochs",
                           "steps", "synthetic", "targets", "forms"}
    depth = result["config"]["depth"]
    assert [e["epoch"] for e in result["epochs"]] == [0, 1, 2]  # init, the snapshot, the end
    assert all(len(e["rc"]) == depth and len(e["nonzero"]) == depth for e in result["epochs"])
    assert set(result["steps"]) == {"paper", "official"}
    assert set(result["steps"]["official"]) == {"trained", "init"}
    assert result["synthetic"]["monotone"]["true"] is True
    assert open(os.path.join(out, "whitebox.png"), "rb").read(8) == PNG
    for form in ("paper", "official"):  # each form is a run the other commands read
        assert main(["measure", os.path.join(out, form), "--images", "10"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2 and "pass --overwrite" in capsys.readouterr().err
