r"""Batch parallelism over worker *processes* (NumPy backend, host side).

:mod:`minicrate.training.parallel.threads` splits a batch over threads.  That works while each
NumPy call is long, but with small arrays (config (a) of issue 8: 17 tokens
of width 64) a call takes tens of microseconds, and the threads spend much of
their time handing Python's global interpreter lock (GIL) to each other:
measured on (a), two threads used 50 ms of CPU for what one thread does in
35.  Processes have an interpreter each, so nothing is handed over.

How a training step runs (``W`` = workers, chunk ``i`` has ``n_i`` of the ``B`` samples;
``fn`` is the model's ``loss_and_grads``, named in the message)::

    parent                                   worker i = 1 … W−1 (own process)
    copy params -> shared block P            (waits for a message)
    copy chunk i -> shared block In_i;
    send ("grads", fn, n_i)         ───────> loss_i, grads_i, aux_i = fn(P, In_i)
    loss_0, grads_0 = fn(params, chunk 0)    write grads_i -> Out_i
                                    <─────── send ("ok", (loss_i, aux_i))
    loss = Σ (n_i/B) loss_i,  grads = Σ (n_i/B) grads_i      (as in minicrate.training.parallel.threads)

An inference forward (``"map"``) is the same without gradients: each worker answers its
chunk's output (logits, features: small, so they travel through the pipe).  One pool
serves every model (classifier, CRATE-MAE, the language models, the self-supervised
teacher): each message names the function, its config and options.

The shared blocks are files in ``/dev/shm`` (memory, not disk) that every
process maps with :mod:`mmap` and views as NumPy arrays; only the small
control messages go through pipes.  Copying the parameters costs one pass over
them per step (5 MB on config (b), about a millisecond).  Each worker is
``python -m minicrate.training.parallel.worker``, started once per pool with one BLAS thread;
it keeps freed memory for reuse (:mod:`minicrate.core.allocator`).

**Signals.**  A terminal's Ctrl-C (SIGINT) and a ``kill`` of the job (SIGTERM) go to
every process of the foreground group.  The stop belongs to the parent (it finishes
the step, saves and exits: :class:`minicrate.training.rundir.Signals`), so a worker
starts in a session of its own, where those signals do not reach it, and ignores
SIGINT and SIGTERM sent to it directly; the parent stops it (a ``close`` message,
the end of its pipe, or SIGKILL after 5 s).

The result equals the threaded one (same chunks, same arithmetic) and the
one-chunk computation up to rounding; ``tests/test_procpool.py`` checks both.
A forward whose caches are wanted later stays in the parent
(:func:`minicrate.training.parallel.threads.forward`): caches do not cross processes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import subprocess
import sys

import numpy as np

from minicrate.training.parallel.shared import SharedBlock


def _grad_specs(params):
    return {k: (v.shape, v.dtype) for k, v in params.items()}


# --- the parent side ---------------------------------------------------------------------------

class ProcessPool:
    """``W − 1`` worker processes plus the calling process.

    A call names the function each chunk runs (a module-level function, pickled by
    reference) with its model config and options, so one pool serves every model:
    :meth:`grads` for a training step (a weighted sum of the chunks' losses and
    gradients), :meth:`map` for an inference forward (the chunks' outputs stacked).

    Args:
        workers: chunks per batch (≥ 2); ``workers − 1`` processes are started.
    """

    def __init__(self, workers):
        if int(workers) < 2:
            raise ValueError(f"workers must be at least 2 for a process pool, got {workers}")
        self.workers = int(workers)
        self._procs, self._blocks, self._key, self._capacity = [], None, None, 0
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
        for _ in range(self.workers - 1):
            to_child_r, to_child_w = os.pipe()
            to_parent_r, to_parent_w = os.pipe()
            proc = subprocess.Popen(
                [sys.executable, "-m", "minicrate.training.parallel.worker", str(to_child_r), str(to_parent_w)],
                pass_fds=(to_child_r, to_parent_w), env=env, close_fds=True,
                start_new_session=True)  # the terminal's SIGINT/SIGTERM go to the parent only
            os.close(to_child_r)
            os.close(to_parent_w)
            proc.send = os.fdopen(to_child_w, "wb")
            proc.recv = os.fdopen(to_parent_r, "rb")
            self._procs.append(proc)
        self._broadcast(("hello",))
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
    def _ensure_blocks(self, params, inputs, max_n):
        """Shared blocks for these parameter shapes and dtypes and chunks of up to ``max_n``
        rows of each input; kept while they fit (a smaller last batch reuses them)."""
        key = (tuple((k, v.shape, v.dtype.str) for k, v in params.items()),
               tuple((x.shape[1:], x.dtype.str) for x in inputs))
        if key == self._key and max_n <= self._capacity:
            return
        self._release_blocks()
        shared = SharedBlock(_grad_specs(params))
        per_worker = []
        for _ in self._procs:
            inp = SharedBlock({f"in{j}": ((max_n, *x.shape[1:]), x.dtype) for j, x in enumerate(inputs)})
            out = SharedBlock({"grad/" + k: (v.shape, v.dtype) for k, v in params.items()})
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

    def _scatter(self, kind, fn, params, inputs, config, options):
        """Copy the parameters and chunks 1 … W−1 into the shared blocks and start the
        workers on them; returns the chunks, or ``None`` when a batch has fewer rows than
        workers (then the caller runs it whole)."""
        from minicrate.core.validate import finite_checks_enabled
        from minicrate.training.parallel.split import chunks

        if not self._procs:
            raise RuntimeError("this ProcessPool is closed")
        bad = [f"{type(x).__name__}" for x in list(params.values()) + list(inputs)
               if not isinstance(x, np.ndarray)]
        if bad:
            raise TypeError(f"a ProcessPool takes NumPy arrays, got {', '.join(sorted(set(bad)))}")
        B = inputs[0].shape[0]
        if any(x.shape[0] != B for x in inputs):
            raise ValueError(f"every input must have the batch's {B} rows, got "
                             f"{[tuple(x.shape) for x in inputs]}")
        parts = chunks(B, self.workers)
        if len(parts) < self.workers:
            return None
        self._ensure_blocks(params, inputs, max(s.stop - s.start for s in parts))
        shared, per_worker = self._blocks
        for k, v in params.items():
            np.copyto(shared.arrays[k], v)
        for proc, s, (inp, _) in zip(self._procs, parts[1:], per_worker, strict=True):
            n = s.stop - s.start
            for j, x in enumerate(inputs):
                inp.arrays[f"in{j}"][:n] = x[s]
            self._send(proc, (kind, fn, config, dict(options), n, finite_checks_enabled()))
        return parts

    def _run_first(self, fn, params, inputs, part, config, options, what):
        """Chunk 0 in this process (one BLAS thread), the workers' replies after it."""
        from minicrate.training.parallel.split import one_thread_blas

        try:
            with one_thread_blas():
                first = fn(params, *(x[part] for x in inputs), config, **options)
        except BaseException:
            with contextlib.suppress(Exception):  # keep the pipes in step; our error comes first
                self._collect(what)
            raise
        return first, self._collect(what)

    def grads(self, fn, params, inputs, config, options=None, *, shares=None):
        """A training step on the batch split over the processes.

        Args:
            fn: ``fn(params, *chunk_inputs, config, **options) -> (loss, grads, *aux)``, a
                module-level function (each chunk's mean loss and its gradients).
            params: NumPy parameter arrays; inputs: NumPy arrays, rows = samples.
            shares: ``shares(slice) -> float``, what a chunk's mean loss averages over
                (default: its number of rows).

        Returns:
            ``(loss, grads, *aux)``: ``Σ w_i loss_i``, ``Σ w_i grads_i`` (new arrays) with
            ``w_i = share_i / Σ share``, and each aux output of the chunks concatenated.
        """
        options = options or {}
        inputs = tuple(inputs)
        parts = self._scatter("grads", fn, params, inputs, config, options)
        if parts is None:  # fewer samples than workers: no need for the pool
            return fn(params, *inputs, config, **options)
        (loss0, grads0, *aux0), replies = self._run_first(fn, params, inputs, parts[0], config, options,
                                                          "a training step")
        share = shares or (lambda s: s.stop - s.start)
        weights = [float(share(s)) for s in parts]
        total = sum(weights)
        loss = weights[0] / total * loss0
        grads = {k: weights[0] / total * g for k, g in grads0.items()}
        for w, (loss_i, _), (_, out) in zip(weights[1:], replies, self._blocks[1], strict=True):
            loss += w / total * loss_i
            for k, g in grads.items():
                g += w / total * out.arrays["grad/" + k]
        aux = [np.concatenate([a0] + [r[1][j] for r in replies], axis=0) for j, a0 in enumerate(aux0)]
        return (loss, grads, *aux)

    def map(self, fn, params, inputs, config, options=None):
        """An inference forward on the batch split over the processes.

        Args:
            fn: ``fn(params, *chunk_inputs, config, **options) -> array (n_i, ...)``, a
                module-level function; params, inputs: as for :meth:`grads`.

        Returns:
            the chunks' outputs concatenated along the rows.
        """
        options = options or {}
        inputs = tuple(inputs)
        parts = self._scatter("map", fn, params, inputs, config, options)
        if parts is None:
            return fn(params, *inputs, config, **options)
        first, replies = self._run_first(fn, params, inputs, parts[0], config, options, "an inference forward")
        return np.concatenate([first] + replies, axis=0)

    @property
    def closed(self):
        return not self._procs


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
