"""The training CLI: train/evaluate/measure/attention/quickstart, and a real kill + resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minicrate.cli import main
from minicrate.commands.arguments import cores
from minicrate.core import checkpoint as ckpt

TINY_ARGS = ["--dim", "16", "--depth", "2", "--heads", "2", "--seed", "3", "--no-progress"]
PNG = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_evaluate_measure_attention(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--epochs", "2", "--out", run, *TINY_ARGS]) == 0
    out = capsys.readouterr().out
    assert "epoch   2/2" in out and "test accuracy" in out
    metrics = json.loads(open(os.path.join(run, "metrics.json")).read())
    assert metrics["status"] == "completed" and len(metrics["history"]) == 2
    assert set(metrics["history"][0]) >= {"train_loss", "test_accuracy", "wall_time_s"}
    assert metrics["model_config"]["dim"] == 16 and metrics["wall_time_s"] > 0
    assert open(os.path.join(run, "curves.png"), "rb").read(8) == PNG

    assert main(["evaluate", run]) == 0
    out = capsys.readouterr().out
    accuracy = 100 * metrics["test_accuracy"]
    assert f"accuracy {accuracy:.2f}%" in out and "per class" in out

    assert main(["measure", os.path.join(run, "checkpoint.npz"), "--images", "40"]) == 0
    out = capsys.readouterr().out
    assert "R^c trained" in out and "nonzero init" in out
    measured = json.loads(open(os.path.join(run, "measure.json")).read())
    assert len(measured["trained"]["rc"]) == 2
    assert open(os.path.join(run, "measure.png"), "rb").read(8) == PNG

    assert main(["attention", run, "--images", "2", "--out", str(tmp_path / "att.png")]) == 0
    assert open(tmp_path / "att.png", "rb").read(8) == PNG
    for layer in ("2", "-3"):  # refused from the checkpoint's header, before any data is read
        with pytest.raises(SystemExit) as info:
            main(["attention", run, "--layer", layer, "--out", str(tmp_path / "no.png")])
        assert info.value.code == 2
        assert "expected an integer from -2 to 1 (the run has 2 layers" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "no.png")


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 truncated")
    assert main(["evaluate", str(tmp_path / "junk.npz")]) == 1
    err = capsys.readouterr().err
    assert "truncated, corrupted or not an .npz archive" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # a path that does not exist: a usage error
        main(["measure", str(tmp_path / "missing")])
    assert info.value.code == 2 and "expected an existing run directory" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "fresh"), "--resume", *TINY_ARGS]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    for option, value in (("--epochs", "0"), ("--workers", "-1")):  # refused while parsing
        with pytest.raises(SystemExit) as info:
            main(["train", option, value, "--out", str(tmp_path / "z"), *TINY_ARGS])
        err = capsys.readouterr().err
        assert info.value.code == 2 and f"argument {option}: got '{value}'; expected" in err
        assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.skipif(cores() < 2, reason="--workers 2 needs two cores (the CLI refuses more workers than cores)")
def test_train_workers_flag_splits_the_batch_over_processes(tmp_path, capsys, monkeypatch):
    from minicrate.training.parallel import threads as parallel

    seen = []
    real = parallel.loss_and_grads
    monkeypatch.setattr(parallel, "loss_and_grads", lambda *a, **k: seen.append(k) or real(*a, **k))
    run = str(tmp_path / "run")
    assert main(["train", "--epochs", "1", "--workers", "2", "--out", run, *TINY_ARGS]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert seen and all(k["workers"] == 2 for k in seen)
    assert parallel.current_pool() is not None
    parallel.close_pool()


def test_quickstart_writes_everything(tmp_path, capsys):
    out = str(tmp_path / "qs")
    assert main(["quickstart", "--epochs", "1", "--out", out, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "TEST ACCURACY:" in text and "held-out digits" in text and "R^c trained" in text
    for name in (
        "checkpoint.npz",
        "metrics.json",
        "curves.png",
        "measure.json",
        "measure.png",
        "attention.png",
    ):
        assert os.path.getsize(os.path.join(out, name)) > 0, name


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run: 5 epochs (115 steps)."""
    run = str(tmp_path_factory.mktemp("straight"))
    assert main(["train", "--epochs", "5", "--out", run, *TINY_ARGS]) == 0
    return ckpt.load(os.path.join(run, "checkpoint.npz"))


def _start_and_stop(run, sig, *, after_step):
    """Start ``minicrate train`` in a subprocess; send ``sig`` once a checkpoint
    at or past ``after_step`` exists (mid-epoch: checkpoints every 4 steps)."""
    cmd = [
        sys.executable,
        "-m",
        "minicrate",
        "train",
        "--epochs",
        "5",
        "--out",
        run,
        "--checkpoint-every",
        "4",
        *TINY_ARGS,
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    path = os.path.join(run, "checkpoint.npz")
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(path):
                step = ckpt.load(path)[2]["position"]["step"]
                if step >= after_step:
                    break
            time.sleep(0.005)
        assert proc.poll() is None, "training finished before the signal could be sent"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


def _assert_same_params(run, straight):
    params, _, extra = ckpt.load(os.path.join(run, "checkpoint.npz"))
    ref_params, _, ref_extra = straight
    assert extra["position"] == ref_extra["position"] == {"epoch": 5, "batch": 0, "step": 115}
    for k in ref_params:
        assert params[k].tobytes() == ref_params[k].tobytes(), k
    strip = lambda hist: [{k: v for k, v in h.items() if "time" not in k} for h in hist]
    assert strip(extra["history"]) == strip(ref_extra["history"])


def test_killed_mid_epoch_resumes_to_the_same_result(tmp_path, straight):
    """SIGKILL (no chance to clean up): resume from the last checkpoint on disk."""
    run = str(tmp_path / "killed")
    code, _ = _start_and_stop(run, signal.SIGKILL, after_step=9)
    assert code == -signal.SIGKILL
    params, _, extra = ckpt.load(os.path.join(run, "checkpoint.npz"))  # intact despite the kill
    assert 9 <= extra["position"]["step"] < 115 and extra["status"] == "running"
    assert main(["train", "--epochs", "5", "--out", run, "--resume", *TINY_ARGS]) == 0
    _assert_same_params(run, straight)


def test_sigint_saves_between_steps_and_resumes(tmp_path, straight, capsys):
    run = str(tmp_path / "interrupted")
    code, out = _start_and_stop(run, signal.SIGINT, after_step=5)
    assert code == 130, out
    assert "stopped by signal SIGINT after step" in out and "--resume" in out
    metrics = json.loads(open(os.path.join(run, "metrics.json")).read())
    assert metrics["status"] == "interrupted"
    stopped_at = ckpt.load(os.path.join(run, "checkpoint.npz"))[2]["position"]["step"]
    assert f"after step {stopped_at};" in out  # the checkpoint is the exact stopping point
    assert main(["train", "--epochs", "5", "--out", run, "--resume", *TINY_ARGS]) == 0
    assert "resumed" in capsys.readouterr().out
    _assert_same_params(run, straight)
