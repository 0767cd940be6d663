"""The run directory and what happens around a training loop: signals, progress, files.

A run directory holds ``checkpoint.npz`` (the latest state), ``metrics.json``
(configs, history, wall time, status) and ``curves.png``; a language-model run
adds ``vocab.json``.  :func:`minicrate.training.loop.fit` uses these helpers for
every task.

What a run does with its directory (:class:`RunDirectory`):

* it takes a lock on the directory (``flock`` on the directory itself, so no lock
  file is left behind and a killed run leaves no stale lock); a second run on the
  same directory refuses (:class:`RunInUse`);
* it refuses a directory that already holds a run (:class:`RunExists`) unless
  told to continue it (``resume``) or to start it again (``overwrite``);
* it writes nothing there before every check of the run has passed: then it
  removes the partial files a killed run left (``*.tmp``), and with ``overwrite``
  the previous run's files;
* every write goes through :func:`writing`: a full disk or another ``OSError``
  becomes one :class:`RunWriteError` line, and the partial file is removed (the
  checkpoint itself is replaced atomically, so the previous one is intact).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import threading

from minicrate.core.checkpoint import CheckpointError, read_header

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
CURVES = "curves.png"
VOCAB = "vocab.json"
SELFSUP_FIGURE = "selfsup.png"  # a self-supervised run's attention, embedding and spectrum
RUN_FILES = (CHECKPOINT, METRICS, CURVES, VOCAB, SELFSUP_FIGURE)  # what a training run writes


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written between two steps."""


class RunExists(ValueError):
    """The run directory already holds a run and neither resume nor overwrite was asked for."""


class RunInUse(RuntimeError):
    """Another run holds the run directory's lock."""


class RunWriteError(RuntimeError):
    """A file of the run could not be written (a full disk, a read-only file system ...)."""


def checkpoint_path(run_or_file):
    """A checkpoint file given either itself or a run directory."""
    path = os.fspath(run_or_file)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (give a run directory or a .npz file)")
    return path


# What each kind of run is, which command writes it and which commands read it.
RUN_KINDS = {
    "classifier": ("a classifier run", "minicrate train (or quickstart)",
                   "evaluate, measure, attention"),
    "language-model": ("a language-model run", "minicrate train-lm", "sample"),
    "mae": ("a CRATE-MAE run", "minicrate train-mae", "reconstruct"),
}


def run_kind(run_or_file):
    """``"classifier"``, ``"language-model"`` or ``"mae"``: the kind of run a checkpoint
    (or run directory) holds, read from its header alone; ``None`` when it cannot tell."""
    header = read_header(checkpoint_path(run_or_file))
    extra = header.get("extra") if isinstance(header.get("extra"), dict) else {}
    if "lm_config" in extra:
        return "language-model"
    if "mae_config" in extra:
        return "mae"
    if isinstance(header.get("config"), dict):
        return "classifier"
    return None


def require_kind(run_or_file, kind, command):
    """Raise :class:`CheckpointError` naming both kinds when ``run_or_file`` holds a run of
    another kind than ``kind`` (a key of :data:`RUN_KINDS`) that ``command`` reads."""
    found = run_kind(run_or_file)
    if found is None or found == kind:
        return
    what, writer, readers = RUN_KINDS[found]
    raise CheckpointError(
        f"{os.fspath(run_or_file)!r} is {what} (written by '{writer}'), but '{command}' reads "
        f"{RUN_KINDS[kind][0][2:]}s (written by '{RUN_KINDS[kind][1]}'); {what[2:]}s are read by: "
        f"{readers}")


def write_text(path, text):
    """Write ``text`` to ``path`` atomically through ``path.tmp`` (a reader never sees half
    a file); a failed write removes ``path.tmp`` and leaves ``path`` as it was."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def strict_json(data):
    """``data`` with every NaN or infinite float replaced by ``None``, so that the JSON written
    is strict (``jq`` and ``JSON.parse`` reject the ``NaN``/``Infinity`` literals)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: strict_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json(v) for v in data]
    return data


def write_json(path, data):
    """Write ``data`` as indented strict JSON (non-finite numbers as ``null``), atomically
    (:func:`write_text`)."""
    write_text(path, json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")


def partial_files(directory, names=RUN_FILES):
    """The temporary files that writes of ``names`` leave in ``directory`` when they are cut
    short: ``metrics.json.tmp``, ``curves.png.tmp.png``, ``.checkpoint.npz.XXXX.tmp`` ..."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.endswith((".tmp", ".tmp.png")) and any(
            entry.startswith((name, f".{name}.")) for name in names
        ):
            found.append(os.path.join(directory, entry))
    return sorted(found)


def mount_point(path):
    """The mount point of the file system that holds ``path``."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


@contextlib.contextmanager
def writing(path, checkpoint):
    """Write ``path`` (a file of the run whose latest checkpoint is ``checkpoint``) inside this
    block.  An ``OSError`` -- a full disk above all -- removes what the write left and becomes
    one :class:`RunWriteError` line: ``no space left on /mnt while writing
    /mnt/run/metrics.json; the previous checkpoint /mnt/run/checkpoint.npz is intact ...``."""
    try:
        yield
    except OSError as err:
        directory = os.path.dirname(os.path.abspath(path))
        for partial in partial_files(directory, [os.path.basename(path)]):
            with contextlib.suppress(OSError):
                os.unlink(partial)
        full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        if os.path.exists(checkpoint):
            kept = (f"the previous checkpoint {checkpoint} is intact ("
                    f"{'free some space' if full else 'fix that'}, then continue with --resume)")
        else:
            kept = "no checkpoint had been written yet"
        if full:
            raise RunWriteError(f"no space left on {mount_point(directory)} while writing {path}; "
                                f"{kept}") from None
        raise RunWriteError(f"cannot write {path} ({err.strerror or err}); {kept}") from None


def check_run_dir(path, *, resume=False, overwrite=False):
    """What :class:`RunDirectory` checks (again, under its lock), for a caller that wants to
    refuse before loading any data: ``path`` is not a file; with ``resume`` it holds a
    checkpoint; without it, it holds no run unless ``overwrite``."""
    path = os.fspath(path)
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: --resume continues the run "
                         f"in {path!r}, --overwrite starts it again from scratch")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"out_dir {path!r} is a file; the run needs a directory")
    if resume:
        checkpoint = os.path.join(path, CHECKPOINT)
        if not os.path.exists(checkpoint):
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint!r}")
        return
    found = [n for n in RUN_FILES if os.path.exists(os.path.join(path, n))]
    if found and not overwrite:
        raise RunExists(
            f"out_dir {path!r} already holds a run ({', '.join(found)}); continue it with --resume "
            "(resume=True), or start it again from scratch with --overwrite (overwrite=True), or "
            "choose another --out")


class RunDirectory:
    """One run's hold on its directory, for the length of the run (a context manager).

    On entry: the directory is created if absent, locked, and checked: with ``resume``
    it must hold a checkpoint; without it, it must not hold a run (:data:`RUN_FILES`)
    unless ``overwrite``.  Nothing is written into it until :meth:`prepare`, which the
    caller calls once every other check of the run has passed.  On exit the lock is
    released, and a directory this run created is removed again if it stayed empty.

    Raises (on entry):
        ValueError: ``resume`` and ``overwrite`` together, or the path is a file.
        RunExists: the directory holds a run and neither ``resume`` nor ``overwrite``.
        RunInUse: another run holds the lock.
        FileNotFoundError: ``resume`` without a checkpoint.
    """

    def __init__(self, path, *, resume=False, overwrite=False):
        self.path, self.resume, self.overwrite = os.fspath(path), bool(resume), bool(overwrite)
        self.checkpoint = os.path.join(self.path, CHECKPOINT)
        self._fd, self._created = None, False

    def __enter__(self):
        check_run_dir(self.path, resume=self.resume, overwrite=self.overwrite)  # before creating it
        try:
            self._lock()
            self._check()
        except BaseException:
            self._release(failed=True)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        self._release(failed=exc_type is not None)

    def _lock(self):
        for _ in range(3):  # the directory may be replaced between open and lock; try again
            try:
                os.makedirs(self.path)
                self._created = True
            except FileExistsError:
                pass
            fd = os.open(self.path, os.O_RDONLY)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    raise RunInUse(f"out_dir {self.path!r} is in use: another training run holds "
                                   "its lock; wait for that run to end or choose another --out") from None
                return  # a file system without flock: unlocked
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)
        raise RunInUse(f"out_dir {self.path!r} keeps being replaced while this run starts")

    def _check(self):
        check_run_dir(self.path, resume=self.resume, overwrite=self.overwrite)

    def prepare(self):
        """Every check passed: remove the partial files a killed run left and, with
        ``overwrite``, the previous run's files.  The first write into the directory."""
        doomed = partial_files(self.path)
        if self.overwrite:
            doomed += [os.path.join(self.path, n) for n in RUN_FILES]
        for path in doomed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _release(self, failed=False):
        if failed and self._created and self._fd is not None:  # locked: no other run is inside
            with contextlib.suppress(OSError):
                os.rmdir(self.path)  # only if it stayed empty
        self._created = False
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def check_resumable(saved, now, free, source, defaults=None):
    """Raise :class:`CheckpointError` unless the recipe ``now`` (a dict) equals the
    checkpoint's ``saved`` one on every field outside ``free`` (fields that may change
    on resume without changing what the run computes, e.g. ``epochs`` or ``backend``).
    A field the checkpoint lacks (it predates the field) counts as ``defaults[field]``,
    the value its code ran with."""
    defaults = defaults or {}
    diffs = [
        f"{k}: checkpoint {saved.get(k, defaults.get(k))!r} vs now {now[k]!r}"
        for k in now
        if k not in free and saved.get(k, defaults.get(k)) != now[k]
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
