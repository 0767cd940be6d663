r"""Batch parallelism over worker *processes* (NumPy backend, host side).

:mod:`minicrate.training.parallel.threads` splits a batch over threads.  That works while each
NumPy call is long, but with small arrays (config (a) of issue 8: 17 tokens
of width 64) a call takes tens of microseconds, and the threads spend much of
their time handing Python's global interpreter lock (GIL) to each other:
measured on (a), two threads used 50 ms of CPU for what one thread does in
35.  Processes have an interpreter each, so nothing is handed over.

How a step runs (``W`` = workers, chunk ``i`` has ``n_i`` of the ``B`` samples)::

    parent                                   worker i = 1 … W−1 (own process)
    copy params -> shared block P            (waits for a message)
    copy chunk i -> shared block In_i;
    send ("step", n_i)              ───────> loss_i, grads_i = loss_and_grads(P, In_i)
    loss_0, grads_0 = loss_and_grads(        write grads_i, logits_i -> Out_i
        params, chunk 0)            <─────── send ("ok", loss_i)
    loss = Σ (n_i/B) loss_i,  grads = Σ (n_i/B) grads_i      (as in minicrate.training.parallel.threads)

The shared blocks are files in ``/dev/shm`` (memory, not disk) that every
process maps with :mod:`mmap` and views as NumPy arrays; only the small
control messages go through pipes.  Copying the parameters costs one pass over
them per step (5 MB on config (b), about a millisecond).  Each worker is
``python -m minicrate.training.parallel.procpool``, started once per pool with one BLAS thread;
it keeps freed memory for reuse (:mod:`minicrate.core.allocator`).

**Signals.**  A terminal's Ctrl-C (SIGINT) and a ``kill`` of the job (SIGTERM) go to
every process of the foreground group.  The stop belongs to the parent (it finishes
the step, saves and exits: :class:`minicrate.training.rundir.Signals`), so a worker
starts in a session of its own, where those signals do not reach it, and ignores
SIGINT and SIGTERM sent to it directly; the parent stops it (a ``close`` message,
the end of its pipe, or SIGKILL after 5 s).

The result equals the threaded one (same chunks, same arithmetic) and the
one-chunk computation up to rounding; ``tests/test_procpool.py`` checks both.
Only the forward+backward of the classifier's loss runs here; a forward whose
caches are wanted later stays in the parent (:func:`minicrate.training.parallel.threads.forward`).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import pickle
import signal
import subprocess
import sys
import traceback

import numpy as np

from minicrate.core.allocator import keep_freed_memory
from minicrate.core.validate import finite_checks
from minicrate.training.parallel.shared import SharedBlock


def _grad_specs(params):
    return {k: (v.shape, v.dtype) for k, v in params.items()}


# --- the parent side ---------------------------------------------------------------------------

class ProcessPool:
    """``W − 1`` worker processes plus the calling process, for one model config.

    Args:
        config: the :class:`~minicrate.models.classifier.CRATEConfig` every step uses.
        workers: chunks per batch (≥ 2); ``workers − 1`` processes are started.
        options: passed to :func:`minicrate.models.classifier.loss_and_grads` (e.g. ``fast``).
    """

    def __init__(self, config, workers, **options):
        if int(workers) < 2:
            raise ValueError(f"workers must be at least 2 for a process pool, got {workers}")
        self.config, self.workers, self.options = config, int(workers), dict(options)
        self._procs, self._blocks, self._key, self._capacity = [], None, None, 0
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
        for _ in range(self.workers - 1):
            to_child_r, to_child_w = os.pipe()
            to_parent_r, to_parent_w = os.pipe()
            proc = subprocess.Popen(
                [sys.executable, "-m", "minicrate.training.parallel.procpool", str(to_child_r), str(to_parent_w)],
                pass_fds=(to_child_r, to_parent_w), env=env, close_fds=True,
                start_new_session=True)  # the terminal's SIGINT/SIGTERM go to the parent only
            os.close(to_child_r)
            os.close(to_parent_w)
            proc.send = os.fdopen(to_child_w, "wb")
            proc.recv = os.fdopen(to_parent_r, "rb")
            self._procs.append(proc)
        self._broadcast(("config", config, self.options))
        self._collect("starting the worker processes")
        atexit.register(self.close)

    # messages
    def _send(self, proc, msg):
        try:
            pickle.dump(msg, proc.send, protocol=pickle.HIGHEST_PROTOCOL)
            proc.send.flush()
        except (OSError, ValueError) as exc:  # a closed pipe: the worker has gone
            self.close()
            raise RuntimeError(f"minicrate.training.parallel.procpool: cannot reach a worker process ({exc}); "
                               "the pool is closed") from None

    def _broadcast(self, msg):
        for proc in self._procs:
            self._send(proc, msg)

    def _collect(self, what):
        """Every worker's reply, in order.  A worker's exception is raised here (the first
        one, with the worker's traceback as a note); a worker that died closes the pool."""
        replies, error = [], None
        for i, proc in enumerate(self._procs, start=1):
            try:
                status, value = pickle.load(proc.recv)
            except (EOFError, pickle.UnpicklingError, OSError):
                self.close()
                raise RuntimeError(f"minicrate.training.parallel.procpool: worker process {i} exited (code "
                                   f"{proc.poll()}) during {what}; the pool is closed") from None
            replies.append(value)
            if status != "ok" and error is None:
                error = value
        if error is not None:
            exc, tb = error
            if hasattr(exc, "add_note"):
                exc.add_note(f"(raised in a minicrate.training.parallel.procpool worker during {what}:\n{tb})")
            raise exc
        return replies

    # blocks
    def _ensure_blocks(self, params, images, labels, max_n):
        """Shared blocks for these parameter shapes and dtypes and chunks of up to ``max_n``
        images; kept while they fit (a smaller last batch reuses them)."""
        key = (tuple((k, v.shape, v.dtype.str) for k, v in params.items()),
               images.shape[1:], images.dtype.str, labels.dtype.str)
        if key == self._key and max_n <= self._capacity:
            return
        self._release_blocks()
        num_classes = self.config.num_classes
        shared = SharedBlock(_grad_specs(params))
        per_worker = []
        for _ in self._procs:
            inp = SharedBlock({"images": ((max_n, *images.shape[1:]), images.dtype),
                               "labels": ((max_n,), labels.dtype)})
            out = SharedBlock({**{"grad/" + k: (v.shape, v.dtype) for k, v in params.items()},
                               "logits": ((max_n, num_classes), images.dtype)})
            per_worker.append((inp, out))
        for proc, (inp, out) in zip(self._procs, per_worker, strict=True):
            self._send(proc, ("blocks", shared.spec, inp.spec, out.spec))
        self._collect("attaching the shared blocks")
        for block in [shared] + [b for pair in per_worker for b in pair]:
            block.unlink()  # every process has it mapped; nothing is left behind on exit
        self._blocks, self._key, self._capacity = (shared, per_worker), key, max_n

    def _release_blocks(self):
        if self._blocks is not None:
            shared, per_worker = self._blocks
            for block in [shared] + [b for pair in per_worker for b in pair]:
                block.close()
        self._blocks, self._key = None, None

    def loss_and_grads(self, params, images, labels):
        """:func:`minicrate.models.classifier.loss_and_grads` on the batch split over the processes.

        Args:
            params: NumPy parameter arrays; images ``(B, C, H, W)``; labels ``(B,)`` ints.

        Returns:
            ``(loss, grads, logits)`` for the whole batch (grads new arrays).
        """
        from minicrate.core.validate import finite_checks_enabled
        from minicrate.models.classifier import loss_and_grads as single
        from minicrate.training.parallel.split import check_batch, chunks, one_thread_blas

        if not self._procs:
            raise RuntimeError("this ProcessPool is closed")
        check_batch(images, labels)
        if not (isinstance(images, np.ndarray) and isinstance(labels, np.ndarray)):
            raise TypeError(f"a ProcessPool takes NumPy arrays, got images {type(images).__name__}, "
                            f"labels {type(labels).__name__}")
        B = images.shape[0]
        parts = chunks(B, self.workers)
        if len(parts) < self.workers:  # fewer samples than workers: no need for the pool
            return single(params, images, labels, self.config, **self.options)
        self._ensure_blocks(params, images, labels, max(s.stop - s.start for s in parts))
        shared, per_worker = self._blocks
        for k, v in params.items():
            np.copyto(shared.arrays[k], v)
        for proc, s, (inp, _) in zip(self._procs, parts[1:], per_worker, strict=True):
            n = s.stop - s.start
            inp.arrays["images"][:n] = images[s]
            inp.arrays["labels"][:n] = labels[s]
            self._send(proc, ("step", n, finite_checks_enabled()))
        try:
            with one_thread_blas():
                loss0, grads0, logits0 = single(params, images[parts[0]], labels[parts[0]], self.config,
                                                **self.options)
        except BaseException:
            with contextlib.suppress(Exception):  # keep the pipes in step; our error comes first
                self._collect("a training step")
            raise
        losses = self._collect("a training step")
        w0 = (parts[0].stop - parts[0].start) / B
        loss = w0 * loss0
        grads = {k: w0 * g for k, g in grads0.items()}
        logits = [logits0]
        for s, loss_i, (_, out) in zip(parts[1:], losses, per_worker, strict=True):
            w = (s.stop - s.start) / B
            loss += w * loss_i
            for k, g in grads.items():
                g += w * out.arrays["grad/" + k]
            logits.append(out.arrays["logits"][: s.stop - s.start].copy())
        return loss, grads, np.concatenate(logits, axis=0)

    @property
    def closed(self):
        return not self._procs

    @property
    def key(self):
        """``(config, workers, sorted options)``: what a step of this pool computes with."""
        return (self.config, self.workers, tuple(sorted(self.options.items())))

    # memory measurement (benchmarks/bench_speed.py)
    def reset_peak_memory(self):
        """Each worker: baseline = current RSS, peak counter reset."""
        self._broadcast(("memory", "reset"))
        return self._collect("resetting the memory peak")

    def peak_memory_kb(self):
        """Each worker's peak resident memory above its baseline since the reset (KiB)."""
        self._broadcast(("memory", "read"))
        return self._collect("reading the memory peak")

    def cpu_seconds(self):
        """User + system CPU seconds the worker processes have used so far (Linux ``/proc``;
        0.0 elsewhere)."""
        total = 0.0
        for proc in self._procs:
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return total

    def close(self):
        """Stop the workers and release the blocks (also at exit)."""
        procs, self._procs = self._procs, []
        for proc in procs:
            try:
                pickle.dump(("close",), proc.send)
                proc.send.flush()
            except (OSError, ValueError):
                pass
        for proc in procs:
            for f in (proc.send, proc.recv):
                try:
                    f.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._release_blocks()


# --- the worker side ---------------------------------------------------------------------------

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _Worker:
    """One worker's state; :meth:`handle` answers one message."""

    def __init__(self):
        self.config = self.options = self.blocks = None
        self.baseline_kb = 0

    def handle(self, msg):
        kind = msg[0]
        if kind == "config":
            self.config, self.options = msg[1], msg[2]
            return None
        if kind == "blocks":
            if self.blocks is not None:
                for block in self.blocks:
                    block.close()
            self.blocks = [SharedBlock(**spec) for spec in msg[1:]]
            return None
        if kind == "step":
            with finite_checks(msg[2]):  # the parent's setting: NaN scans on or off
                return self._step(msg[1])
        if kind == "memory":
            return self._memory(msg[1])
        raise ValueError(f"unknown message {kind!r}")

    def _step(self, n):
        from minicrate.models.classifier import loss_and_grads

        shared, inp, out = self.blocks
        loss, grads, logits = loss_and_grads(shared.arrays, inp.arrays["images"][:n],
                                             inp.arrays["labels"][:n], self.config, **self.options)
        for k, g in grads.items():
            np.copyto(out.arrays["grad/" + k], g)
        out.arrays["logits"][:n] = logits
        return loss

    def _memory(self, what):
        if what == "reset":
            gc.collect()
            self.baseline_kb = _status_kb("VmRSS")
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                return None
            return self.baseline_kb
        return _status_kb("VmHWM") - self.baseline_kb


def _picklable(exc):
    """``exc`` if it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def ignore_stop_signals():
    """SIGINT and SIGTERM do nothing in this process (a worker: the parent handles them)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _worker_main(read_fd, write_fd):
    from minicrate.training.parallel.split import one_thread_blas

    ignore_stop_signals()

    keep_freed_memory()
    recv, send = os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb")
    worker = _Worker()
    with one_thread_blas():
        while True:
            try:
                msg = pickle.load(recv)
            except EOFError:  # the parent has gone
                return
            if msg[0] == "close":
                return
            try:
                reply = ("ok", worker.handle(msg))
            except Exception as exc:  # noqa: BLE001 - sent to the parent, which raises it
                reply = ("error", (_picklable(exc), traceback.format_exc()))
            pickle.dump(reply, send, protocol=pickle.HIGHEST_PROTOCOL)
            send.flush()


if __name__ == "__main__":
    _worker_main(int(sys.argv[1]), int(sys.argv[2]))
