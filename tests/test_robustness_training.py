"""Malformed input to the training modules gives a documented error (issue 9).

tests/test_robustness.py drives the blocks, rates and the model; this file covers
what it leaves out: :mod:`minicrate.training.optim`, :mod:`minicrate.core.checkpoint` and
:mod:`minicrate.training.classifier`.  Every case is a call that must raise ``ValueError`` or
``TypeError`` (``CheckpointError`` is a ``ValueError``) with a message naming the
argument, what it got and what was expected -- never an ``AttributeError``,
``IsADirectoryError`` or a message from deep inside NumPy -- and a few checks
show that valid calls are unaffected.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math

import array_api_strict as xs
import numpy as np
import pytest

from minicrate.core import checkpoint as ckpt
from minicrate.core.validate import finite_checks
from minicrate.models.classifier import init_params, preset
from minicrate.training.classifier import TrainConfig, evaluate, train
from minicrate.training.optim import SGD, AdamW, Lion, clip_by_global_norm, global_norm, make_optimizer

HAS_TORCH = importlib.util.find_spec("torch") is not None
DIGITS = preset("digits")


def _f64(*values):
    return np.asarray(values, dtype=np.float64)


def _two(a=(1.0, 2.0), b=(3.0, 4.0)):
    """A two-parameter dict; the second key shows the error names the right one."""
    return {"a": _f64(*a), "b": _f64(*b)}


def _strict(values, device=None):
    kw = {} if device is None else {"device": xs.Device(device)}
    return xs.asarray(values, dtype=xs.float64, **kw)


def _saved_adamw_state():
    opt = AdamW(0.1)
    opt.step({"w": _f64(1.0)}, {"w": _f64(0.5)})
    return opt.state_dict()


# ----------------------------------------------------------------------------
# minicrate.training.optim

OPTIM_CASES = [
    # step: what params and grads may hold
    (
        lambda: SGD(0.1).step({"w": [1.0, 2.0]}, {"w": _f64(1, 2)}),
        TypeError,
        r"params\['w'\] must be an array, got list \[1\.0, 2\.0\]",
    ),
    (
        lambda: SGD(0.1).step({"w": _f64(1, 2)}, {"w": [1.0, 2.0]}),
        TypeError,
        r"grads\['w'\] must be an array, got list",
    ),
    (
        lambda: SGD(0.1).step([_f64(1)], {"w": _f64(1)}),
        TypeError,
        r"params must be a dict of arrays \{key: array\}, got list",
    ),
    (
        lambda: SGD(0.1).step({"w": _f64(1)}, None),
        TypeError,
        r"grads must be a dict of arrays \{key: array\}, got NoneType",
    ),
    (
        lambda: SGD(0.1).step({"w": np.arange(3)}, {"w": np.arange(3)}),
        TypeError,
        r"params\['w'\] must have a real floating dtype \(float32 or float64\), "
        r"got shape \(3,\) int64",
    ),
    (
        lambda: SGD(0.1).step({"w": np.ones(3, bool)}, {"w": np.ones(3)}),
        TypeError,
        r"params\['w'\] must have a real floating dtype .*got shape \(3,\) bool",
    ),
    (
        lambda: SGD(0.1).step({"w": np.ones(3)}, {"w": np.ones(3, np.int64)}),
        TypeError,
        r"grads\['w'\] must have the backend and dtype of params\['w'\] "
        r"\(numpy\.ndarray float64\), got numpy\.ndarray int64",
    ),
    (
        lambda: SGD(0.1).step({"w": np.ones(3)}, {"w": np.ones(3, np.float32)}),
        TypeError,
        r"grads\['w'\] must have the backend and dtype of params\['w'\] "
        r"\(numpy\.ndarray float64\), got numpy\.ndarray float32",
    ),
    (
        lambda: SGD(0.1).step({"w": np.ones(2)}, {"w": _strict([1.0, 1.0])}),
        TypeError,
        r"grads\['w'\] must have the backend and dtype of params\['w'\] "
        r"\(numpy\.ndarray float64\), got array_api_strict\.",
    ),
    (
        lambda: SGD(0.1).step(
            {"w": _strict([1.0, 1.0])}, {"w": _strict([1.0, 1.0], device="device1")}
        ),
        ValueError,
        r"grads\['w'\] must live on the device of params\['w'\] \(.*CPU_DEVICE.*\), "
        r"got .*device1",
    ),
    (
        lambda: SGD(0.1).step({"w": np.ones(2)}, {"w": np.ones(3)}),
        ValueError,
        r"grads\['w'\] has shape \(3,\), expected \(2,\)",
    ),
    (
        lambda: SGD(0.1).step(_two(b=(1.0, math.nan)), _two()),
        ValueError,
        r"params\['b'\] contains NaN or inf values \(shape \(2,\) float64\)",
    ),
    (
        lambda: AdamW(0.1).step(_two(), _two(b=(math.inf, 1.0))),
        ValueError,
        r"grads\['b'\] contains NaN or inf values \(shape \(2,\) float64\)",
    ),
    (
        lambda: Lion(0.1).step(_two(), _two(a=(-math.inf, 1.0))),
        ValueError,
        r"grads\['a'\] contains NaN or inf values",
    ),
    (
        lambda: SGD(0.1).step(_two(), _two(), lr="x"),
        TypeError,
        r"lr must be a real number, got str 'x'",
    ),
    (
        lambda: SGD(0.1).step(_two(), _two(), lr=math.nan),
        ValueError,
        r"lr must be finite and >= 0, got nan",
    ),
    # constructors
    (
        lambda: AdamW(0.1, betas=0.9),
        TypeError,
        r"betas must be a pair \(beta1, beta2\) of numbers in \[0, 1\), got float 0\.9",
    ),
    (
        lambda: Lion(0.1, betas=(0.9,)),
        TypeError,
        r"betas must be a pair \(beta1, beta2\) .*got tuple \(0\.9,\)",
    ),
    (lambda: AdamW(0.1, betas="ab"), TypeError, r"betas must be a pair .*got str 'ab'"),
    (
        lambda: AdamW(0.1, betas=(0.9, "x")),
        TypeError,
        r"betas\[1\] must be a real number, got str 'x'",
    ),
    (lambda: Lion(0.1, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0, 1\), got 1\.0"),
    (lambda: AdamW(0.1, eps=0), ValueError, r"eps must be finite and > 0, got 0"),
    (lambda: AdamW(0.1, eps="x"), TypeError, r"eps must be a real number, got str 'x'"),
    (lambda: SGD(0.1, momentum="x"), TypeError, r"momentum must be a real number, got str 'x'"),
    (lambda: SGD(math.inf), ValueError, r"lr must be finite and >= 0, got inf"),
    (
        lambda: SGD(0.1, weight_decay=-1),
        ValueError,
        r"weight_decay must be finite and >= 0, got -1",
    ),
    (
        lambda: SGD(0.1, decay=3),
        TypeError,
        r"decay must be None or a function decay\(key\) -> bool, got int 3",
    ),
    # load_state_dict
    (
        lambda: AdamW(0.1).load_state_dict(None),
        TypeError,
        r"state must be a dict from state_dict\(\) \(keys 'name', 't', 'buffers'\), "
        r"got NoneType None",
    ),
    (
        lambda: AdamW(0.1).load_state_dict({"name": "adamw"}),
        ValueError,
        r"state is missing \['t', 'buffers'\]; expected a dict from state_dict\(\)",
    ),
    (
        lambda: AdamW(0.1).load_state_dict({"name": "adamw", "t": 1, "buffers": [1]}),
        TypeError,
        r"state\['buffers'\] must be a dict of arrays, got list",
    ),
    (
        lambda: AdamW(0.1).load_state_dict({**_saved_adamw_state(), "t": -1}),
        ValueError,
        r"state\['t'\] must be >= 0, got -1",
    ),
    (
        lambda: AdamW(0.1).load_state_dict({**_saved_adamw_state(), "t": 1.5}),
        TypeError,
        r"state\['t'\] must be an integer, got float 1\.5",
    ),
    (
        lambda: AdamW(0.1).load_state_dict(_saved_adamw_state(), like=[1]),
        TypeError,
        r"like must be a dict of arrays \{key: array\}, got list",
    ),
    (
        lambda: SGD(0.1).load_state_dict(_saved_adamw_state()),
        ValueError,
        r"optimizer state is for 'adamw', cannot load it into 'sgd'",
    ),
    (
        # a state loaded without like= stays NumPy; stepping strict params names the buffer
        lambda: (
            AdamW(0.1)
            .load_state_dict(_saved_adamw_state())
            .step({"w": _strict([1.0])}, {"w": _strict([0.5])})
        ),
        TypeError,
        r"optimizer state m\['w'\] must have the backend and dtype of params\['w'\] .*"
        r"got numpy\.ndarray float64; load_state_dict\(state, like=params\)",
    ),
    # make_optimizer and clipping
    (
        lambda: make_optimizer("sgd", lr="x"),
        TypeError,
        r"lr must be a real number, got str 'x'",
    ),
    (
        lambda: make_optimizer("adamw", 0.1, weight_decay="x"),
        TypeError,
        r"weight_decay must be a real number, got str 'x'",
    ),
    (
        lambda: make_optimizer("sgd", 0.1, betas=(0.9, 0.99)),
        TypeError,
        r"optimizer 'sgd' has no option \['betas'\]; its options are "
        r"\['momentum', 'nesterov', 'weight_decay'\]",
    ),
    (
        lambda: make_optimizer(["sgd"], 0.1),
        ValueError,
        r"optimizer must be one of \('sgd', 'adamw', 'lion'\), got \['sgd'\]",
    ),
    (
        lambda: clip_by_global_norm(_two(), max_norm="x"),
        TypeError,
        r"max_norm must be a real number, got str 'x'",
    ),
    (
        lambda: clip_by_global_norm(_two(), max_norm=0),
        ValueError,
        r"max_norm must be finite and > 0, got 0",
    ),
    (
        lambda: clip_by_global_norm(_two(), max_norm=math.nan),
        ValueError,
        r"max_norm must be finite and > 0, got nan",
    ),
    (
        lambda: clip_by_global_norm([_f64(1.0)], 1.0),
        TypeError,
        r"grads must be a dict of arrays \{key: array\}, got list",
    ),
    (
        lambda: clip_by_global_norm({"w": [3.0, 4.0]}, 1.0),
        TypeError,
        r"grads\['w'\] must be an array, got list \[3\.0, 4\.0\]",
    ),
    (
        lambda: global_norm({"w": np.arange(3)}),
        TypeError,
        r"grads\['w'\] must have a real floating dtype .*got shape \(3,\) int64",
    ),
]

if HAS_TORCH:
    import torch

    OPTIM_CASES.append(
        (
            lambda: AdamW(0.1).step({"w": torch.ones(2, dtype=torch.float64)}, {"w": np.ones(2)}),
            TypeError,
            r"grads\['w'\] must have the backend and dtype of params\['w'\] "
            r"\(torch\.Tensor torch\.float64\), got numpy\.ndarray float64",
        )
    )


@pytest.mark.parametrize("call, error, pattern", OPTIM_CASES)
def test_optim_errors_name_the_argument(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_failed_step_changes_nothing():
    """A refused step leaves the parameters, the step counter and the state alone."""
    opt = AdamW(0.1)
    params = _two()
    opt.step(params, _two(a=(0.5, 0.5), b=(0.5, 0.5)))
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match=r"grads\['b'\]"):
        opt.step(params, _two(b=(math.nan, 0.0)))
    with pytest.raises(TypeError, match="lr must be a real number"):
        opt.step(params, _two(), lr="x")
    assert opt.t == 1
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])
    assert all(math.isfinite(float(v.sum())) for d in opt.state.values() for v in d.values())
    # a state buffer of the wrong kind for the *second* key: the first is not updated either
    mixed = {"a": params["a"], "b": _strict([3.0, 4.0])}
    with pytest.raises(TypeError, match=r"optimizer state m\['b'\]"):
        opt.step(mixed, {"a": _f64(1.0, 1.0), "b": _strict([1.0, 1.0])})
    assert opt.t == 1
    np.testing.assert_array_equal(mixed["a"], before["a"])


def test_finite_scan_follows_finite_checks():
    """Inside ``finite_checks(False)`` (the training loops, which check the
    gradient norm themselves) step skips its NaN/inf scan; the type checks stay."""
    params = _two()
    with finite_checks(False):
        SGD(0.1, momentum=0.0).step(params, _two(b=(math.nan, 1.0)))
        with pytest.raises(TypeError, match=r"params\['w'\] must be an array"):
            SGD(0.1).step({"w": [1.0]}, {"w": [1.0]})
    assert math.isnan(params["b"][0]) and np.isfinite(params["a"]).all()


def test_valid_inputs_still_work():
    # NumPy float32, array_api_strict, numpy scalars as hyper-parameters, a loaded state
    for params, grads in (
        ({"w": np.ones(3, np.float32)}, {"w": np.full(3, 0.5, np.float32)}),
        ({"w": _strict([1.0, 2.0])}, {"w": _strict([0.5, 0.5])}),
    ):
        opt = AdamW(np.float32(0.1), betas=[0.9, np.float64(0.99)], eps=np.float64(1e-8))
        opt.step(params, grads)
        assert params["w"].dtype == grads["w"].dtype
        again = AdamW(0.1).load_state_dict(opt.state_dict(), like=params)
        again.step(params, grads)
        assert again.t == 2
    opt = make_optimizer("lion", 0.1, betas=(0.9, 0.99))
    assert opt.betas == (0.9, 0.99)
    clipped, norm = clip_by_global_norm({"w": _f64(3.0, 4.0)}, np.float32(1.0))
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["w"], [0.6, 0.8])
    # a non-finite gradient is still reported by the norm, not refused (train() stops on it)
    _, bad = clip_by_global_norm({"w": _f64(math.nan, 1.0)}, 1.0)
    assert math.isnan(bad)


# ----------------------------------------------------------------------------
# minicrate.core.checkpoint


def test_save_to_a_directory_is_a_checkpoint_error(tmp_path):
    params = {"w": np.ones(2)}
    (tmp_path / "old.txt").write_text("x")
    for target in (tmp_path, str(tmp_path) + "/", str(tmp_path / "not-yet") + "/"):
        with pytest.raises(ckpt.CheckpointError, match=r"is a directory, not a checkpoint file"):
            ckpt.save(target, params, DIGITS)
    # the same mistake on load gives the same error class
    with pytest.raises(ckpt.CheckpointError, match="directory"):
        ckpt.load(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]  # nothing written
    assert issubclass(ckpt.CheckpointError, ValueError)


def test_save_message_suggests_a_file_name(tmp_path):
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.save(tmp_path, {"w": np.ones(2)}, DIGITS)
    assert str(tmp_path / "checkpoint.npz") in str(info.value)


CHECKPOINT_CASES = [
    (
        lambda d: ckpt.save(None, {"w": np.ones(2)}, DIGITS),
        TypeError,
        r"path must be a file name \(str or os\.PathLike\), got NoneType None",
    ),
    (
        lambda d: ckpt.save("", {"w": np.ones(2)}, DIGITS),
        ValueError,
        r"path must be a file name such as 'checkpoint\.npz', got ''",
    ),
    (
        lambda d: ckpt.load(3),
        TypeError,
        r"path must be a file name \(str or os\.PathLike\), got int 3",
    ),
    (
        lambda d: ckpt.save(d / "a.npz", {"w": [1.0, 2.0]}, DIGITS),
        TypeError,
        r"params\['w'\] must be an array, got list \[1\.0, 2\.0\]",
    ),
    (
        lambda d: ckpt.save(d / "a.npz", {}, DIGITS),
        TypeError,
        r"params must be a non-empty dict of arrays, got an empty dict",
    ),
    (
        lambda d: ckpt.save(d / "a.npz", [np.ones(2)], DIGITS),
        TypeError,
        r"params must be a non-empty dict of arrays, got list",
    ),
]


@pytest.mark.parametrize("call, error, pattern", CHECKPOINT_CASES)
def test_checkpoint_errors_name_the_argument(tmp_path, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(tmp_path)
    assert not (tmp_path / "a.npz").exists()


# ----------------------------------------------------------------------------
# minicrate.training.classifier: TrainConfig

TRAIN_CONFIG_CASES = [
    ({"lr": "x"}, TypeError, r"lr must be a real number, got str 'x'"),
    ({"lr": 0}, ValueError, r"lr must be finite and > 0, got 0"),
    ({"lr": math.inf}, ValueError, r"lr must be finite and > 0, got inf"),
    ({"epochs": 2.5}, TypeError, r"epochs must be an integer, got float 2\.5"),
    ({"epochs": True}, TypeError, r"epochs must be an integer, got True"),
    ({"epochs": 0}, ValueError, r"epochs must be >= 1, got 0"),
    ({"batch_size": "64"}, TypeError, r"batch_size must be an integer, got str '64'"),
    ({"batch_size": 0}, ValueError, r"batch_size must be >= 1, got 0"),
    ({"weight_decay": -1}, ValueError, r"weight_decay must be finite and >= 0, got -1"),
    ({"weight_decay": None}, TypeError, r"weight_decay must be a real number, got NoneType"),
    (
        {"optimizer": "x"},
        ValueError,
        r"optimizer must be one of \('sgd', 'adamw', 'lion'\), got 'x'",
    ),
    (
        {"backend": "x"},
        ValueError,
        r"backend must be one of \('numpy', 'array_api_strict', 'torch', 'cupy'\), got 'x'",
    ),
    ({"data": "x"}, ValueError, r"data must be one of \('digits', 'mnist'\), got 'x'"),
    ({"data": None}, ValueError, r"data must be one of \('digits', 'mnist'\), got None"),
    ({"warmup_epochs": math.nan}, ValueError, r"warmup_epochs must be finite and >= 0, got nan"),
    ({"warmup_epochs": -1}, ValueError, r"warmup_epochs must be finite and >= 0, got -1"),
    ({"min_lr": -1}, ValueError, r"min_lr must be finite and >= 0, got -1"),
    ({"min_lr": 0.1, "lr": 0.01}, ValueError, r"min_lr must be <= lr = 0\.01, got 0\.1"),
    ({"test_size": -5}, ValueError, r"test_size must be >= 1, got -5"),
    ({"test_size": 0.2}, TypeError, r"test_size must be an integer, got float 0\.2"),
    ({"split_seed": -1}, ValueError, r"split_seed must be >= 0, got -1"),
    ({"seed": 1.5}, TypeError, r"seed must be an integer, got float 1\.5"),
    ({"clip": 0}, ValueError, r"clip must be finite and > 0, got 0"),
    ({"clip": "x"}, TypeError, r"clip must be a real number, got str 'x'"),
    ({"shift": -1}, ValueError, r"shift must be >= 0, got -1"),
    ({"eval_batch_size": 0}, ValueError, r"eval_batch_size must be >= 1, got 0"),
    ({"checkpoint_every": -2}, ValueError, r"checkpoint_every must be >= 0, got -2"),
]


@pytest.mark.parametrize("kwargs, error, pattern", TRAIN_CONFIG_CASES)
def test_train_config_errors_name_the_field(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        TrainConfig(**kwargs)
    # dataclasses.replace runs the same checks
    with pytest.raises(error, match=pattern):
        dataclasses.replace(TrainConfig(), **kwargs)


def test_train_config_normalises_numbers_to_plain_python():
    tc = TrainConfig(
        epochs=np.int64(3),
        lr=np.float32(0.5),
        warmup_epochs=1,
        test_size=np.int32(100),
        clip=2,
    )
    assert (type(tc.epochs), type(tc.test_size)) == (int, int)
    assert (type(tc.lr), type(tc.warmup_epochs), type(tc.clip)) == (float, float, float)
    assert tc.lr == 0.5 and tc.warmup_epochs == 1.0
    json.dumps(dataclasses.asdict(tc))  # metrics.json and the checkpoint hold it as JSON
    assert TrainConfig(clip=None, test_size=None).clip is None


# ----------------------------------------------------------------------------
# minicrate.training.classifier: evaluate and train


@pytest.fixture(scope="module")
def digits_params():
    return init_params(DIGITS, seed=0)


def _images(n):
    return np.random.default_rng(0).normal(size=(n, 1, 8, 8)).astype(np.float32)


def _labels(n):
    return np.arange(n, dtype=np.int64) % 10


EVALUATE_CASES = [
    (
        lambda p: evaluate(p, DIGITS, _images(5), _labels(5), batch_size=0),
        ValueError,
        r"batch_size must be >= 1, got 0",
    ),
    (
        lambda p: evaluate(p, DIGITS, _images(5), _labels(5), batch_size=2.5),
        TypeError,
        r"batch_size must be an integer, got float 2\.5",
    ),
    (
        lambda p: evaluate(p, DIGITS, _images(0), _labels(0)),
        ValueError,
        r"images must hold at least one image, got shape \(0, 1, 8, 8\) float32",
    ),
    (
        lambda p: evaluate(p, DIGITS, _images(5), _labels(3)),
        ValueError,
        r"labels must have one entry per image \(5\), got shape \(3,\) int64",
    ),
    (
        lambda p: evaluate(p, DIGITS, _images(5), _labels(5).astype(np.float64)),
        TypeError,
        r"labels must be integers, got shape \(5,\) float64",
    ),
    (
        lambda p: evaluate(p, DIGITS, _images(5)[0], _labels(5)),
        ValueError,
        r"images must have shape \(n, C, H, W\), got shape \(1, 8, 8\) float32",
    ),
    (
        lambda p: evaluate(p, DIGITS, _images(5), list(range(5))),
        TypeError,
        r"labels must be a NumPy array \(n,\) integers, got list",
    ),
    (
        lambda p: evaluate(p, None, _images(5), _labels(5)),
        TypeError,
        r"config must be a CRATEConfig, got NoneType",
    ),
    (
        lambda p: evaluate({}, DIGITS, _images(5), _labels(5)),
        ValueError,
        r"params is missing \['head\.W'\]",
    ),
]


@pytest.mark.parametrize("call, error, pattern", EVALUATE_CASES)
def test_evaluate_errors_name_the_argument(digits_params, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(digits_params)


def test_evaluate_small_sets_and_batches(digits_params):
    whole = evaluate(digits_params, DIGITS, _images(5), _labels(5), batch_size=500)
    batched = evaluate(digits_params, DIGITS, _images(5), _labels(5), batch_size=np.int64(2))
    np.testing.assert_array_equal(whole["predictions"], batched["predictions"])
    assert whole["loss"] == pytest.approx(batched["loss"], rel=1e-6)
    one = evaluate(digits_params, DIGITS, _images(1), _labels(1))
    assert one["predictions"].shape == (1,) and math.isfinite(one["loss"])


TRAIN_CASES = [
    (
        lambda d: train(DIGITS, TrainConfig(), None),
        TypeError,
        r"out_dir must be a directory name, got NoneType None",
    ),
    (
        lambda d: train(DIGITS, TrainConfig(), d / "file.txt"),
        ValueError,
        r"out_dir '.*file\.txt' is a file; the run needs a directory",
    ),
    (
        lambda d: train(DIGITS, TrainConfig(), d / "run", stop_after_steps=0),
        ValueError,
        r"stop_after_steps must be >= 1, got 0",
    ),
    (
        lambda d: train(DIGITS, TrainConfig(), d / "run", threads=-1),
        ValueError,
        r"threads must be >= 0, got -1",
    ),
    (
        lambda d: train(DIGITS, {"lr": 0.1}, d / "run"),
        TypeError,
        r"train_config must be a TrainConfig, got dict",
    ),
]


@pytest.mark.parametrize("call, error, pattern", TRAIN_CASES)
def test_train_arguments_are_checked_before_any_work(tmp_path, call, error, pattern):
    (tmp_path / "file.txt").write_text("not a run")
    with pytest.raises(error, match=pattern):
        call(tmp_path)
    assert not (tmp_path / "run").exists()  # refused before creating the run directory
