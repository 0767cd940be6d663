#!/usr/bin/env python
"""Where minicrate's time goes: wall time per source line of one training step.

A tiny line profiler (``sys.settrace``): for every line executed in the
chosen minicrate modules it adds the wall time until the next line event of
the same frame, so a line's time includes the functions it calls (inclusive
time).  Array operations are single C calls, so each line's time is the cost
of the products, reductions and copies written on it.  The tracer itself costs
about a microsecond per line, small against lines that take 0.1–10 ms.

Compare with torch's own operator profile (``--torch``) to see which kinds of
work (matrix products, softmax, LayerNorm, copies) each side spends time on.

Usage::

    .venv/bin/python benchmarks/profile_lines.py --config b --steps 5
    .venv/bin/python benchmarks/profile_lines.py --config a --plain      # the plain encoder path
"""

from __future__ import annotations

import argparse
import linecache
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_speed import CONFIGS, MinicrateRunner, TorchRunner, _set_threads  # noqa: E402
from minicrate.core.allocator import keep_freed_memory  # noqa: E402
from minicrate.core.backend import to_numpy  # noqa: E402

MODULES = ("fast.py", "model.py", "encoder.py", "mssa.py", "ista.py", "layernorm.py",
           "functional.py", "embedding.py", "loss.py", "parallel.py")


class LineProfiler:
    """Accumulates wall time per (file, line) for code in ``files``."""

    def __init__(self, files, clock=time.perf_counter):
        self.files = set(files)
        self.clock = clock
        self.times = defaultdict(float)
        self.hits = defaultdict(int)
        self._last = {}

    def _global(self, frame, event, arg):
        if event == "call" and Path(frame.f_code.co_filename).name in self.files \
                and "minicrate" in frame.f_code.co_filename:
            self._last[id(frame)] = (frame.f_lineno, self.clock())
            return self._local
        return None

    def _local(self, frame, event, arg):
        now = self.clock()
        key = id(frame)
        line, t0 = self._last.get(key, (frame.f_lineno, now))
        where = (frame.f_code.co_filename, line)
        self.times[where] += now - t0
        self.hits[where] += 1
        if event == "return":
            self._last.pop(key, None)
        else:
            self._last[key] = (frame.f_lineno, self.clock())
        return self._local

    def run(self, fn, *args):
        sys.settrace(self._global)
        try:
            return fn(*args)
        finally:
            sys.settrace(None)

    def report(self, steps, top=40, total=None):
        rows = sorted(self.times.items(), key=lambda kv: -kv[1])
        print(f"{'ms/step':>8s} {'share':>6s}  line")
        for (fname, line), t in rows[:top]:
            src = linecache.getline(fname, line).strip()
            share = f"{100 * t / total:5.1f}%" if total else ""
            print(f"{1e3 * t / steps:8.2f} {share:>6s}  {Path(fname).name}:{line}  {src[:90]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="b", choices=sorted(CONFIGS))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plain", action="store_true", help="profile the plain (unfused) encoder path")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--cpu", action="store_true",
                   help="count this thread's CPU time, not wall time (use with --threads 1 on "
                        "a busy machine: time spent waiting for a core is then left out)")
    p.add_argument("--torch", action="store_true", help="also print torch's operator profile")
    args = p.parse_args(argv)
    keep_freed_memory()  # as the benchmark and the training loops run
    _set_threads(args.threads)
    # one chunk: the tracer follows this thread only (minicrate.training.parallel.threads's workers are others)
    runner = MinicrateRunner(args.config, args.dtype,
                             variant="minicrate[plain]" if args.plain else "minicrate[1 chunk]")
    runner.fwd_bwd()  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        runner.fwd_bwd()
    untraced = (time.perf_counter() - t0) / args.steps
    prof = LineProfiler(MODULES, time.thread_time if args.cpu else time.perf_counter)
    clock = time.thread_time if args.cpu else time.perf_counter
    t0 = clock()
    for _ in range(args.steps):
        prof.run(runner.fwd_bwd)
    traced = (clock() - t0) / args.steps
    print(f"config ({args.config}) {args.dtype}, {'plain' if args.plain else 'fast'} path: "
          f"{1e3 * untraced:.1f} ms/step untraced, {1e3 * traced:.1f} ms/step traced; "
          "inclusive time per line:")
    # Lines inside model.loss_and_grads are the whole step; show the leaves' share of it.
    prof.report(args.steps, args.top, total=traced * args.steps)
    if args.torch:
        import torch

        params = {k: to_numpy(v) for k, v in runner.params.items()}
        tc = TorchRunner(args.config, args.dtype, params)
        tc.fwd_bwd()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof_t:
            for _ in range(args.steps):
                tc.fwd_bwd()
        print(prof_t.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    return 0


if __name__ == "__main__":
    sys.exit(main())
