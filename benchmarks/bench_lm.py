#!/usr/bin/env python
r"""Tokens per second of minicrate's causal character LM against PyTorch eager and torch.compile.

The model and batch are the recipe of ``benchmarks/train_lm.py`` (``MODEL`` and
``TRAIN``: context 64, d 128, 4 layers, 4 heads, batch 32, float32; the
Shakespeare corpus's vocabulary), with one set of weights in three
implementations:

* **minicrate** as its training runs it: a step is
  :func:`minicrate.training.lm.loss_and_grads` with the batch split into
  ``workers`` chunks (one per usable core, as ``train-lm`` does; that function
  decides whether the chunks run on threads or worker processes), NaN/inf scans
  off and freed memory kept for reuse, as in the training loop; the forward is
  :func:`minicrate_forward`;
* **torch**: :mod:`benchmarks.torch_lm`, the same model as an eager ``nn.Module``;
* **torch.compile**: that module through ``torch.compile`` (inductor, one graph
  for the logits and one for the loss; ``--no-compile`` leaves it out, and it is
  skipped with the reason printed where compiling fails).  Its first calls
  compile it; they are timed and printed on their own, outside the timings.

What it does, in order:

1. the machine and its kernels (as ``bench_speed.py`` prints them);
2. the **same numbers first**: logits, loss and every gradient of one batch,
   minicrate against eager torch and the compiled model against eager torch,
   with ``bench_speed.py``'s tolerances (the script stops on a disagreement
   unless ``--no-check``);
3. **timing**, interleaved run by run (``bench_speed.time_interleaved``): the
   forward, an inference forward giving the logits (torch under
   ``torch.inference_mode()``: no autograd graph recorded), and the training
   step (forward and backward of the mean cross-entropy).  Reported: medians,
   the spread, CPU time, tokens per second (batch × context / median time) and
   the time ratios minicrate/torch and minicrate/torch.compile as the median of
   the per-round ratios (with the ratios of medians, minima and CPU times).

Usage::

    .venv/bin/python benchmarks/bench_lm.py                     # 21 rounds, with torch.compile
    .venv/bin/python benchmarks/bench_lm.py --markdown --json lm-speed.json
    .venv/bin/python benchmarks/bench_lm.py --no-compile --rounds 5

The machine this runs on may be shared: every number comes with its spread
and the load average; quote the figures of an idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_speed import (  # noqa: E402
    TOLERANCE,
    TorchTwin,
    _errors,
    _fmt_load,
    _set_threads,
    agrees,
    compile_fn,
    compile_peer,
    phase_stats,
    print_ratios,
    print_system,
    ratios,
    system_report,
    time_interleaved,
    write_json,
)
from benchmarks.train_lm import MODEL, TRAIN  # noqa: E402
from minicrate.core.allocator import keep_freed_memory  # noqa: E402
from minicrate.core.validate import finite_checks  # noqa: E402
from minicrate.models import lm  # noqa: E402
from minicrate.training import lm as train_lm  # noqa: E402

PEERS = ("torch", "torch.compile")  # the torch runners' labels
PHASES = {"forward": "inference: the logits", "fwd+bwd": "training step: loss and gradients"}


def minicrate_forward(params, inputs, config, workers):
    """The forward timed for minicrate: logits ``(B, N, V)`` of ids ``(B, N)``, as evaluation
    and sampling run it: :func:`minicrate.models.lm.predict` (no cache kept), the batch split
    over ``workers`` chunks (:func:`minicrate.training.parallel.threads.split_map`: worker
    processes on NumPy)."""
    from minicrate.training.parallel.threads import split_map

    return split_map(lm.predict, params, (inputs,), config, workers=workers)


def make_config(vocab_size, dtype):
    """The recipe's :class:`minicrate.models.lm.LMConfig` (causal form), as train_lm.py builds it."""
    from minicrate.commands.train_lm import model_config_for

    return model_config_for(vocab_size, {**MODEL, "form": "causal", "dtype": dtype})


def make_batch(corpus, config, batch_size, seed=0):
    """``(inputs, targets)``: int64 ``(B, context)`` windows of the training plays and the
    next characters, as the training loop draws them."""
    from minicrate.data.text import causal_batch, random_windows

    windows = random_windows(corpus.train, config.context + 1, batch_size,
                             np.random.default_rng(seed))
    return causal_batch(windows)


class MinicrateLM:
    """minicrate's LM as ``train-lm`` runs it: ``forward()`` and ``fwd_bwd()`` (a step)."""

    label = "minicrate"

    def __init__(self, config, params, inputs, targets, workers):
        self.config, self.params = config, params
        self.inputs, self.targets = inputs, targets
        self.workers = workers

    def describe(self):
        return (f"{self.label}: step minicrate.training.lm.loss_and_grads, batch in "
                f"{self.workers} chunk(s); forward bench_lm.minicrate_forward; NaN/inf scans "
                "off, freed memory kept for reuse (as train-lm runs it)")

    def forward(self):
        with finite_checks(False):  # as the training loop and its evaluation run the model
            return minicrate_forward(self.params, self.inputs, self.config, self.workers)

    def fwd_bwd(self):
        with finite_checks(False):
            loss, grads, _ = train_lm.loss_and_grads(self.params, self.inputs, self.targets,
                                                     self.config, None, workers=self.workers)
        return loss, grads

    def logits_host(self):
        return np.asarray(self.forward(), dtype=np.float64)

    def loss_and_grads_host(self):
        loss, grads = self.fwd_bwd()
        return float(loss), {k: np.asarray(v) for k, v in grads.items()}


class TorchLM(TorchTwin):
    """The eager torch twin (:mod:`benchmarks.torch_lm`) with minicrate's weights.

    ``forward()`` runs the logits under ``torch.inference_mode()`` (no graph recorded);
    ``fwd_bwd()`` a training step.  Both go through ``logits_fn`` / ``loss_fn``."""

    label = "torch"

    def __init__(self, config, params, inputs, targets, device="cpu"):
        import torch

        from benchmarks import torch_lm

        self.torch, self.device, self.twin = torch, device, torch_lm
        self.params_ref = params
        self.model = torch_lm.load_minicrate_params(
            torch_lm.from_config(config, device=device), params)
        self.inputs = torch.from_numpy(np.asarray(inputs, dtype=np.int64)).to(device)
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.int64)).to(device)
        self.sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
        self.logits_fn, self.loss_fn = self.model, self.model.loss

    def describe(self):
        return (f"{self.label}: eager nn.Module (benchmarks/torch_lm.py) on {self.device}, "
                f"{self.torch.get_num_threads()} threads; forward under torch.inference_mode()")

    def forward(self):
        with self.torch.inference_mode():
            logits = self.logits_fn(self.inputs)
        self.sync()
        return logits

    @property
    def loss_inputs(self):
        return self.inputs, self.targets

    def logits_host(self):
        return self.forward().cpu().numpy().astype(np.float64)


class CompiledTorchLM(TorchLM):
    """The same module through ``torch.compile`` (inductor, ``fullgraph=True``): one graph for
    the logits, one for the loss (its backward compiled with it)."""

    label = "torch.compile"

    def __init__(self, config, params, inputs, targets, device="cpu"):
        super().__init__(config, params, inputs, targets, device)
        self.logits_fn = compile_fn(self.torch, self.model.forward)
        self.loss_fn = compile_fn(self.torch, self.model.loss)

    def describe(self):
        return (f"{self.label}: the same nn.Module, torch.compile(backend='inductor', "
                "fullgraph=True) of its forward and of its loss; forward under "
                "torch.inference_mode()")


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def logits_error(runner, ref):
    """‖logits − ref logits‖ / ‖ref logits‖ of one batch."""
    a, b = runner.logits_host(), ref.logits_host()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_pair(runner, ref, dtype):
    """Logits, loss and gradients of ``runner`` against ``ref`` (eager torch), printed; the
    check dict and whether it is within :data:`benchmarks.bench_speed.TOLERANCE`."""
    loss, grads = runner.loss_and_grads_host()
    ref_loss, ref_grads = ref.loss_and_grads_host()
    check = {"loss": loss, "loss_ref": ref_loss, **_errors(loss, grads, ref_loss, ref_grads),
             "logits_rel_error": logits_error(runner, ref)}
    ok = agrees(check, dtype) and check["logits_rel_error"] <= TOLERANCE[dtype]["tol"]
    print(f"  {runner.label} against {ref.label}: logits rel. error "
          f"{check['logits_rel_error']:.1e}; loss {loss:.6f} vs {ref_loss:.6f}, rel. error "
          f"{check['loss_rel_error']:.1e}; gradients max rel. error "
          f"{check['grad_max_rel_error']:.1e} ({check['grad_worst_param']}), median "
          f"{check['grad_median_rel_error']:.1e} -> {'agree' if ok else 'DISAGREE'}")
    return check, ok


def check_all(mc, peers, dtype, no_check):
    """Everyone against eager torch (``peers[0]``); stops unless ``no_check`` on a disagreement."""
    tol = TOLERANCE[dtype]
    print(f"== same weights, one batch (tolerance {tol['tol']:g} on logits, loss and the median "
          f"gradient, {tol['worst']:g} on the worst)")
    checks, failed = {}, []
    for runner in (mc, *peers[1:]):
        checks[runner.label], ok = check_pair(runner, peers[0], dtype)
        failed += [] if ok else [runner.label]
    if failed and not no_check:
        raise SystemExit(f"{', '.join(failed)} and eager torch disagree; not timing "
                         "(use --no-check to time anyway)")
    return checks


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def timing_summary(samples, mc, peers, tokens):
    """Print the timing table (with tokens per second) and the ratios; return
    ``{phase: {label: entry}}``, minicrate's entry with ``"vs"``: its ratios against each peer."""
    everyone = [mc, *peers]
    width = max(len(r.label) for r in everyone)
    print(f"  {'phase':8s} {'impl':{width}s} {'median ms':>10s} {'25-75% ms':>17s} {'min ms':>9s} "
          f"{'CPU ms':>9s} {'tokens/s':>10s}")
    timing = {}
    for phase, per_runner in samples.items():
        entry = {}
        for r in everyone:
            e = entry[r.label] = phase_stats(per_runner[r.label])
            e["tokens_per_s"] = tokens / (e["median_ms"] / 1e3)
            print(f"  {phase:8s} {r.label:{width}s} {e['median_ms']:10.2f} "
                  f"{e['q1_ms']:8.2f}-{e['q3_ms']:8.2f} {e['min_ms']:9.2f} "
                  f"{e['cpu_median_ms']:9.2f} {e['tokens_per_s']:10.0f}")
        entry[mc.label]["vs"] = {p.label: ratios(entry, mc.label, p.label) for p in peers}
        for p in peers:
            print_ratios(phase, mc.label, p.label, entry[mc.label]["vs"][p.label])
        timing[phase] = entry
    return timing


def markdown_table(result):
    """Tokens per second and minicrate/peer time ratios, one row per phase (a missing peer: –)."""
    timing = result["timing"]
    lines = ["| phase | tokens/s minicrate / torch / compiled | ms minicrate / torch / compiled | "
             "ratio torch / compiled |", "|---|---|---|---|"]
    for phase, what in PHASES.items():
        t = timing[phase]
        tok = " / ".join(_num(t.get(k, {}).get("tokens_per_s"), 0) for k in ("minicrate", *PEERS))
        ms = " / ".join(_num(t.get(k, {}).get("median_ms"), 1) for k in ("minicrate", *PEERS))
        vs = t["minicrate"].get("vs", {})
        ratio = " / ".join(_num(vs.get(k, {}).get("paired_ratio", {}).get("median"), 2)
                           for k in PEERS)
        lines.append(f"| {phase} ({what}) | {tok} | {ms} | {ratio} |")
    info, model = result["system"], result["model"]
    torch_info = info.get("torch", {})
    compiled = result.get("compile") or {}
    compile_s = (f"{sum(p['first_s'] for p in compiled['phases'].values()):.0f} s"
                 if "phases" in compiled else "–")
    lines += ["", f"{info['cpu']}, {info['cores_usable']} cores; NumPy {info['numpy']}; torch "
              f"{torch_info.get('version', '–')} ({torch_info.get('threads', '–')} threads). "
              f"Causal CRATE LM, context {model['context']}, d {model['dim']}, depth "
              f"{model['depth']}, {model['heads']} heads, vocabulary {model['vocab_size']}, batch "
              f"{result['batch']}, {model['dtype']}; {result['rounds']} interleaved rounds. "
              "Ratios: minicrate/peer time, medians of per-round ratios; forward: inference "
              f"(torch under torch.inference_mode()); torch.compile's compilation {compile_s}, "
              "not in the timings."]
    return "\n".join(lines)


def _num(x, digits):
    return "–" if x is None else f"{x:,.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def build_runners(args, corpus):
    """``(minicrate runner, [torch peers], compile report, config)`` on one set of weights;
    each runner's description is printed as it is built (the compiled one after compiling)."""
    from minicrate.core.backend import get_backend
    from minicrate.training.parallel.threads import default_workers

    config = make_config(corpus.vocab.size, args.dtype)
    params = lm.init_params(config, seed=args.seed)
    inputs, targets = make_batch(corpus, config, args.batch, seed=args.seed)
    workers = args.workers or default_workers(get_backend("numpy"))
    if args.threads is not None:  # --threads: at most that many cores for everyone
        workers = max(1, min(workers, args.threads))
    mc = MinicrateLM(config, params, inputs, targets, workers)
    print(f"  {mc.describe()}")
    if args.no_torch:
        return mc, [], None, config
    peers = [TorchLM(config, params, inputs, targets)]
    print(f"  {peers[0].describe()}")
    if not args.compile:
        print("  torch.compile: off (--no-compile)")
        return mc, peers, {"skipped": "--no-compile"}, config
    tcc, report = compile_peer(lambda: CompiledTorchLM(config, params, inputs, targets))
    if tcc is not None:
        print(f"  {tcc.describe()}")
        peers.append(tcc)
    return mc, peers, report, config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=21, help="interleaved rounds")
    p.add_argument("--settle", type=float, default=0.02,
                   help="pause (s) before each timed sample, so idle BLAS/OpenMP threads "
                        "stop spinning")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS/torch threads and at most that many minicrate workers (default: "
                        "the libraries' defaults, printed)")
    p.add_argument("--workers", type=int, default=0,
                   help="minicrate's chunks per batch (0: one per usable core, as train-lm)")
    p.add_argument("--batch", type=int, default=TRAIN["batch_size"],
                   help="windows per batch (default: the recipe's)")
    p.add_argument("--dtype", default=MODEL["dtype"], choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0, help="weights and batch")
    p.add_argument("--no-torch", action="store_true", help="time minicrate alone")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="leave out the torch.compile peer (eager torch only)")
    p.add_argument("--no-check", action="store_true", help="time even if the models disagree")
    p.add_argument("--json", type=Path, default=None, help="write every number to this file")
    p.add_argument("--markdown", action="store_true", help="print a results table at the end")
    args = p.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    keep_freed_memory()  # as train_lm does: freed arrays reused, not page faults
    _set_threads(args.threads)
    torch_mod = None
    if not args.no_torch:
        try:
            import torch as torch_mod
        except ImportError:
            print("torch is not installed: timing minicrate alone")
            args.no_torch = True
    info = system_report(torch_mod)
    print_system(info)

    from minicrate.data.text import load_corpus

    corpus = load_corpus()
    print(f"\n== causal CRATE LM of benchmarks/train_lm.py: context {MODEL['context']}, d "
          f"{MODEL['dim']}, depth {MODEL['depth']}, {MODEL['heads']} heads, vocabulary "
          f"{corpus.vocab.size}, batch {args.batch}, {args.dtype}")
    tokens = args.batch * MODEL["context"]
    print(f"  {tokens:,} tokens per batch; phases: "
          + "; ".join(f"{k} = {v}" for k, v in PHASES.items())
          + " (the inference forward of torch under torch.inference_mode(): no autograd graph "
          "recorded)")
    mc, peers, report, config = build_runners(args, corpus)
    print(f"  {lm.param_count(config):,} parameters")
    result = {"system": info, "model": config.to_dict(), "batch": args.batch, "tokens": tokens,
              "rounds": args.rounds, "workers": mc.workers, "compile": report,
              "implementations": [r.describe() for r in (mc, *peers)]}
    if peers:
        result["check"] = check_all(mc, peers, args.dtype, args.no_check)
    load0 = os.getloadavg()
    samples = time_interleaved([mc, *peers], rounds=args.rounds, settle=args.settle)
    result["loadavg"] = [load0, os.getloadavg()]
    print(f"== timing: {args.rounds} interleaved rounds, load average {_fmt_load(load0)} -> "
          f"{_fmt_load(os.getloadavg())}")
    result["timing"] = timing_summary(samples, mc, peers, tokens)
    if args.markdown:
        print("\n" + markdown_table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
