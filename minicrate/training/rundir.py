"""The run directory and what happens around a training loop: signals, progress, files.

A run directory holds ``checkpoint.npz`` (the latest state), ``metrics.json``
(configs, history, wall time, status) and ``curves.png``; a language-model run
adds ``vocab.json``.  :func:`minicrate.training.loop.fit` uses these helpers for
every task.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

from minicrate.core.checkpoint import CheckpointError

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
CURVES = "curves.png"
VOCAB = "vocab.json"


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written between two steps."""


def checkpoint_path(run_or_file):
    """A checkpoint file given either itself or a run directory."""
    path = os.fspath(run_or_file)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (give a run directory or a .npz file)")
    return path


def write_json(path, data):
    """Write ``data`` as indented JSON, atomically (a reader never sees half a file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def check_resumable(saved, now, free, source):
    """Raise :class:`CheckpointError` unless the recipe ``now`` (a dict) equals the
    checkpoint's ``saved`` one on every field outside ``free`` (fields that may change
    on resume without changing what the run computes, e.g. ``epochs`` or ``backend``)."""
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}"
        for k in now
        if k not in free and saved.get(k) != now[k]
    ]
    if diffs:
        raise CheckpointError(
            f"{source} was trained with a different recipe; resuming would not continue the same "
            "run (" + "; ".join(diffs) + ")"
        )


@contextlib.contextmanager
def limit_threads(n=1):
    """Limit NumPy's BLAS threads (``threadpoolctl``, installed with scikit-learn).

    CRATE's matrices here are tiny (d ≤ 128, N ≤ 50), so one thread per
    process is fastest; several threads mostly wait on each other, badly so on
    a shared machine.  ``n=None`` or ``0`` leaves the setting alone, and
    without ``threadpoolctl`` this does nothing.
    """
    if not n:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(int(n)):
        yield


class Signals:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps
    (a second signal interrupts at once).  A no-op off the main thread."""

    def __init__(self, enabled):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if self.enabled:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


class NoBar:
    """A progress bar that shows nothing (``progress=False``)."""

    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def progress_factory(progress):
    """``make_bar(total=, initial=, desc=)``: a tqdm bar, or :class:`NoBar`."""
    if not progress:
        return lambda **kw: NoBar()
    from tqdm.auto import tqdm

    return lambda **kw: tqdm(leave=False, unit="step", dynamic_ncols=True, **kw)
