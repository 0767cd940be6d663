"""Issue 23, item 7: crafted, damaged or old checkpoints are CheckpointErrors naming the file
and the entry, on resume and when read; evaluate refuses non-finite parameters."""

import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest

from minicrate.cli import main
from minicrate.core import checkpoint as ckpt

TINY_ARGS = ["--dim", "16", "--depth", "2", "--heads", "2", "--seed", "3", "--no-progress"]
RUN_ARGS = ["--batch", "256", *TINY_ARGS]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A completed one-epoch classifier run (6 steps of batch 256)."""
    run = tmp_path_factory.mktemp("finished")
    assert main(["train", "--epochs", "1", "--out", str(run), *RUN_ARGS]) == 0
    return run


def _variant(finished, tmp_path, mutate):
    """A copy of the run whose checkpoint's (params, config, extra) went through ``mutate``."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    path = run / "checkpoint.npz"
    params, config, extra = ckpt.load(path)
    mutate(params, config, extra)
    ckpt.save(path, params, config, extra=extra)
    return run


def _rewrite(path, header=None, members=None):
    """Rewrite an archive: ``header(meta)`` edits the JSON header, ``members`` replaces raw entries."""
    with zipfile.ZipFile(path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    if header is not None:
        blob = entries["__minicrate__.npy"]
        meta = json.loads(bytes(np.load(io.BytesIO(blob))).decode())
        header(meta)
        out = io.BytesIO()
        np.save(out, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        entries["__minicrate__.npy"] = out.getvalue()
    entries.update(members or {})
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)


def _resume_error(run, capsys):
    assert main(["train", "--epochs", "2", "--out", str(run), "--resume", *RUN_ARGS]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert str(run / "checkpoint.npz") in err, err
    return err


def _pop_step(extra):
    extra.pop("step")
    return extra


@pytest.mark.parametrize("name, mutate, entry", [
    ("no optimizer", lambda p, c, e: e.pop("optimizer"), "'optimizer'"),
    ("no step, no position", lambda p, c, e: (e.pop("step"), e.pop("position")), "'position'"),
    ("batch 999", lambda p, c, e: e["position"].update(batch=999), "'position'"),
    ("old form, batch 999", lambda p, c, e: _pop_step(e)["position"].update(batch=999), "'position'"),
    ("step past the end", lambda p, c, e: e.update(step=10**9), "'step'"),
    ("step a string", lambda p, c, e: e.update(step="7"), "'step'"),
    ("no running", lambda p, c, e: e.pop("running"), "'running'"),
    ("running keys", lambda p, c, e: e["running"].pop("seen"), "'running'"),
    ("history an int", lambda p, c, e: e.update(history=5), "'history'"),
    ("wall time a string", lambda p, c, e: e.update(wall_time_s="long"), "'wall_time_s'"),
    ("recipe an int", lambda p, c, e: e.update(train_config=3), "'train_config'"),
    ("optimizer steps", lambda p, c, e: e["optimizer"].update(t=99), "'optimizer'"),
    ("optimizer name", lambda p, c, e: e["optimizer"].update(name="lion"), "'optimizer'"),
    ("optimizer buffers", lambda p, c, e: e["optimizer"].update(buffers=7), "'optimizer.buffers'"),
    ("buffer shape", lambda p, c, e: e["optimizer"]["buffers"].update({"m/head.W": np.zeros(3)}),
     "optimizer.buffers['m/head.W']"),
    ("buffer missing", lambda p, c, e: e["optimizer"]["buffers"].pop("v/head.W"), "v/head.W"),
    ("buffer NaN", lambda p, c, e: e["optimizer"]["buffers"]["m/head.W"].fill(np.nan),
     "optimizer.buffers['m/head.W']"),
    ("parameter NaN", lambda p, c, e: p["head.W"].fill(np.nan), "'head.W'"),
])
def test_a_crafted_entry_is_refused_on_resume_naming_file_and_entry(finished, tmp_path, capsys,
                                                                    name, mutate, entry):
    run = _variant(finished, tmp_path, mutate)
    before = {f: (run / f).read_bytes() for f in os.listdir(run)}
    err = _resume_error(run, capsys)
    assert entry in err, err
    assert {f: (run / f).read_bytes() for f in os.listdir(run)} == before  # nothing written


def test_a_config_that_is_an_int_is_a_checkpoint_error(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _rewrite(run / "checkpoint.npz", header=lambda meta: meta.update(config=5))
    assert "'config'" in _resume_error(run, capsys)
    assert main(["evaluate", str(run)]) == 1
    assert "'config' must be a dict" in capsys.readouterr().err
    with pytest.raises(ckpt.CheckpointError, match="'config'"):
        ckpt.load(run / "checkpoint.npz")


@pytest.mark.parametrize("edit, entry", [
    (lambda meta: meta.update(params="head.W"), "'params'"),
    (lambda meta: meta.update(extra=[1]), "'extra'"),
    (lambda meta: meta["extra"].update(history={"__array__": ["x"]}), "'extra'"),
])
def test_a_crafted_header_is_a_checkpoint_error(finished, tmp_path, edit, entry):
    path = tmp_path / "checkpoint.npz"
    shutil.copy(finished / "checkpoint.npz", path)
    _rewrite(path, header=edit)
    with pytest.raises(ckpt.CheckpointError, match=entry) as info:
        ckpt.load(path)
    assert str(path) in str(info.value)


def test_an_entry_declaring_a_huge_shape_is_refused_before_any_allocation(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    blob = io.BytesIO()
    np.lib.format.write_array_header_1_0(blob, {"descr": "<f8", "fortran_order": False,
                                                "shape": (10**11,)})
    blob.write(b"\0" * 16)
    _rewrite(run / "checkpoint.npz", members={"params/head.W.npy": blob.getvalue()})
    with pytest.raises(ckpt.CheckpointError, match=r"entry 'params/head.W' declares shape \(100000000000,\)"):
        ckpt.load(run / "checkpoint.npz")
    assert "'params/head.W'" in _resume_error(run, capsys)
    assert main(["evaluate", str(run)]) == 1
    assert "declares shape" in capsys.readouterr().err


def test_an_entry_of_python_objects_is_refused(finished, tmp_path):
    path = tmp_path / "checkpoint.npz"
    shutil.copy(finished / "checkpoint.npz", path)
    blob = io.BytesIO()
    np.save(blob, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _rewrite(path, members={"params/head.W.npy": blob.getvalue()})
    with pytest.raises(ckpt.CheckpointError, match="'params/head.W' holds Python objects"):
        ckpt.load(path)


def test_evaluate_refuses_non_finite_parameters(finished, tmp_path, capsys):
    def poison(params, config, extra):
        params["head.W"][0, 0] = np.nan
        params["head.W"][1, 0] = np.inf

    run = _variant(finished, tmp_path, poison)
    assert main(["evaluate", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "parameter 'head.W' holds 2 of" in err and "NaN or inf" in err
    assert str(run / "checkpoint.npz") in err and "accuracy" not in err


def test_a_language_model_checkpoint_with_a_bad_lm_config(tmp_path):
    from minicrate.training.lm import load_checkpoint

    path = tmp_path / "checkpoint.npz"
    ckpt.save(path, {"w": np.zeros(2)}, None, extra={"lm_config": 5})
    with pytest.raises(ckpt.CheckpointError, match="entry 'lm_config' is not a valid LMConfig"):
        load_checkpoint(path)


def test_a_damaged_vocab_json_is_a_checkpoint_error(tmp_path):
    from minicrate.training.lm import read_vocab

    (tmp_path / "vocab.json").write_text("[1, 2")
    with pytest.raises(ckpt.CheckpointError, match="vocab.json"):
        read_vocab(tmp_path / "vocab.json")
