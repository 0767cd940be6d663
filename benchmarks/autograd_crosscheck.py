"""PyTorch's autograd against minicrate's hand-written backward, for the whole digits classifier.

The forward pass of the plain blocks is ordinary array-API code, so autograd can follow it when
the arrays are torch tensors.  This script differentiates the label-smoothed loss of one batch
of 64 digits (float64) with autograd and compares every parameter's gradient with
``minicrate.loss_and_grads``, plain and fused layers.  It writes the result to
``book/data/autograd_crosscheck.json``, which the backends chapter shows when the machine that
builds the book has no torch.

    pip install torch==2.13.0        # the CPU build
    python benchmarks/autograd_crosscheck.py
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np

import minicrate as mc
from minicrate.core.backend import get_backend, host_to
from minicrate.data.images import load
from minicrate.models.loss import cross_entropy_forward

OUT = Path(__file__).resolve().parents[1] / "book" / "data" / "autograd_crosscheck.json"


def crosscheck(batch=64, seed=0):
    """``{"plain": {...}, "fused": {...}}``: per form, the largest relative difference and where."""

    split = load("digits")
    config = dataclasses.replace(mc.preset("digits"), dtype="float64")
    xp = get_backend("torch")
    images = host_to(xp, split.x_train[:batch].astype(np.float64), "float64")
    labels = host_to(xp, split.y_train[:batch], "int64")
    params = {k: v.clone().requires_grad_(True)
              for k, v in mc.init_params(config, seed=seed, backend="torch").items()}
    logits, _ = mc.forward(params, images, config, fast=False)  # autograd records this
    loss, _ = cross_entropy_forward(logits, labels, smoothing=config.label_smoothing)
    loss.backward()
    detached = {k: v.detach() for k, v in params.items()}
    result = {}
    for fast in (False, True):
        _, hand, _ = mc.loss_and_grads(detached, images, labels, config, fast=fast)
        rel = {k: float((params[k].grad - hand[k]).abs().max() / (hand[k].abs().max() + 1e-300))
               for k in hand}
        worst = max(rel, key=rel.get)
        result["fused" if fast else "plain"] = {"arrays": len(rel), "worst": rel[worst], "where": worst}
    return result


def main():
    import torch

    record = {"forms": crosscheck(), "torch": torch.__version__, "numpy": np.__version__,
              "python": sys.version.split()[0], "machine": platform.machine(),
              "date": datetime.date.today().isoformat(), "script": "benchmarks/autograd_crosscheck.py"}
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    for form, r in record["forms"].items():
        print(f"{form} layers: {r['arrays']} parameter arrays, largest relative difference "
              f"hand-written vs autograd {r['worst']:.1e} (in {r['where']})")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
