"""The training loop: learning, determinism, exact resume, divergence handling."""

import json
import math

import numpy as np
import pytest

import minicrate.training.classifier as train_module
from minicrate.core import checkpoint as ckpt
from minicrate.data.images import load
from minicrate.models.classifier import CRATEConfig, init_params
from minicrate.training.classifier import (
    TrainConfig,
    TrainingDiverged,
    evaluate,
    load_run,
    recipe,
    train,
)
from minicrate.training.epochs import EpochTask

TINY = CRATEConfig(
    image_size=8, patch_size=4, dim=16, depth=2, heads=2, num_classes=10, pool="mean"
)
STEPS_PER_EPOCH = 23  # 1,437 training digits in batches of 64


def _tc(**kw):
    base = dict(data="digits", lr=3e-3, epochs=2, batch_size=64, warmup_epochs=0.5, shift=1, seed=3)
    return TrainConfig(**{**base, **kw})


def _quiet(*args, **kwargs):
    pass


def test_a_few_dozen_steps_lower_the_loss(tmp_path):
    split = load("digits")
    before = evaluate(init_params(TINY, seed=3), TINY, split.x_test, split.y_test)
    result = train(TINY, _tc(), tmp_path, progress=False, log=_quiet)
    assert result["steps"] == 2 * STEPS_PER_EPOCH
    h = result["history"]
    assert h[-1]["test_loss"] < before["loss"] - 0.2
    assert h[1]["train_loss"] < h[0]["train_loss"]
    assert result["test_accuracy"] > max(0.3, before["accuracy"] + 0.15)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["history"]) == 2
    assert metrics["model_config"]["dim"] == 16 and metrics["train_config"]["lr"] == 3e-3
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    params, config, extra = load_run(tmp_path)
    assert config == TINY and extra["position"] == {"epoch": 2, "batch": 0, "step": 46}
    again = evaluate(params, config, split.x_test, split.y_test)
    assert again["accuracy"] == result["test_accuracy"]


def test_evaluating_every_few_epochs_changes_only_the_history(tmp_path):
    every = train(TINY, _tc(epochs=3), tmp_path / "a", progress=False, log=_quiet)
    sparse = train(TINY, _tc(epochs=3, eval_every_epochs=2), tmp_path / "b", progress=False, log=_quiet)
    assert [h["epoch"] for h in every["history"]] == [1, 2, 3]
    assert [h["epoch"] for h in sparse["history"]] == [2, 3]  # every 2 epochs, and after the last
    a, b = load_run(tmp_path / "a")[0], load_run(tmp_path / "b")[0]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert sparse["test_accuracy"] == every["test_accuracy"]
    with pytest.raises(ValueError, match="eval_every_epochs must be"):
        _tc(eval_every_epochs=0)
    for bad, error in ((1.0, ValueError), (-0.1, ValueError), (False, TypeError)):
        with pytest.raises(error, match="adam_beta2 must"):
            _tc(adam_beta2=bad)
    task = EpochTask(_tc(epochs=5, eval_every_epochs=2, adam_beta2=0.95), load("digits"), np)
    assert task.make_optimizer({}).betas == (0.9, 0.95)
    # a progress bar runs to the next evaluation
    spe = task.steps_per_epoch
    assert [task.bar_desc(e * spe + 1) for e in (0, 1, 2, 4)] == [
        "epochs 1-2/5", "epoch 2/5", "epochs 3-4/5", "epoch 5/5"]


def test_same_seed_gives_identical_losses_and_parameters(tmp_path):
    a = train(TINY, _tc(epochs=1), tmp_path / "a", progress=False, log=_quiet)
    b = train(TINY, _tc(epochs=1), tmp_path / "b", progress=False, log=_quiet)
    c = train(TINY, _tc(epochs=1, seed=4), tmp_path / "c", progress=False, log=_quiet)
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert a["history"][0]["test_loss"] == b["history"][0]["test_loss"]
    for k in a["params"]:
        assert a["params"][k].tobytes() == b["params"][k].tobytes()
    assert a["history"][0]["train_loss"] != c["history"][0]["train_loss"]


def test_worker_processes_train_like_one_chunk_and_resume_bit_for_bit(tmp_path):
    """workers=2 (minicrate.training.parallel.procpool): the same run up to rounding, and a stopped run resumed
    with the same workers equals the straight run bit for bit."""
    from minicrate.training.parallel import threads as parallel

    tc = _tc(epochs=1)
    one = train(TINY, tc, tmp_path / "one", progress=False, log=_quiet)
    two = train(TINY, tc, tmp_path / "two", progress=False, log=_quiet, workers=2)
    assert parallel.current_pool() is not None and parallel.current_pool().workers == 2
    assert two["history"][0]["train_loss"] == pytest.approx(one["history"][0]["train_loss"], rel=1e-4)
    for k in one["params"]:
        np.testing.assert_allclose(two["params"][k], one["params"][k], rtol=1e-3, atol=1e-4, err_msg=k)
    first = train(TINY, tc, tmp_path / "r", progress=False, log=_quiet, workers=2, stop_after_steps=9)
    assert first["steps"] == 9
    resumed = train(TINY, tc, tmp_path / "r", resume=True, progress=False, log=_quiet, workers=2)
    for k in two["params"]:
        assert resumed["params"][k].tobytes() == two["params"][k].tobytes(), k
    parallel.close_pool()


RESUME_TC = _tc(epochs=4, optimizer="lion", lr=1e-3, weight_decay=0.1)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    return train(TINY, RESUME_TC, tmp_path_factory.mktemp("straight"), progress=False, log=_quiet)


@pytest.mark.parametrize("stop_at", [2 * STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH + 7])
def test_stop_and_resume_equals_a_straight_run(tmp_path, straight_run, stop_at):
    """2 epochs, stop, 2 more == 4 epochs straight, bit for bit (also mid-epoch)."""
    first = train(TINY, RESUME_TC, tmp_path, progress=False, log=_quiet, stop_after_steps=stop_at)
    assert first["status"] == "interrupted" and first["steps"] == stop_at
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "interrupted"
    resumed = train(TINY, RESUME_TC, tmp_path, resume=True, progress=False, log=_quiet)
    assert resumed["steps"] == straight_run["steps"] == 4 * STEPS_PER_EPOCH
    for k in straight_run["params"]:
        assert resumed["params"][k].tobytes() == straight_run["params"][k].tobytes(), k
    strip = lambda hist: [{k: v for k, v in h.items() if "time" not in k} for h in hist]
    assert strip(resumed["history"]) == strip(straight_run["history"])


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real = train_module.loss_and_grads
    calls = {"n": 0}

    def poisoned(params, images, labels, config):
        calls["n"] += 1
        loss, grads, logits = real(params, images, labels, config)
        return (math.nan if calls["n"] == 30 else loss), grads, logits

    monkeypatch.setattr(train_module, "loss_and_grads", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 30 \(epoch 2, batch 7/23\)"):
        train(TINY, _tc(epochs=3), tmp_path, progress=False, log=_quiet)
    params, _, extra = ckpt.load(tmp_path / "checkpoint.npz")
    assert extra["position"]["step"] == STEPS_PER_EPOCH  # the end of epoch 1, the last good state
    assert all(np.isfinite(v).all() for v in params.values())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and "step 30" in metrics["message"]
    # The run can be resumed from the kept checkpoint once the cause is gone.
    monkeypatch.setattr(train_module, "loss_and_grads", real)
    result = train(TINY, _tc(epochs=3), tmp_path, resume=True, progress=False, log=_quiet)
    assert result["status"] == "completed" and result["steps"] == 3 * STEPS_PER_EPOCH


@pytest.mark.parametrize("clip", [1.0, None])
def test_non_finite_gradient_norm_also_stops(tmp_path, monkeypatch, clip):
    real = train_module.loss_and_grads

    def inf_grads(params, images, labels, config):
        loss, grads, logits = real(params, images, labels, config)
        grads["head.b"] = grads["head.b"] * np.inf
        return loss, grads, logits

    monkeypatch.setattr(train_module, "loss_and_grads", inf_grads)
    with pytest.raises(
        TrainingDiverged, match="gradient norm is (inf|nan) at step 1 .*no checkpoint"
    ):
        train(TINY, _tc(epochs=1, clip=clip), tmp_path, progress=False, log=_quiet)


def test_resume_refuses_a_different_run(tmp_path):
    train(TINY, _tc(epochs=1), tmp_path, progress=False, log=_quiet)
    with pytest.raises(ckpt.CheckpointError, match="depth: checkpoint 2 vs expected 3"):
        other = CRATEConfig(**{**TINY.__dict__, "depth": 3})
        train(other, _tc(epochs=2), tmp_path, resume=True, progress=False, log=_quiet)
    with pytest.raises(ckpt.CheckpointError, match="lr: checkpoint 0.003 vs now 0.01"):
        train(TINY, _tc(epochs=2, lr=1e-2), tmp_path, resume=True, progress=False, log=_quiet)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(TINY, _tc(), tmp_path / "empty", resume=True, progress=False, log=_quiet)


def test_torch_backend_follows_numpy(tmp_path):
    pytest.importorskip("torch")
    tc = _tc(epochs=1, shift=0)
    a = train(TINY, tc, tmp_path / "np", progress=False, log=_quiet)
    b = train(
        TINY,
        TrainConfig(**{**tc.__dict__, "backend": "torch"}),
        tmp_path / "torch",
        progress=False,
        log=_quiet,
    )
    assert b["history"][0]["train_loss"] == pytest.approx(a["history"][0]["train_loss"], rel=1e-4)
    np.testing.assert_allclose(
        b["params"]["head.W"].numpy(), a["params"]["head.W"], rtol=1e-3, atol=1e-4
    )


def test_bad_configs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        TrainConfig(epochs=2, warmup_epochs=-1)
    with pytest.raises(ValueError, match="28×28"):  # refused before loading MNIST
        train(TINY, _tc(data="mnist"), tmp_path, progress=False, log=_quiet)
    with pytest.raises(ValueError, match="recipe must be one of"):
        recipe("cifar")
    with pytest.raises(TypeError, match="TrainConfig"):
        train(TINY, {"epochs": 1}, tmp_path)


def test_a_warmup_longer_than_the_run_is_cut_to_it(tmp_path):
    """``--epochs 1 --warmup 2`` runs: the warm-up ends with the run (the loop caps it for every task)."""
    result = train(TINY, _tc(epochs=1, warmup_epochs=2, batch_size=512), tmp_path, progress=False,
                   log=_quiet)
    assert result["status"] == "completed" and result["steps"] == 3
    assert result["history"][-1]["lr"] == pytest.approx(3e-3)


def test_train_mae_cli_caps_the_warmup(tmp_path):
    """``minicrate train-mae --data digits --epochs 1 --warmup 2`` completes (it used to raise)."""
    from minicrate.cli import main

    out = tmp_path / "mae"
    code = main(["train-mae", "--data", "digits", "--epochs", "1", "--warmup", "2", "--dim", "16",
                 "--depth", "1", "--heads", "2", "--batch", "512", "--no-probe", "--no-progress",
                 "--out", str(out)])
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"


def test_a_checkpoint_from_before_a_recipe_field_resumes_with_its_default(tmp_path):
    """Checkpoints written before eval_every_epochs and adam_beta2 existed lack them: they ran with
    the defaults, so they resume, while a resume with another beta2 is refused, naming it."""
    train(TINY, _tc(epochs=1), tmp_path, progress=False, log=_quiet)
    path = tmp_path / "checkpoint.npz"
    params, config, extra = ckpt.load(path)
    for field in ("eval_every_epochs", "adam_beta2"):
        del extra["train_config"][field]
    ckpt.save(path, params, config, extra=extra)
    with pytest.raises(ckpt.CheckpointError, match="adam_beta2: checkpoint 0.999 vs now 0.95"):
        train(TINY, _tc(epochs=2, adam_beta2=0.95), tmp_path, resume=True, progress=False, log=_quiet)
    assert train(TINY, _tc(epochs=2), tmp_path, resume=True, progress=False, log=_quiet)["steps"] == 46
