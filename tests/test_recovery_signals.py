"""Issue 23, item 2: a stop by signal with worker processes, and a signal before the loop.

A terminal's Ctrl-C (or ``kill -INT -PGID``) reaches every process of the foreground
group; the worker processes must leave the stop to the parent, which finishes the step,
saves and exits with code 130.
"""

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
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
@pytest.mark.skipif(cores() < 2, reason="--workers 2 needs two cores (the CLI refuses more workers than cores)")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_with_workers_saves_and_exits_130(tmp_path, sig):
    run = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "minicrate", "train", "--epochs", "40", "--workers", "2",
           "--checkpoint-every", "4", "--out", run, *TINY_ARGS]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    path = os.path.join(run, "checkpoint.npz")
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(path) and ckpt.load(path)[2]["step"] >= 5:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "training finished before the signal could be sent"
        workers = _children(proc.pid)
        os.killpg(proc.pid, sig)  # what a terminal does: the whole foreground group
        for pid in workers:  # and the workers themselves, wherever their group is
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert workers, "the run started no worker process"
    assert "Traceback" not in out and "worker process" not in out, out
    assert f"stopped by signal {sig.name} after step" in out
    metrics = json.loads(open(os.path.join(run, "metrics.json")).read())
    assert metrics["status"] == "interrupted"
    stopped_at = ckpt.load(path)[2]["step"]
    assert f"after step {stopped_at};" in out
    deadline = time.monotonic() + 10  # the parent stopped its workers on the way out
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_signal_before_the_loop_is_one_line_and_code_130(tmp_path, capsys, monkeypatch):
    from minicrate.data import images

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "load", interrupted)
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), *TINY_ARGS]) == 130
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and "interrupted" in err and "Traceback" not in err, err
    assert not run.exists() or not os.listdir(run)
