r"""The worker process of :mod:`minicrate.training.parallel.procpool`.

``python -m minicrate.training.parallel.worker READ_FD WRITE_FD``: reads pickled messages
from the parent on one pipe and answers each on the other, until ``("close",)`` or the
end of the pipe.  The messages:

* ``("hello",)`` -- started;
* ``("blocks", params, inputs, outputs)`` -- attach the shared blocks (their specs);
* ``("grads", fn, config, options, n, finite)`` -- run ``fn(params, *inputs[:n], config,
  **options) -> (loss, grads, *aux)``, write the gradients into the output block, answer
  ``(loss, aux)``;
* ``("map", fn, config, options, n, finite)`` -- answer ``fn(params, *inputs[:n], config,
  **options)`` (an inference forward's output);
* ``("memory", "reset" | "read")`` -- the peak-memory measurement of ``benchmarks/bench_speed.py``.

Every answer is ``("ok", value)`` or ``("error", (exception, traceback))``; the parent
raises the exception.  A worker ignores SIGINT and SIGTERM: the stop belongs to the parent.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sys
import traceback

import numpy as np

from minicrate.core.allocator import keep_freed_memory
from minicrate.core.validate import finite_checks
from minicrate.training.parallel.shared import SharedBlock


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _Worker:
    """One worker's state; :meth:`handle` answers one message."""

    def __init__(self):
        self.blocks = None
        self.baseline_kb = 0

    def handle(self, msg):
        kind = msg[0]
        if kind == "hello":
            return None
        if kind == "blocks":
            if self.blocks is not None:
                for block in self.blocks:
                    block.close()
            self.blocks = [SharedBlock(**spec) for spec in msg[1:]]
            return None
        if kind in ("grads", "map"):
            _, fn, config, options, n, finite = msg
            with finite_checks(finite):  # the parent's setting: NaN scans on or off
                return self._run(kind, fn, config, options, n)
        if kind == "memory":
            return self._memory(msg[1])
        raise ValueError(f"unknown message {kind!r}")

    def _run(self, kind, fn, config, options, n):
        shared, inp, out = self.blocks
        inputs = [inp.arrays[f"in{j}"][:n] for j in range(len(inp.arrays))]
        result = fn(shared.arrays, *inputs, config, **options)
        if kind == "map":
            return np.asarray(result)
        loss, grads, *aux = result
        for k, g in grads.items():
            np.copyto(out.arrays["grad/" + k], g)
        return float(loss), [np.asarray(a) for a in aux]

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


def main(read_fd, write_fd):
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
    main(int(sys.argv[1]), int(sys.argv[2]))
