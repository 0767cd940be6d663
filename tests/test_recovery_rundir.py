"""Issue 23, items 3-6: what a run does with its directory.

3. nothing is written into a run directory before every check of the run passed (a refused
   ``train-lm --resume`` keeps its ``vocab.json``; classifier and MAE runs have none);
4. ``--out`` holding a run is refused without ``--resume`` or ``--overwrite``;
5. a second run on one directory refuses in one line (the directory is locked);
6. a full disk is one line naming the file, the partial file is removed, the previous
   checkpoint is intact, and ``.tmp`` files left by a kill go at the next start.
"""

import errno
import json
import os
import subprocess
import sys

import pytest

from minicrate.cli import main
from minicrate.core import checkpoint as ckpt
from minicrate.models.classifier import CRATEConfig
from minicrate.training import rundir
from minicrate.training.classifier import TrainConfig, train

TINY = CRATEConfig(image_size=8, patch_size=4, dim=16, depth=2, heads=2, num_classes=10, pool="mean")
TINY_ARGS = ["--dim", "16", "--depth", "2", "--heads", "2", "--seed", "3", "--no-progress"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tc(**kw):
    return TrainConfig(**{**dict(data="digits", epochs=1, batch_size=256, warmup_epochs=0, seed=3), **kw})


def _quiet(*a, **k):
    pass


def _snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _one_line(err):
    err = err.strip()
    assert err and err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A completed one-epoch classifier run of the command line (6 steps)."""
    run = tmp_path_factory.mktemp("finished")
    assert main(["train", "--epochs", "1", "--batch", "256", "--out", str(run), *TINY_ARGS]) == 0
    return run


def _copy(run, to):
    import shutil

    shutil.copytree(run, to)
    return to


# -- 3. nothing is written before every check passed ----------------------------------------------


@pytest.fixture(scope="module")
def three_plays():
    from minicrate.data.text import load_corpus

    return load_corpus(plays=["tragedies/macbeth", "comedies/twelfth-night", "roman/julius-caesar"],
                       val_plays=1)


def _lm(corpus, out, **kw):
    from minicrate.models.lm import LMConfig
    from minicrate.training.lm import LMTrainConfig, train_lm

    mc = LMConfig(vocab_size=corpus.vocab.size, form="causal", context=16, dim=8, depth=1, heads=2)
    tc = LMTrainConfig(form="causal", steps=3, batch_size=4, warmup_steps=0, eval_every=3,
                       eval_windows=4, workers=1)
    return train_lm(mc, tc, out, progress=False, corpus=corpus, log=_quiet, **kw)


def test_a_refused_lm_resume_keeps_vocab_json_and_sample_still_works(tmp_path, three_plays):
    from minicrate.data.text import load_corpus
    from minicrate.training.lm import load_run

    run = tmp_path / "lm"
    _lm(three_plays, run)
    before = _snapshot(run)
    other = load_corpus(plays=["tragedies/hamlet", "comedies/as-you-like-it"], val_plays=1)
    assert other.vocab.size != three_plays.vocab.size
    with pytest.raises(ckpt.CheckpointError, match="vocab_size"):
        _lm(other, run, resume=True)
    assert _snapshot(run) == before  # vocab.json included: nothing was written
    assert load_run(run)[2] == three_plays.vocab  # `minicrate sample` reads the run as before


def test_classifier_and_mae_runs_hold_no_vocab_json(finished, tmp_path):
    from minicrate.models.mae import mae_preset
    from minicrate.training.mae import train_mae

    assert sorted(os.listdir(finished)) == ["checkpoint.npz", "curves.png", "metrics.json"]
    config = mae_preset("digits", dim=16, depth=1, heads=2)
    train_mae(config, _tc(batch_size=512), tmp_path / "mae", progress=False, probe=False, log=_quiet)
    assert sorted(os.listdir(tmp_path / "mae")) == ["checkpoint.npz", "curves.png", "metrics.json"]


def test_a_refused_resume_writes_nothing_and_a_failed_start_leaves_no_folder(finished, tmp_path,
                                                                            monkeypatch):
    run = _copy(finished, tmp_path / "run")
    (run / "metrics.json.tmp").write_text("left by a kill")
    before = _snapshot(run)
    with pytest.raises(ckpt.CheckpointError, match="different"):
        train(TINY, _tc(lr=0.5), run, resume=True, progress=False, log=_quiet)
    assert _snapshot(run) == before
    from minicrate.training.classifier import ClassifierTask

    def broken(self):
        raise ValueError("no parameters today")

    monkeypatch.setattr(ClassifierTask, "init_params", broken)
    with pytest.raises(ValueError, match="no parameters today"):
        train(TINY, _tc(), tmp_path / "fresh", progress=False, log=_quiet)
    assert not (tmp_path / "fresh").exists()


# -- 4. an existing run is refused without --resume or --overwrite --------------------------------


def test_an_existing_run_is_refused_naming_resume_and_overwrite(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    before = _snapshot(run)
    with pytest.raises(rundir.RunExists, match="--resume.*--overwrite"):
        train(TINY, _tc(), run, progress=False, log=_quiet)
    assert _snapshot(run) == before


@pytest.mark.parametrize("command", ["train", "train-mae", "train-lm", "quickstart"])
def test_every_training_command_refuses_an_existing_run_in_one_line(tmp_path, capsys, command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"status": "completed"}\n')
    assert main([command, "--out", str(run), "--no-progress"]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert (run / "metrics.json").read_text() == '{"status": "completed"}\n'
    with pytest.raises(SystemExit) as info:  # the two exclude each other
        main([command, "--out", str(run), "--resume", "--overwrite"])
    assert info.value.code == 2


def test_overwrite_starts_again_from_scratch(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path / "run")
    (run / "vocab.json").write_text("{}")  # the previous run's files go, other files stay
    (run / "measure.json").write_text("{}")
    assert main(["train", "--epochs", "1", "--batch", "256", "--out", str(run), "--overwrite",
                 *TINY_ARGS]) == 0
    assert sorted(os.listdir(run)) == ["checkpoint.npz", "curves.png", "measure.json", "metrics.json"]
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


# -- 5. one run at a time per directory -----------------------------------------------------------


def test_a_second_run_on_a_locked_directory_refuses_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    with rundir.RunDirectory(run):
        with pytest.raises(rundir.RunInUse, match="in use"):
            train(TINY, _tc(), run, progress=False, log=_quiet)
        assert main(["train", "--epochs", "1", "--out", str(run), *TINY_ARGS]) == 1
        err = _one_line(capsys.readouterr().err)
        assert "is in use: another training run holds its lock" in err
        assert os.listdir(run) == []
    train(TINY, _tc(), run, progress=False, log=_quiet)  # released: the run goes ahead
    assert os.path.exists(run / "checkpoint.npz")


def test_two_runs_started_together_leave_one_consistent_run(tmp_path):
    run = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "minicrate", "train", "--epochs", "2", "--batch", "256",
           "--out", run, *TINY_ARGS]
    procs = [subprocess.Popen(cmd + ["--seed", str(seed)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, _, err in results if code == 1)
    assert "in use" in _one_line(loser) or "already holds a run" in loser
    metrics = json.loads(open(os.path.join(run, "metrics.json")).read())
    extra = ckpt.load(os.path.join(run, "checkpoint.npz"))[2]
    assert extra["train_config"]["seed"] == metrics["train_config"]["seed"]


# -- 6. a full disk ---------------------------------------------------------------------------------


def _no_space(*a, code=errno.ENOSPC, **k):
    raise OSError(code, os.strerror(code))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failed_metrics_write_is_one_line_and_leaves_no_partial_file(finished, tmp_path, capsys,
                                                                       monkeypatch, code):
    run = _copy(finished, tmp_path / "run")
    real_open = open

    def half_written(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if str(path).endswith("metrics.json.tmp"):
            f.write("{\n  \"status\"")  # what reached the disk before it filled up
            f.close()
            _no_space(code=code)
        return f

    monkeypatch.setattr(rundir, "open", half_written, raising=False)
    assert main(["train", "--epochs", "2", "--batch", "256", "--out", str(run), "--resume",
                 *TINY_ARGS]) == 1
    err = _one_line(capsys.readouterr().err)
    if code == errno.ENOSPC:
        assert (f"no space left on {rundir.mount_point(run)} while writing "
                f"{run / 'metrics.json'}") in err
    else:
        assert f"cannot write {run / 'metrics.json'} ({os.strerror(code)})" in err
    assert f"the previous checkpoint {run / 'checkpoint.npz'} is intact" in err
    assert sorted(os.listdir(run)) == ["checkpoint.npz", "curves.png", "metrics.json"]
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


def test_a_failed_plot_is_one_line_and_removes_the_partial_png(finished, tmp_path, capsys,
                                                               monkeypatch):
    from minicrate.measure import plotting

    def half_plotted(history, path, **kw):
        open(f"{path}.tmp.png", "wb").write(b"\x89PNG")
        _no_space()

    monkeypatch.setattr(plotting, "plot_curves", half_plotted)
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--batch", "256", "--out", str(run), *TINY_ARGS]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "while writing" in err and "curves.png" in err
    assert sorted(os.listdir(run)) == ["checkpoint.npz", "metrics.json"]


def test_tmp_files_left_by_a_kill_are_removed_at_the_next_start(finished, tmp_path):
    run = _copy(finished, tmp_path / "run")
    left = ["metrics.json.tmp", "curves.png.tmp.png", ".checkpoint.npz.k3j2.tmp", "vocab.jsonab1.tmp"]
    for name in left:
        (run / name).write_text("partial")
    (run / "notes.tmp").write_text("not ours")
    assert main(["train", "--epochs", "2", "--batch", "256", "--out", str(run), "--resume",
                 *TINY_ARGS]) == 0
    assert sorted(os.listdir(run)) == ["checkpoint.npz", "curves.png", "metrics.json", "notes.tmp"]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only); skipped, with the reason, where it cannot be mounted."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the full-disk test runs as root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_survives(small_disk, capsys):
    run = small_disk / "run"
    args = ["--batch", "256", "--out", str(run), *TINY_ARGS]
    assert main(["train", "--epochs", "1", *args]) == 0
    capsys.readouterr()
    before = _snapshot(run)
    with open(small_disk / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    assert main(["train", "--epochs", "2", "--resume", *args]) == 1
    err = _one_line(capsys.readouterr().err)
    assert f"no space left on {small_disk} while writing {run / 'checkpoint.npz'}" in err, err
    assert f"the previous checkpoint {run / 'checkpoint.npz'} is intact" in err
    assert _snapshot(run) == before  # no partial file, the checkpoint and metrics untouched
    os.unlink(small_disk / "filler")
    assert main(["train", "--epochs", "2", "--resume", *args]) == 0
    assert ckpt.load(run / "checkpoint.npz")[2]["step"] == 12
