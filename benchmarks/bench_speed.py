#!/usr/bin/env python
r"""Speed and memory of minicrate against PyTorch eager and torch.compile (issue 8).

What it does, in order, and prints as it goes:

1. **Machine and kernels**: CPU, cores, load average, NumPy's BLAS (from
   ``numpy.show_config`` and ``threadpoolctl``: library, version, kernel
   architecture, threads), torch's version, BLAS and thread count.
2. **GEMM ceiling**: NumPy (and torch) ``matmul`` GFLOP/s in float32 and
   float64 on large square matrices and on the shapes the models multiply;
   the best median is "the ceiling".  Measured before and after the model
   timings, so a busy machine shows up as two different ceilings.
3. For each configuration and dtype: the **same weights** in minicrate and in
   the PyTorch autograd model of :mod:`benchmarks.torch_crate`, run twice:
   eager ("torch") and through ``torch.compile`` ("torch.compile": inductor,
   the whole loss as one graph; ``--no-compile`` leaves it out, and it is
   skipped, with the reason printed, where compiling fails).  The compiled
   model's first calls compile it; they are timed and reported on their own
   and never enter the timings.  The loss and every gradient are compared:
   minicrate against eager torch, and the compiled model against eager torch
   (relative errors printed; the script stops if they disagree beyond float
   tolerance).
4. **Timing**: forward and forward+backward of the mean label-smoothed loss,
   the implementations **interleaved run by run** (the order alternates
   every round, with a short pause between implementations so the other
   library's idle BLAS/OpenMP threads stop spinning).  The forward is an
   inference forward for the torch peers: under ``torch.inference_mode()``,
   as an evaluation runs it (no autograd graph recorded); minicrate's forward
   is :meth:`MinicrateRunner.forward`.  Medians, the spread (25–75 %), the
   ratio of medians and the median of the per-round ratios minicrate/torch
   and minicrate/torch.compile, achieved GFLOP/s and the fraction of the ceiling.
5. **Peak memory** above the process baseline during one forward+backward,
   each implementation alone in a fresh subprocess (see ``memory_child``).

FLOPs count matrix products only (2mnk; softmax, LayerNorm and the rest are
left out).  "model GFLOP" is the official form as torch runs it (ISTA in three
products; every product's backward takes two products, except the patch
embedding's, whose input needs no gradient).  "executed GFLOP" is what
minicrate runs: the fused layer takes ISTA in one token product,
``X + X·η(D − DᵀD)`` (the plain blocks take two, ``(X − XDᵀ)D``), MSSA's
score backward in one product, ``s(S̄ + S̄ᵀ)w``, and recomputes the head
outputs in backward.  The ceiling fraction uses each implementation's own
executed FLOPs.  Method and results: ``benchmarks/README.md``.

Usage::

    .venv/bin/python benchmarks/bench_speed.py                 # (a) and (b), float32 and float64
    .venv/bin/python benchmarks/bench_speed.py --configs b --dtypes float32 --rounds 15
    .venv/bin/python benchmarks/bench_speed.py --backend cupy --torch-device cuda --configs a,b,c
    .venv/bin/python benchmarks/bench_speed.py --quick         # a smoke run in a few minutes
    .venv/bin/python benchmarks/bench_speed.py --no-compile    # eager torch only

The machine this runs on may be shared: every number comes with its spread
and the load average, and the figures should be re-measured on a quiet
machine before they are quoted as more than "about".
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import minicrate.models.classifier as mc_model  # noqa: E402
from minicrate.core.allocator import keep_freed_memory  # noqa: E402
from minicrate.core.backend import get_backend, host_to, to_numpy  # noqa: E402
from minicrate.core.validate import finite_checks  # noqa: E402
from minicrate.models.loss import cross_entropy_forward  # noqa: E402
from minicrate.training.parallel import threads as parallel  # noqa: E402
from minicrate.training.parallel.threads import default_workers  # noqa: E402

# (a) and (b) from issue 8; (c) is CRATE-T (the paper's tiny ImageNet model) at 224×224, for GPUs.
CONFIGS = {
    "a": dict(image_size=8, patch_size=2, channels=1, dim=64, depth=4, heads=4, num_classes=10,
              batch=128),
    "b": dict(image_size=32, patch_size=4, channels=3, dim=192, depth=12, heads=3, num_classes=10,
              batch=64),
    "c": dict(image_size=224, patch_size=16, channels=3, dim=384, depth=12, heads=6,
              num_classes=1000, batch=64),
}


# ---------------------------------------------------------------------------------------------
# FLOP counting
# ---------------------------------------------------------------------------------------------

def gemm_flops(cfg, *, ista_products=3, symmetric_scores=False, recompute_heads=False,
               image_grad=False):
    """Matrix-product FLOPs (2mnk) of one batch, split by where they happen.

    Every product's backward takes two products of its size (one per operand), except:

    Args:
        cfg: a dict of :data:`CONFIGS` (with ``batch``).
        ista_products: 3 for the official ``x Dᵀ``, ``(x Dᵀ) D``, ``x D``; 2 for ``(X − XDᵀ)D``;
            1 for ``X Q`` with ``Q = I + η(D − DᵀD)`` (plus ``2d³`` for ``DᵀD`` and ``2d³``
            for ``D(G + Gᵀ)`` in backward).
        symmetric_scores: the backward of ``S = s w wᵀ`` is one product ``s(S̄ + S̄ᵀ)w``
            instead of two (``S̄ w`` and ``S̄ᵀ w``).
        recompute_heads: backward recomputes the head outputs ``O = A w`` (one more product)
            instead of keeping them.
        image_grad: the patch embedding's input gradient is computed too (autograd skips it).

    Returns:
        dict with ``forward`` and ``backward`` totals and a per-part ``parts`` dict (forward).
    """
    B, d, L, K, C = cfg["batch"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["num_classes"]
    Np = (cfg["image_size"] // cfg["patch_size"]) ** 2
    P = cfg["patch_size"] ** 2 * cfg["channels"]
    N, p = Np + 1, d // K
    tok = 2 * B * N * d * d  # one (B·N, d) @ (d, d) product
    parts = {
        "embed": 2 * B * Np * P * d,
        "qkv": L * tok,
        "scores": L * 2 * B * K * N * N * p,
        "attn@W": L * 2 * B * K * N * N * p,
        "out": L * tok,
        "ista": L * ista_products * tok,
        "head": 2 * B * d * C,
    }
    if ista_products == 1:
        parts["ista Q"] = L * 2 * d**3
    backward = 2 * sum(parts.values()) - parts.get("ista Q", 0)
    if not image_grad:
        backward -= parts["embed"]
    if symmetric_scores:
        backward -= parts["scores"]
    if recompute_heads:
        backward += parts["attn@W"]
    return {"forward": sum(parts.values()), "backward": backward, "parts": parts}


def model_flops(cfg):
    """Official form, as PyTorch autograd runs it."""
    return gemm_flops(cfg)


def minicrate_flops(cfg, fast=True):
    """What minicrate executes: the fused layer takes ISTA in one product and recomputes
    the head outputs in backward; the plain blocks take ISTA in two."""
    return gemm_flops(cfg, ista_products=1 if fast else 2, symmetric_scores=True,
                      recompute_heads=fast, image_grad=True)


# ---------------------------------------------------------------------------------------------
# Machine and kernel report
# ---------------------------------------------------------------------------------------------

def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def system_report(torch_mod=None, backend="numpy"):
    """Everything needed to interpret the numbers, as a dict."""
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_flags": _cpu_flags(),
        "cores_visible": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "backend": backend,
    }
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["numpy_blas_build"] = {k: blas.get(k)
                                    for k in ("name", "version", "openblas configuration")}
        simd = cfg.get("SIMD Extensions", {})
        info["numpy_simd"] = {"baseline": simd.get("baseline"), "found": simd.get("found")}
    except Exception as err:  # very old NumPy
        info["numpy_blas_build"] = f"unavailable ({err})"
    try:
        import threadpoolctl

        info["threadpools"] = [
            {k: pool.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                      "num_threads", "architecture", "threading_layer")}
            for pool in threadpoolctl.threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed (pip install threadpoolctl)"
    if torch_mod is not None:
        torch = torch_mod
        cfg = torch.__config__.show()
        blas = [part.split("=", 1)[1] for part in cfg.replace(",", " ").split()
                if part.startswith("BLAS_INFO=")]
        info["torch"] = {
            "version": torch.__version__,
            "blas": blas[0] if blas else "?",
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "cuda": torch.cuda.is_available(),
        }
        if torch.cuda.is_available():
            info["torch"]["cuda_device"] = torch.cuda.get_device_name(0)
    if backend == "cupy":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["cupy"] = {"version": cupy.__version__, "device": props["name"].decode(),
                        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion()}
    return info


def print_system(info):
    print("== machine and kernels")
    print(f"  CPU: {info['cpu']} ({', '.join(info['cpu_flags'])}); cores usable "
          f"{info['cores_usable']} of {info['cores_visible']}; load average "
          f"{_fmt_load(info['loadavg'])}")
    print(f"  Python {info['python']}, NumPy {info['numpy']}, {info['platform']}")
    print(f"  NumPy BLAS (build): {info.get('numpy_blas_build')}")
    if "allocator" in info:
        print(f"  memory allocator: {info['allocator']}")
    pools = info.get("threadpools")
    if isinstance(pools, list):
        for pool in pools:
            print(f"  thread pool: {pool['internal_api']} {pool['version']} ({pool['user_api']}, "
                  f"{pool['prefix']}), kernel {pool.get('architecture')}, "
                  f"{pool['num_threads']} threads")
    else:
        print(f"  thread pools: {pools}")
    if "torch" in info:
        t = info["torch"]
        print(f"  torch {t['version']}: BLAS {t['blas']}, oneDNN {t['mkldnn']}, kernels "
              f"{t['cpu_capability']}, {t['threads']} threads (interop {t['interop_threads']}), "
              f"CUDA {t['cuda']}"
              + (f" ({t['cuda_device']})" if t.get("cuda_device") else ""))
    if "cupy" in info:
        c = info["cupy"]
        print(f"  CuPy {c['version']} on {c['device']} (CUDA runtime {c['cuda_runtime']})")


def _fmt_load(load):
    return "?" if load is None else " ".join(f"{x:.2f}" for x in load)


# ---------------------------------------------------------------------------------------------
# GEMM ceiling
# ---------------------------------------------------------------------------------------------

def ceiling_shapes(cfg_names):
    """(label, batch, m, k, n) for large square products and the models' own products."""
    shapes = [("square 1024", 1, 1024, 1024, 1024), ("square 2048", 1, 2048, 2048, 2048)]
    for name in cfg_names:
        c = CONFIGS[name]
        N = (c["image_size"] // c["patch_size"]) ** 2 + 1
        B, d, K = c["batch"], c["dim"], c["heads"]
        shapes += [
            (f"({name}) tokens@D", 1, B * N, d, d),
            (f"({name}) W@Wt per head", B * K, N, d // K, N),
            (f"({name}) A@W per head", B * K, N, N, d // K),
        ]
    return shapes


def _median_rate(fn, flops, sync, min_time=0.25, max_reps=25):
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max_reps, max(3, min_time / once)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return flops / statistics.median(times) / 1e9, flops / min(times) / 1e9


def measure_ceiling(shapes, dtypes, *, lib="numpy", torch_mod=None, cupy_mod=None, device="cpu"):
    """GFLOP/s of ``matmul`` (median, best) per dtype and shape, for one library."""
    out = {}
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        rows = []
        for label, b, m, k, n in shapes:
            shape_a = (b, m, k) if b > 1 else (m, k)
            shape_b = (b, k, n) if b > 1 else (k, n)
            A = rng.standard_normal(shape_a).astype(dtype)
            Bm = rng.standard_normal(shape_b).astype(dtype)
            sync = lambda: None
            if lib == "numpy":
                C = np.empty((b, m, n) if b > 1 else (m, n), dtype=dtype)
                fn = lambda A=A, Bm=Bm, C=C: np.matmul(A, Bm, out=C)
            elif lib == "cupy":
                A, Bm = cupy_mod.asarray(A), cupy_mod.asarray(Bm)
                fn = lambda A=A, Bm=Bm: cupy_mod.matmul(A, Bm)
                sync = cupy_mod.cuda.Device().synchronize
            else:
                A = torch_mod.from_numpy(A).to(device)
                Bm = torch_mod.from_numpy(Bm).to(device)
                fn = lambda A=A, Bm=Bm: torch_mod.matmul(A, Bm)
                if device != "cpu":
                    sync = torch_mod.cuda.synchronize
            med, best = _median_rate(fn, 2.0 * b * m * k * n, sync)
            rows.append({"shape": label, "dims": (b, m, k, n), "gflops_median": med,
                         "gflops_best": best})
        out[dtype] = rows
    return out


def ceiling_of(rows):
    """The ceiling: the best median GFLOP/s over the measured shapes."""
    return max(r["gflops_median"] for r in rows)


def print_ceiling(title, results):
    print(f"== GEMM ceiling, {title} (GFLOP/s: median / best)")
    for dtype, rows in results.items():
        cells = ", ".join(f"{r['shape']} {r['gflops_median']:.0f}/{r['gflops_best']:.0f}"
                          for r in rows)
        print(f"  {dtype}: ceiling {ceiling_of(rows):.1f} GFLOP/s  [{cells}]")


# ---------------------------------------------------------------------------------------------
# The implementations: minicrate and its torch peers (eager, compiled)
# ---------------------------------------------------------------------------------------------

def make_config(name, dtype):
    c = {k: v for k, v in CONFIGS[name].items() if k != "batch"}
    return mc_model.CRATEConfig(**c, dtype=dtype)


def make_batch(name, seed=0):
    """Random images (standard normal) and labels, on the host, float64."""
    c = CONFIGS[name]
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((c["batch"], c["channels"], c["image_size"], c["image_size"]))
    labels = rng.integers(0, c["num_classes"], size=c["batch"])
    return images, labels


VARIANTS = {
    # label: fused layer, batch split over the cores (None: one chunk per core), in processes
    "minicrate": dict(fast=True, workers=None, processes=True),
    "minicrate[threads]": dict(fast=True, workers=None, processes=False),
    "minicrate[1 chunk]": dict(fast=True, workers=1, processes=False),
    "minicrate[plain]": dict(fast=False, workers=1, processes=False),
}


class MinicrateRunner:
    """minicrate on one backend: ``forward()`` (inference: logits and loss) and ``fwd_bwd()``.

    The default variant is what minicrate trains with: the fused layer
    (:mod:`minicrate.layers.fused.encoder`) and, on NumPy, the batch split over the cores
    (:mod:`minicrate.training.parallel.threads`; one chunk elsewhere).  ``minicrate[1 chunk]``
    leaves the cores to BLAS threads; ``minicrate[plain]`` runs the plain blocks.
    """

    def __init__(self, name, dtype, backend="numpy", seed=0, params=None, variant="minicrate",
                 max_workers=None):
        self.label = variant
        self.config_name = name
        self.config = make_config(name, dtype)
        self.xp = get_backend(backend)
        self.backend = backend
        opts = VARIANTS[variant]
        self.fast = opts["fast"]
        self.processes = opts["processes"] and backend == "numpy"
        self.workers = default_workers(self.xp) if opts["workers"] is None else opts["workers"]
        if max_workers is not None:  # --threads: at most that many cores for everyone
            self.workers = max(1, min(self.workers, max_workers))
        self.params = params if params is not None else mc_model.init_params(
            self.config, seed=seed, backend=backend, dtype=dtype)
        images, labels = make_batch(name, seed)
        self.images = host_to(self.xp, images, dtype)
        self.labels = host_to(self.xp, labels, "int64")
        if backend == "cupy":
            import cupy

            self.sync = cupy.cuda.Device().synchronize
        else:
            self.sync = lambda: None

    def describe(self):
        threads = ""
        if self.workers > 1:
            threads = (" in worker processes" if self.processes else " on parallel threads") + \
                " with one-thread BLAS"
        scans = "on" if MinicrateRunner.finite_checks else "off, as in minicrate.training.classifier"
        return (f"{self.label}: {'fused' if self.fast else 'plain'} layers, batch in "
                f"{self.workers} chunk(s){threads}; NaN/inf input scans {scans}")

    finite_checks = False  # as minicrate.training.classifier runs the model (the loss is checked instead)

    def forward(self):
        """The inference forward as ``evaluate`` runs it: :func:`minicrate.models.classifier.predict`
        (no cache kept), the batch split as for training (worker processes on NumPy)."""
        with finite_checks(MinicrateRunner.finite_checks):
            logits = parallel.predict(self.params, self.images, self.config, workers=self.workers,
                                      processes=self.processes, fast=self.fast)
            loss, _ = cross_entropy_forward(logits, self.labels,
                                            smoothing=self.config.label_smoothing)
        self.sync()
        return loss

    def fwd_bwd(self):
        with finite_checks(MinicrateRunner.finite_checks):
            loss, grads, _ = parallel.loss_and_grads(self.params, self.images, self.labels,
                                                     self.config, workers=self.workers,
                                                     processes=self.processes, fast=self.fast)
        self.sync()
        return loss, grads

    def loss_and_grads_host(self):
        loss, grads = self.fwd_bwd()
        return float(loss), {k: to_numpy(v) for k, v in grads.items()}


class TorchTwin:
    """What the eager torch peers (this file's and ``bench_lm.py``'s) share: a training step,
    ``self.loss_fn(*self.loss_inputs)`` and its backward, and the gradients under minicrate's
    keys through ``self.twin`` (the twin's module: ``benchmarks.torch_crate`` or ``torch_lm``)."""

    def fwd_bwd(self):
        self.model.zero_grad(set_to_none=True)
        loss = self.loss_fn(*self.loss_inputs)
        loss.backward()
        self.sync()
        return loss

    def loss_and_grads_host(self):
        loss = self.fwd_bwd()
        return loss.item(), self.twin.grads_as_minicrate(self.model, self.params_ref)


class TorchRunner(TorchTwin):
    """The PyTorch autograd reference with minicrate's weights, eager.

    ``forward()`` is an inference forward, under ``torch.inference_mode()`` as an evaluation
    runs it (no autograd graph recorded); ``fwd_bwd()`` is a training step's forward and
    backward.  Both go through ``self.loss_fn`` (the model's ``loss``, or its compiled form).
    """

    label = "torch"

    def __init__(self, name, dtype, params, device="cpu", seed=0):
        import torch

        from benchmarks import torch_crate
        from benchmarks.torch_crate import from_config, load_minicrate_params

        self.torch, self.twin = torch, torch_crate
        self.config = make_config(name, dtype)
        self.device = device
        self.model = from_config(self.config, device=device, dtype=getattr(torch, dtype))
        load_minicrate_params(self.model, params)
        self.params_ref = params
        images, labels = make_batch(name, seed)
        self.images = torch.from_numpy(images).to(device=device, dtype=getattr(torch, dtype))
        self.labels = torch.from_numpy(labels).to(device)
        self.sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
        self.loss_fn = self.model.loss

    def describe(self):
        return (f"{self.label}: eager nn.Module (benchmarks/torch_crate.py) on {self.device}; "
                "forward under torch.inference_mode()")

    @property
    def loss_inputs(self):
        return self.images, self.labels  # read at each call: a check may swap in other images

    def forward(self):
        with self.torch.inference_mode():  # inference: no graph recorded
            loss = self.loss_fn(*self.loss_inputs)
        self.sync()
        return loss


class CompiledTorchRunner(TorchRunner):
    """The same model through ``torch.compile``: inductor, the whole loss as one graph
    (``fullgraph=True``: a graph break is an error, not a silent fallback to eager).

    Compiling is lazy: the first inference forward compiles one graph, the first training
    step another (forward and backward).  :func:`compile_peer` makes those calls and times
    them before anything is measured.
    """

    label = "torch.compile"

    def __init__(self, name, dtype, params, device="cpu", seed=0):
        super().__init__(name, dtype, params, device, seed)
        self.loss_fn = compile_fn(self.torch, self.model.loss)

    def describe(self):
        return (f"{self.label}: the same nn.Module, torch.compile(loss, backend='inductor', "
                f"fullgraph=True) on {self.device}; forward under torch.inference_mode()")


TORCH_PEERS = ("torch", "torch.compile")  # the labels of the torch runners


def compile_fn(torch, fn):
    """``fn`` compiled by inductor as one graph (compiling happens at the first call)."""
    return torch.compile(fn, backend="inductor", fullgraph=True)


def first_calls(runner):
    """Seconds of the first two calls of each phase, ``{phase: {"first_s", "second_s"}}``.

    The first call of a compiled runner compiles (and runs once), so it is the
    compilation time; the second shows the compiled speed it settles to."""
    out = {}
    for phase, fn in (("forward", runner.forward), ("fwd+bwd", runner.fwd_bwd)):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[phase] = {"first_s": times[0], "second_s": times[1]}
    return out


def compile_peer(make):
    """``(runner, report)``: the compiled runner ``make()`` builds, after its compiling first
    calls (:func:`first_calls`), and a report of the compilation times; ``(None, report)``
    with the reason, printed, when compiling fails (no C++ compiler, no Triton on a GPU,
    an operation inductor cannot compile)."""
    t0 = time.perf_counter()
    try:
        runner = make()
        calls = first_calls(runner)
    except Exception as err:  # whatever inductor raises: the comparison goes on without it
        reason = f"{type(err).__name__}: {_first_line(err)}"
        print(f"  torch.compile skipped: compiling failed ({reason})")
        _reset_dynamo()
        return None, {"skipped": reason}
    report = {"backend": "inductor", "fullgraph": True, "phases": calls,
              "total_s": time.perf_counter() - t0, "caches": compile_caches()}
    f, fb = calls["forward"], calls["fwd+bwd"]
    print(f"  torch.compile: compiled on the first calls (excluded from the timings): inference "
          f"forward {f['first_s']:.1f} s, training step {fb['first_s']:.1f} s, "
          f"{report['total_s']:.1f} s in all; the second calls took "
          f"{f['second_s'] * 1e3:.1f} ms and {fb['second_s'] * 1e3:.1f} ms")
    caches = report["caches"]
    if caches.get("fx_graph_cache") or caches.get("autograd_cache"):
        print(f"    (inductor's on-disk caches are on, in {caches.get('dir')}: a graph compiled "
              "by an earlier run compiles faster)")
    return runner, report


def compile_caches():
    """Which of inductor's on-disk compilation caches are on, and where (they make a second
    run's compilation shorter than the first's)."""
    try:
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return {"fx_graph_cache": bool(inductor_config.fx_graph_cache),
                "autograd_cache": bool(functorch_config.enable_autograd_cache),
                "dir": cache_dir()}
    except Exception as err:  # private modules: moved or renamed in another torch version
        return {"unknown": _first_line(err)}


def _first_line(err, limit=300):
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else repr(err)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _reset_dynamo():
    """Forget a failed compilation's caches (so it is not retried by a later call)."""
    try:
        import torch

        torch._dynamo.reset()
    except Exception:  # reset is best effort: nothing compiled is used after a failure
        pass


def compare(mc, tc):
    """Relative errors of minicrate's loss and gradients against torch's (‖g_mc − g_t‖ / ‖g_t‖)."""
    loss_m, grads_m = mc.loss_and_grads_host()
    loss_t, grads_t = tc.loss_and_grads_host()
    return {"loss_minicrate": loss_m, "loss_torch": loss_t,
            **_errors(loss_m, grads_m, loss_t, grads_t)}


def compare_compiled(tcc, tc):
    """Relative errors of the compiled model's loss and gradients against eager torch's."""
    loss_c, grads_c = tcc.loss_and_grads_host()
    loss_t, grads_t = tc.loss_and_grads_host()
    return {"loss_compiled": loss_c, "loss_eager": loss_t,
            **_errors(loss_c, grads_c, loss_t, grads_t)}


def agrees(check, dtype):
    """Whether a :func:`compare` result lies within :data:`TOLERANCE` for ``dtype``."""
    tol, worst = TOLERANCE[dtype]["tol"], TOLERANCE[dtype]["worst"]
    return (check["loss_rel_error"] <= tol and check["grad_median_rel_error"] <= tol
            and check["grad_max_rel_error"] <= worst)


def _errors(loss, grads, ref_loss, ref_grads):
    errs = {}
    for k, g in ref_grads.items():
        g = g.astype(np.float64)
        diff = np.linalg.norm(grads[k].astype(np.float64) - g)
        errs[k] = float(diff / max(np.linalg.norm(g), 1e-30))
    worst = max(errs, key=errs.get)
    return {"loss_rel_error": abs(loss - ref_loss) / abs(ref_loss),
            "grad_max_rel_error": errs[worst], "grad_worst_param": worst,
            "grad_median_rel_error": statistics.median(errs.values())}


def float64_reference(mc, *peers):
    """The float32 implementations (minicrate and the torch ``peers``) against minicrate in
    float64 on the same weights and float32-rounded images: how far float32 arithmetic alone
    takes each from the exact result."""
    xp = mc.xp
    params64 = {k: host_to(xp, to_numpy(v), "float64") for k, v in mc.params.items()}
    ref = MinicrateRunner(mc.config_name, "float64", mc.backend, params=params64,
                          variant="minicrate[1 chunk]")
    ref.images = host_to(xp, to_numpy(mc.images), "float64")
    ref_loss, ref_grads = ref.loss_and_grads_host()
    out = {}
    for runner in (mc, *peers):
        out[runner.label] = _errors(*runner.loss_and_grads_host(), ref_loss, ref_grads)
    return out


# Agreement: loss and median gradient to ``tol``, the worst gradient to ``worst``.  In float32
# a few of the ~10⁷ ISTA ReLU inputs of a step lie within rounding of zero, and which of them
# flip sign differs between any two implementations (and between float32 and float64).  A
# flipped entry changes the small gradients near the input (the patch embedding's) by up to
# ~1e-3 relative, for torch as much as for minicrate (see the float64 line the benchmark
# prints), so the worst parameter gets a looser bound than the rest.
TOLERANCE = {"float32": {"tol": 1e-4, "worst": 5e-3}, "float64": {"tol": 1e-9, "worst": 1e-9}}


# ---------------------------------------------------------------------------------------------
# Interleaved timing
# ---------------------------------------------------------------------------------------------

def _time_call(fn, number):
    """(wall seconds, process CPU seconds) per call, averaged over ``number`` calls.

    CPU time counts every thread of this process and of minicrate's worker
    processes (:mod:`minicrate.training.parallel.procpool`), and nothing else: on a busy machine
    it hardly grows while we wait for a core, so with one thread per library it
    is a robust second measure of the work done."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(number):
        result = fn()
    del result
    return (time.perf_counter() - t0) / number, (_cpu_seconds() - c0) / number


def _cpu_seconds():
    """CPU seconds of this process plus those of the live minicrate worker processes."""
    pool = parallel.current_pool()
    return time.process_time() + (pool.cpu_seconds() if pool is not None else 0.0)


def time_interleaved(runners, *, rounds, settle, min_sample=0.05):
    """Times of ``forward`` and ``fwd_bwd`` per runner, interleaved run by run.

    Each round times every runner's forward, then every runner's
    forward+backward; the order of the runners alternates between rounds.
    Calls shorter than ``min_sample`` seconds are repeated inside one sample.
    Returns ``{phase: {label: [(wall, cpu) seconds per call, one per round]}}``.
    """
    phases = {"forward": lambda r: r.forward, "fwd+bwd": lambda r: r.fwd_bwd}
    number = {}
    for r in runners:  # warm-up, and how many calls make one sample
        for phase, get in phases.items():
            get(r)()
            t, _ = _time_call(get(r), 1)
            number[(r.label, phase)] = max(1, math.ceil(min_sample / max(t, 1e-6)))
    samples = {phase: {r.label: [] for r in runners} for phase in phases}
    for i in range(rounds):
        order = runners if i % 2 == 0 else runners[::-1]
        for phase, get in phases.items():
            for r in order:
                gc.collect()
                time.sleep(settle)
                samples[phase][r.label].append(_time_call(get(r), number[(r.label, phase)]))
    return samples


def _quartiles(xs):
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


# ---------------------------------------------------------------------------------------------
# Peak memory: one implementation per fresh subprocess
# ---------------------------------------------------------------------------------------------

def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(spec):
    r"""Run in a fresh process: peak resident memory above baseline of one forward+backward.

    Method (the same for every implementation): glibc's ``malloc`` is told to
    serve every allocation above 64 KiB by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``,
    set by the parent) so freed arrays go back to the kernel and the resident
    set size (RSS) follows the live arrays.  After imports, weights, the batch
    and two warm-up steps (lazy initialisation, kernel caches), the baseline is
    the current RSS; the kernel's peak counter (VmHWM) is reset through
    ``/proc/self/clear_refs`` and one forward+backward runs, its result (loss,
    gradients) kept alive until VmHWM is read.  The figure is VmHWM − baseline:
    the activations kept for backward, the gradients and the temporaries, as
    the operating system sees them.  minicrate also reports the peak of NumPy's
    own allocations from ``tracemalloc`` (a second, separate step) as a check.
    """
    spec = json.loads(spec)
    impl, name, dtype, threads = spec["impl"], spec["config"], spec["dtype"], spec["threads"]
    _set_threads(threads)
    mc = MinicrateRunner(name, dtype, "numpy", seed=0,
                         variant=impl if impl in VARIANTS else "minicrate", max_workers=threads)
    runner = mc
    if impl in TORCH_PEERS:
        params = {k: to_numpy(v) for k, v in mc.params.items()}
        del mc
        runner = (CompiledTorchRunner if impl == "torch.compile" else TorchRunner)(
            name, dtype, params, "cpu")
        del params
    for _ in range(2):  # the compiled model compiles in the first
        result = runner.fwd_bwd()
        del result
    if impl in TORCH_PEERS:
        runner.model.zero_grad(set_to_none=True)
    gc.collect()
    baseline = _status_kb("VmRSS")
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset = False
    hwm_before = _status_kb("VmHWM")
    pool = parallel.current_pool() if impl not in TORCH_PEERS else None
    if pool is not None:  # worker processes: their peaks above their own baselines count too
        pool.reset_peak_memory()
    result = runner.fwd_bwd()
    peak = _status_kb("VmHWM")
    workers_kb = sum(pool.peak_memory_kb()) if pool is not None else 0
    del result
    out = {"impl": impl, "config": name, "dtype": dtype, "baseline_mb": baseline / 1024,
           "peak_above_baseline_mb": (peak - baseline + workers_kb) / 1024, "hwm_reset": reset,
           "hwm_before_mb": hwm_before / 1024, "worker_processes_mb": workers_kb / 1024}
    if impl not in TORCH_PEERS:
        import tracemalloc

        gc.collect()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        result = runner.fwd_bwd()
        out["tracemalloc_peak_mb"] = (tracemalloc.get_traced_memory()[1] - start) / 2**20
        tracemalloc.stop()
        del result
    print("MEMORY " + json.dumps(out))


def measure_memory(impl, name, dtype, threads):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               MALLOC_TOP_PAD_="0", MINICRATE_KEEP_FREED_MEMORY="0")
    spec = json.dumps({"impl": impl, "config": name, "dtype": dtype, "threads": threads})
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-child", spec],
                          env=env, capture_output=True, text=True, cwd=str(ROOT))
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[7:])
    raise RuntimeError(f"memory subprocess for {impl} failed:\n{proc.stderr[-3000:]}")


class _CupyPeak:
    """Peak bytes in use in CuPy's memory pool (an allocator hook)."""

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.pool = cupy.get_default_memory_pool()
        self.peak = 0
        cupy.cuda.set_allocator(self.malloc)

    def malloc(self, size):
        mem = self.pool.malloc(size)
        self.peak = max(self.peak, self.pool.used_bytes())
        return mem

    def measure(self, fn):
        gc.collect()
        self.cupy.cuda.Device().synchronize()
        base = self.pool.used_bytes()
        self.peak = base
        result = fn()
        del result
        return (self.peak - base) / 2**20


def gpu_memory(mc, peers):
    """Peak device memory above baseline: CuPy pool bytes in use vs torch's allocated bytes,
    ``{"minicrate": MB, <peer label>: MB, ...}``."""
    out = {}
    if mc is not None:
        out["minicrate"] = _CupyPeak().measure(mc.fwd_bwd)
    for tc in peers:
        torch = tc.torch
        tc.model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        tc.fwd_bwd()
        out[tc.label] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def _set_threads(threads):
    if threads is None:
        return
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(threads)
    except ImportError:
        pass
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def _gflop(f):
    return {"forward": f["forward"] / 1e9, "fwd+bwd": (f["forward"] + f["backward"]) / 1e9}


PHASES_LINE = ("  phases: forward = inference (the torch peers under torch.inference_mode(), no "
               "autograd graph recorded; minicrate: MinicrateRunner.forward); fwd+bwd = a "
               "training step's forward and backward")


def run_config(name, dtype, args, torch_mod, ceilings, torch_ceilings):
    """Build, check, time and measure one configuration in one dtype: a row of the results."""
    cfg = CONFIGS[name]
    runners = [MinicrateRunner(name, dtype, args.backend, seed=0, variant=v,
                               max_workers=args.threads) for v in args.variants]
    mc = runners[0]
    for r in runners[1:]:
        r.params = mc.params  # one set of weights
    host_params = {k: to_numpy(v) for k, v in mc.params.items()}
    tc = TorchRunner(name, dtype, host_params, args.torch_device) if torch_mod is not None else None
    N = (cfg["image_size"] // cfg["patch_size"]) ** 2 + 1
    print(f"\n== config ({name}) {dtype}: {cfg['image_size']}x{cfg['image_size']}x"
          f"{cfg['channels']}, patch {cfg['patch_size']}, d {cfg['dim']}, depth {cfg['depth']}, "
          f"{cfg['heads']} heads, "
          f"batch {cfg['batch']}, {N} tokens, {mc_model.param_count(mc.config):,} parameters")
    print(PHASES_LINE)
    executed = {"torch": _gflop(model_flops(cfg))}
    for r in runners:
        executed[r.label] = _gflop(minicrate_flops(cfg, fast=r.fast))
        print(f"  {r.describe()}")
    tcc, compile_report = None, None
    if tc is not None:
        print(f"  {tc.describe()}")
        tcc, compile_report = compiled_peer(args, lambda: CompiledTorchRunner(
            name, dtype, host_params, args.torch_device))
    peers = [p for p in (tc, tcc) if p is not None]
    if tcc is not None:
        executed[tcc.label] = executed["torch"]  # inductor fuses elementwise work, not products
        print(f"  {tcc.describe()}")
    print(f"  GEMM GFLOP per batch, fwd / fwd+bwd: official form (as torch runs it) "
          f"{executed['torch']['forward']:.2f} / {executed['torch']['fwd+bwd']:.2f}; "
          "minicrate executes "
          + ", ".join(f"{executed[r.label]['forward']:.2f} / {executed[r.label]['fwd+bwd']:.2f}"
                      + (f" ({r.label})" if len(runners) > 1 else "") for r in runners))
    row = {"config": name, "dtype": dtype, "batch": cfg["batch"], "model_gflop": executed["torch"],
           "executed_gflop": executed, "variants": [r.describe() for r in runners],
           "peers": [p.describe() for p in peers], "compile": compile_report}
    if tc is not None:
        row["check"] = check_agreement(mc, tc, tcc, dtype, args.no_check)
    everyone = runners + peers
    load0 = os.getloadavg()
    samples = time_interleaved(everyone, rounds=args.rounds, settle=args.settle)
    row["loadavg"] = [load0, os.getloadavg()]
    print(f"  timing: {args.rounds} interleaved rounds, load average {_fmt_load(load0)} -> "
          f"{_fmt_load(os.getloadavg())}")
    ceiling = {r.label: ((torch_ceilings or ceilings) if r in peers else ceilings)[dtype]
               for r in everyone}
    row["timing"] = timing_summary(samples, runners, peers, executed, row["model_gflop"], ceiling)
    row.update(row_memory(args, name, dtype, mc, peers))
    return row


def compiled_peer(args, make):
    """``(compiled runner or None, report)``; ``--no-compile`` leaves it out."""
    if not args.compile:
        print("  torch.compile: off (--no-compile)")
        return None, {"skipped": "--no-compile"}
    return compile_peer(make)


def check_agreement(mc, tc, tcc, dtype, no_check):
    """One step of each, on the same weights: minicrate against eager torch, the compiled model
    (if any) against eager torch and, in float32, everyone against float64 minicrate.

    Stops the script (``SystemExit``) on a disagreement unless ``no_check``; returns the check
    for the results row."""
    check = compare(mc, tc)
    ok = agrees(check, dtype)
    tol, worst = TOLERANCE[dtype]["tol"], TOLERANCE[dtype]["worst"]
    print(f"  same weights: loss {check['loss_minicrate']:.6f} (minicrate) vs "
          f"{check['loss_torch']:.6f} (torch), rel. error {check['loss_rel_error']:.1e}; "
          f"gradients: {_grad_errors(check)} -> {'agree' if ok else 'DISAGREE'} "
          f"(tolerance {tol:g}, worst parameter {worst:g})")
    failed = [] if ok else ["minicrate and torch"]
    if tcc is not None:
        cc = compare_compiled(tcc, tc)
        check["compiled_vs_eager"] = cc
        ok_c = agrees(cc, dtype)
        print(f"  torch.compile against eager torch: loss {cc['loss_compiled']:.6f} vs "
              f"{cc['loss_eager']:.6f}, rel. error {cc['loss_rel_error']:.1e}; gradients: "
              f"{_grad_errors(cc)} -> {'agree' if ok_c else 'DISAGREE'}")
        failed += [] if ok_c else ["torch.compile and eager torch"]
    if dtype == "float32":
        ref = float64_reference(mc, *(p for p in (tc, tcc) if p is not None))
        check["float64_reference"] = ref
        print("  against float64 minicrate on the same (float32-rounded) inputs: "
              + "; ".join(f"{who} loss rel. error {v['loss_rel_error']:.1e}, gradients "
                          f"{_grad_errors(v)}" for who, v in ref.items()))
    if failed and not no_check:
        raise SystemExit(f"{' and '.join(failed)} disagree; not timing "
                         "(use --no-check to time anyway)")
    return check


def _grad_errors(check):
    return (f"max rel. error {check['grad_max_rel_error']:.1e} ({check['grad_worst_param']}), "
            f"median {check['grad_median_rel_error']:.1e}")


def phase_stats(pairs):
    """Wall and CPU statistics (ms) of one runner in one phase from ``[(wall s, cpu s), ...]``."""
    wall, cpu = [w for w, _ in pairs], [c for _, c in pairs]
    q1, med, q3 = _quartiles(wall)
    return {"median_ms": med * 1e3, "q1_ms": q1 * 1e3, "q3_ms": q3 * 1e3,
            "min_ms": min(wall) * 1e3, "cpu_median_ms": statistics.median(cpu) * 1e3,
            "samples_ms": [x * 1e3 for x in wall], "cpu_samples_ms": [x * 1e3 for x in cpu]}


def ratios(entry, label, ref):
    """Time ratios ``label``/``ref`` of one phase from :func:`phase_stats` entries: the median
    (and quartiles) of the per-round ratios, and the ratios of medians, minima and CPU times."""
    e, t = entry[label], entry[ref]
    per_round = [a / b for a, b in zip(e["samples_ms"], t["samples_ms"], strict=True)]
    q1, med, q3 = _quartiles(per_round)
    return {"paired_ratio": {"median": med, "q1": q1, "q3": q3},
            "ratio_of_medians": e["median_ms"] / t["median_ms"],
            "ratio_of_minima": e["min_ms"] / t["min_ms"],
            "cpu_ratio": e["cpu_median_ms"] / t["cpu_median_ms"]}


def print_ratios(phase, label, ref, r):
    p = r["paired_ratio"]
    print(f"  {phase:8s} {label}/{ref}: per-round ratios median {p['median']:.3f} "
          f"(25-75% {p['q1']:.3f}-{p['q3']:.3f}); ratio of medians {r['ratio_of_medians']:.3f}; "
          f"of minima {r['ratio_of_minima']:.3f}; of CPU times {r['cpu_ratio']:.3f}")


def timing_summary(samples, runners, peers, executed, model_gflop, ceiling):
    """Print the timing table and the ratios; return ``{phase: {label: entry}}``.

    Each minicrate entry has ``"vs"``, its ratios against every torch peer
    (:func:`ratios`), and, as before the compiled peer existed, the ratios against eager
    torch at its top level."""
    everyone = runners + peers
    width = max(len(r.label) for r in everyone)
    print(f"  {'phase':8s} {'impl':{width}s} {'median ms':>10s} {'25-75% ms':>17s} {'min ms':>9s} "
          f"{'CPU ms':>9s} {'model GF/s':>10s} {'exec GF/s':>9s} {'% ceiling':>9s}")
    timing = {}
    for phase, per_runner in samples.items():
        entry = {}
        for r in everyone:
            e = entry[r.label] = phase_stats(per_runner[r.label])
            med = e["median_ms"] / 1e3
            e["model_gflops"] = model_gflop[phase] / med
            e["executed_gflops"] = executed[r.label][phase] / med
            e["ceiling_fraction"] = e["executed_gflops"] / ceiling[r.label]
            print(f"  {phase:8s} {r.label:{width}s} {e['median_ms']:10.2f} "
                  f"{e['q1_ms']:8.2f}-{e['q3_ms']:8.2f} {e['min_ms']:9.2f} "
                  f"{e['cpu_median_ms']:9.2f} {e['model_gflops']:10.1f} "
                  f"{e['executed_gflops']:9.1f} {100 * e['ceiling_fraction']:8.1f}%")
        for r in runners:
            entry[r.label]["vs"] = {p.label: ratios(entry, r.label, p.label) for p in peers}
            if peers:
                entry[r.label].update(entry[r.label]["vs"][peers[0].label])
            for p in peers:
                print_ratios(phase, r.label, p.label, entry[r.label]["vs"][p.label])
        timing[phase] = entry
    return timing


def row_memory(args, name, dtype, mc, peers):
    """Peak memory of one forward+backward (``--no-memory``: nothing) as results-row fields:
    ``memory`` per implementation, ``memory_ratio`` (minicrate/eager torch) and
    ``memory_ratios`` (minicrate/each torch peer)."""
    if not args.memory:
        return {}
    if args.backend == "torch":
        print("  (no memory figure for minicrate on torch tensors)")
        return {}
    on_cpu = args.backend == "numpy" and args.torch_device == "cpu"
    if on_cpu:
        mem = {"minicrate": measure_memory(mc.label, name, dtype, args.threads)}
        for p in peers:
            try:
                mem[p.label] = measure_memory(p.label, name, dtype, args.threads)
            except RuntimeError as err:  # e.g. compiling failed in the fresh process
                print(f"  no memory figure for {p.label}: {_first_line(err)}")
        peers = [p for p in peers if p.label in mem]
        mb = {k: v["peak_above_baseline_mb"] for k, v in mem.items()}
        line = (f"  peak memory above baseline, fwd+bwd (RSS, fresh process each): "
                f"{mc.label} {mb['minicrate']:.1f} MB (NumPy tracemalloc peak "
                f"{mem['minicrate']['tracemalloc_peak_mb']:.1f} MB)")
    else:
        mem = mb = gpu_memory(mc, peers)
        line = (f"  peak device memory above baseline, fwd+bwd: minicrate "
                f"{mb['minicrate']:.1f} MB")
    out = {"memory": mem}
    out["memory_ratios"] = {p.label: mb["minicrate"] / mb[p.label] for p in peers}
    if "torch" in out["memory_ratios"]:
        out["memory_ratio"] = out["memory_ratios"]["torch"]
    line += "".join(f", {p.label} {mb[p.label]:.1f} MB (ratio {out['memory_ratios'][p.label]:.3f})"
                    for p in peers)
    print(line)
    return out


def markdown_table(rows, info, ceilings):
    """A results table for the README: the first minicrate variant against eager torch and
    torch.compile (a missing peer is a dash)."""
    lines = ["| config | dtype | fwd ms minicrate / torch / compiled | ratio torch / compiled | "
             "fwd+bwd ms minicrate / torch / compiled | ratio torch / compiled | "
             "peak MB minicrate / torch / compiled | ratio torch / compiled | minicrate GFLOP/s | "
             "% of GEMM ceiling | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fb = r["timing"]["fwd+bwd"]
        label = next(k for k in fb if k not in TORCH_PEERS)
        cells = [f"({r['config']})", r["dtype"]]
        for phase in ("forward", "fwd+bwd"):
            t = r["timing"][phase]
            cells.append(" / ".join(_num(t.get(k, {}).get("median_ms"), 1)
                                    for k in (label, *TORCH_PEERS)))
            cells.append(" / ".join(_num(t[label].get("vs", {}).get(k, {})
                                         .get("paired_ratio", {}).get("median"), 2)
                                    for k in TORCH_PEERS))
        mem = r.get("memory", {})
        mb = {k: v["peak_above_baseline_mb"] if isinstance(v, dict) else v for k, v in mem.items()}
        cells.append(" / ".join(_num(mb.get(k), 0) for k in ("minicrate", *TORCH_PEERS)))
        cells.append(" / ".join(_num(r.get("memory_ratios", {}).get(k), 2) for k in TORCH_PEERS))
        cells += [f"{fb[label]['executed_gflops']:.0f}",
                  f"{100 * fb[label]['ceiling_fraction']:.0f}%", _compile_cell(r.get("compile"))]
        lines.append("| " + " | ".join(cells) + " |")
    pools = info.get("threadpools")
    blas = ", ".join(f"{p['internal_api']} {p['version']} ({p.get('architecture')}, "
                     f"{p['num_threads']} thr)" for p in pools) if isinstance(pools, list) else "?"
    ceil = ", ".join(f"{k} {v:.0f}" for k, v in ceilings.items())
    torch_info = info.get("torch", {})
    lines.append("")
    lines.append(f"{info['cpu']}, {info['cores_usable']} cores; NumPy {info['numpy']} with {blas}; "
                 f"torch {torch_info.get('version', '–')} ({torch_info.get('blas', '–')}, "
                 f"{torch_info.get('threads', '–')} threads); NumPy GEMM ceiling GFLOP/s: {ceil}. "
                 "Ratios: minicrate/peer, medians of per-round ratios, implementations interleaved "
                 "run by run; forward: inference (torch under torch.inference_mode()); compile s: "
                 "torch.compile's first calls (inference forward + training step), not in the "
                 "timings.")
    return "\n".join(lines)


def _num(x, digits):
    return "–" if x is None else f"{x:.{digits}f}"


def _compile_cell(report):
    if not report or "phases" not in report:
        return "–"
    return f"{sum(p['first_s'] for p in report['phases'].values()):.0f}"


def write_json(path, results):
    """Write ``results`` (written again as rows are added) to ``path`` through a temporary file,
    so the file on disk is always a whole JSON document."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="a,b", help=f"comma list of {','.join(CONFIGS)}")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "torch"],
                   help="minicrate's array backend (torch: minicrate's own code on torch CPU "
                        "tensors, no autograd)")
    p.add_argument("--torch-device", default=None,
                   help="cpu or cuda (default: cuda with --backend cupy)")
    p.add_argument("--no-torch", action="store_true", help="time minicrate alone")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="leave out the torch.compile peer (eager torch only)")
    p.add_argument("--variants", default="minicrate",
                   help="comma list of minicrate variants to time: " + ", ".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds (default 21, 15 for (c))")
    p.add_argument("--settle", type=float, default=0.02,
                   help="pause (s) before each timed sample, so idle BLAS/OpenMP threads "
                        "stop spinning")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS/torch threads (default: the libraries' defaults, printed)")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--no-check", action="store_true", help="time even if the models disagree")
    p.add_argument("--finite-checks", action="store_true",
                   help="keep minicrate's NaN/inf scans of every input on (minicrate.training.classifier, like "
                        "this benchmark by default, runs with them off and checks the loss)")
    p.add_argument("--json", type=Path, default=None, help="write every number to this file")
    p.add_argument("--markdown", action="store_true",
                   help="print a README results table at the end")
    p.add_argument("--quick", action="store_true", help="smoke run: few rounds, no float64 on (b)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    if args.memory_child is not None:
        memory_child(args.memory_child)
        return 0
    if args.torch_device is None:
        args.torch_device = "cuda" if args.backend == "cupy" else "cpu"
    # Freed arrays stay in the heap for reuse instead of going back to the system and
    # coming back as page faults (minicrate.core.allocator).  Process-wide: torch gets it too.
    info_allocator = keep_freed_memory()
    _set_threads(args.threads)
    MinicrateRunner.finite_checks = args.finite_checks
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in args.variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {list(VARIANTS)}")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"unknown config {n!r}; choose from {sorted(CONFIGS)}")
    torch_mod = None
    if not args.no_torch:
        try:
            import torch as torch_mod
        except ImportError:
            print("torch is not installed: timing minicrate alone "
                  "(pip install torch for the comparison)")
    if torch_mod is not None and args.torch_device != "cpu" and not torch_mod.cuda.is_available():
        print("torch has no CUDA here: timing minicrate alone")
        torch_mod = None
    cupy_mod = None
    if args.backend == "cupy":
        from minicrate.core.backend import cupy_available

        if not cupy_available():
            raise SystemExit("--backend cupy needs a working GPU and CuPy")
        import cupy as cupy_mod

    info = system_report(torch_mod, args.backend)
    info["allocator"] = ("glibc keeps freed blocks for reuse (minicrate.core.allocator), for both"
                         if info_allocator else "the system allocator's defaults")
    print_system(info)
    shapes = ceiling_shapes(names)
    lib = "cupy" if args.backend == "cupy" else "numpy"
    ceil_before = measure_ceiling(shapes, dtypes, lib=lib, cupy_mod=cupy_mod)
    print_ceiling(f"{lib} matmul, before the models", ceil_before)
    ceil_one = None
    if lib == "numpy":
        from minicrate.training.parallel.threads import one_thread_blas

        with one_thread_blas():
            ceil_one = measure_ceiling(shapes, dtypes, lib="numpy")
        print_ceiling("numpy matmul with one BLAS thread (what each batch chunk gets)", ceil_one)
    torch_ceil = None
    if torch_mod is not None:
        torch_ceil = measure_ceiling(shapes, dtypes, lib="torch", torch_mod=torch_mod,
                                     device=args.torch_device)
        print_ceiling(f"torch matmul ({args.torch_device})", torch_ceil)
    ceilings = {d: ceiling_of(rows) for d, rows in ceil_before.items()}
    torch_ceilings = {d: ceiling_of(rows) for d, rows in torch_ceil.items()} if torch_ceil else None

    rows = []
    results = {"system": info, "ceiling_before": ceil_before, "ceiling_one_thread": ceil_one,
               "ceiling_after": None, "torch_ceiling": torch_ceil, "results": rows}
    for name in names:
        for dtype in dtypes:
            if args.quick and name == "b" and dtype == "float64":
                continue
            if args.rounds is None:
                rounds = 5 if args.quick else (15 if name == "c" else 21)
            else:
                rounds = args.rounds
            sub = argparse.Namespace(**{**vars(args), "rounds": rounds})
            rows.append(run_config(name, dtype, sub, torch_mod, ceilings, torch_ceilings))
            if args.json:  # after every row: a run stopped by a time limit keeps what it measured
                write_json(args.json, results)

    ceil_after = measure_ceiling(shapes, dtypes, lib=lib, cupy_mod=cupy_mod)
    print()
    print_ceiling(f"{lib} matmul, after the models", ceil_after)
    print(f"  load average at the end: {_fmt_load(os.getloadavg())}")
    if args.markdown:
        print("\n" + markdown_table(rows, info, ceilings))
    if args.json:
        results["ceiling_after"] = ceil_after
        write_json(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
