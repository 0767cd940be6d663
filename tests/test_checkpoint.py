"""Checkpoints: bit-exact round trip, atomic writes, clear errors on bad files."""

import dataclasses
import os
import zipfile

import numpy as np
import pytest

from minicrate.core import checkpoint
from minicrate.core.backend import get_backend, to_numpy
from minicrate.core.checkpoint import CheckpointError, check_config, check_params, load, save
from minicrate.models.classifier import CRATEConfig, init_params
from minicrate.training.optim import AdamW

TINY = CRATEConfig(image_size=4, patch_size=2, dim=8, depth=2, heads=2, num_classes=3)


def _saved(tmp_path, name="ck.npz", **extra):
    params = init_params(TINY, seed=1)
    path = save(tmp_path / name, params, TINY, extra={"epoch": 3, **extra})
    return path, params


def test_round_trip_is_bit_exact_with_optimizer_state(tmp_path):
    params = init_params(TINY, seed=1)
    grads = {k: np.ones_like(v) * 0.1 for k, v in params.items()}
    opt = AdamW(1e-3)
    opt.step(params, grads)
    extra = {
        "epoch": 2,
        "step": 17,
        "optimizer": opt.state_dict(),
        "history": [{"epoch": 1, "loss": 0.5, "acc": None}],
        "note": "hello",
        "seed_array": np.arange(3, dtype=np.int64),
    }
    save(tmp_path / "c.npz", params, TINY, extra=extra)
    loaded, config, extra2 = load(tmp_path / "c.npz", config_cls=CRATEConfig)
    assert config == TINY and isinstance(config, CRATEConfig)
    # without a class the stored dict comes back: the checkpoint module imports no model
    assert load(tmp_path / "c.npz")[1] == dataclasses.asdict(TINY)
    assert list(loaded) == list(params)
    for k in params:
        assert loaded[k].dtype == params[k].dtype
        assert loaded[k].tobytes() == params[k].tobytes()
    assert extra2["epoch"] == 2 and extra2["step"] == 17 and extra2["note"] == "hello"
    assert extra2["history"] == [{"epoch": 1, "loss": 0.5, "acc": None}]
    np.testing.assert_array_equal(extra2["seed_array"], np.arange(3))
    buffers = extra2["optimizer"]["buffers"]
    for key, value in opt.state_dict()["buffers"].items():
        assert buffers[key].tobytes() == value.tobytes()
    restored = AdamW(1e-3).load_state_dict(extra2["optimizer"], like=loaded)
    assert restored.t == 1


def test_saves_params_from_other_backends(tmp_path):
    pytest.importorskip("torch")
    torch_params = init_params(TINY, seed=2, backend="torch")
    save(tmp_path / "t.npz", torch_params, TINY)
    loaded, _, _ = load(tmp_path / "t.npz")
    np.testing.assert_array_equal(loaded["layers.0.U"], to_numpy(torch_params["layers.0.U"]))


def test_strict_backend_params_round_trip(tmp_path):
    strict_params = init_params(TINY, seed=2, backend=get_backend("array_api_strict"))
    save(tmp_path / "s.npz", strict_params, TINY)
    loaded, _, _ = load(tmp_path / "s.npz")
    np.testing.assert_array_equal(loaded["head.W"], to_numpy(strict_params["head.W"]))


def test_write_is_atomic_when_saving_fails(tmp_path):
    path, params = _saved(tmp_path)
    before = open(path, "rb").read()
    with pytest.raises(TypeError, match="extra"):
        save(path, params, TINY, extra={"bad": object()})
    assert open(path, "rb").read() == before  # old checkpoint untouched
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]  # no temporary left behind


def test_write_goes_through_a_temporary_and_os_replace(tmp_path, monkeypatch):
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((os.path.basename(src), os.path.basename(dst)))
        assert os.path.exists(src) and zipfile.is_zipfile(src)  # complete before the rename
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", spy)
    _saved(tmp_path)
    assert len(calls) == 1 and calls[0][1] == "ck.npz" and calls[0][0].endswith(".tmp")


def test_truncated_file_gives_clear_error(tmp_path):
    path, _ = _saved(tmp_path)
    data = open(path, "rb").read()
    for cut in (10, len(data) // 2, len(data) - 30):
        with open(tmp_path / "cut.npz", "wb") as f:
            f.write(data[:cut])
        with pytest.raises(CheckpointError, match="truncated|corrupted"):
            load(tmp_path / "cut.npz")


def test_corrupted_bytes_give_clear_error(tmp_path):
    path, _ = _saved(tmp_path)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    with open(tmp_path / "bad.npz", "wb") as f:
        f.write(bytes(data))
    with pytest.raises(CheckpointError):
        load(tmp_path / "bad.npz")


def test_foreign_files_give_clear_errors(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    with pytest.raises(CheckpointError, match="not a minicrate checkpoint"):
        load(tmp_path / "other.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(CheckpointError, match="single .npy"):
        load(tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("hello, not a zip file")
    with pytest.raises(CheckpointError, match="not a readable minicrate checkpoint"):
        load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load(tmp_path / "missing.npz")
    with pytest.raises(CheckpointError, match="directory"):
        load(tmp_path)


def test_newer_format_version_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "VERSION", checkpoint.VERSION + 1)
    path, _ = _saved(tmp_path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="format version 2"):
        load(path)


def test_config_mismatch_names_the_fields(tmp_path):
    path, params = _saved(tmp_path)
    other = CRATEConfig(
        image_size=4, patch_size=2, dim=8, depth=3, heads=2, num_classes=3, pool="mean"
    )
    with pytest.raises(CheckpointError, match="depth: checkpoint 2 vs expected 3.*pool"):
        load(path, expect_config=other)
    load(path, expect_config=TINY)  # the right config passes
    with pytest.raises(CheckpointError, match=r"layers\.2\.U"):
        check_params(params, init_params(other))
    bad = dict(params, **{"head.W": np.zeros((3, 9), np.float32)})
    with pytest.raises(CheckpointError, match=r"head\.W: \(3, 9\) vs \(3, 8\)"):
        check_params(bad, params)
    check_config(TINY, TINY)


def test_unknown_config_fields_are_reported(tmp_path):
    params = init_params(TINY)
    save(tmp_path / "x.npz", params, {**TINY.__dict__, "wings": 2})
    with pytest.raises(CheckpointError, match="wings"):
        load(tmp_path / "x.npz", config_cls=CRATEConfig)
