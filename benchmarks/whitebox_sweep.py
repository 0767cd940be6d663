"""Look for a setting where the paper's layer-wise claims show (issue 18), one try at a time.

Each named setting is a model (overrides of a preset) and a recipe (overrides of the data's
recipe).  A try trains it (one thread, no progress bar), measures the layer-wise R^c and
non-zero fraction of the trained model and of its initialisation on 500 test images
(:func:`minicrate.measure.layerwise.layerwise_comparison`), checks the three targets, and
appends one JSON line to ``benchmarks/results/whitebox-sweep.jsonl``:

* ``fall``: trained R^c falls by >= 5 % from layer 1 to layer L;
* ``below_init``: trained R^c is below the initialisation's at every layer after the first;
* ``sparser``: the last layer's non-zero fraction is below the first layer's and below the
  initialisation's last layer.

Usage::

    .venv/bin/python benchmarks/whitebox_sweep.py --list
    .venv/bin/python benchmarks/whitebox_sweep.py mnist-L8 mnist-L8-paper   # one after another
    .venv/bin/python benchmarks/whitebox_sweep.py --table   # the markdown table of benchmarks/README.md

Run two processes at once on a 2-core machine (each uses one core).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minicrate.data.images import load  # noqa: E402
from minicrate.measure.layerwise import layerwise_comparison  # noqa: E402
from minicrate.models.classifier import init_params, preset  # noqa: E402
from minicrate.training.classifier import evaluate, recipe, train  # noqa: E402
from minicrate.training.whitebox import PAPER_FORM, targets  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "whitebox-sweep.jsonl")
PAPER = PAPER_FORM

# name: (data, model overrides, recipe overrides)
SETTINGS = {
    "mnist-L4": ("mnist", {}, dict(epochs=15)),
    "mnist-L8": ("mnist", dict(depth=8), dict(epochs=15)),
    "mnist-L12": ("mnist", dict(depth=12), dict(epochs=15)),
    "mnist-L8-paper": ("mnist", dict(depth=8, **PAPER), dict(epochs=15)),
    "mnist-L8-lam05": ("mnist", dict(depth=8, lam=0.5), dict(epochs=15)),
    "mnist-L8-paper-lam05": ("mnist", dict(depth=8, lam=0.5, **PAPER), dict(epochs=15)),
    "mnist-L8-p4": ("mnist", dict(depth=8, patch_size=4), dict(epochs=8)),
    "mnist-L8-cls": ("mnist", dict(depth=8, pool="cls"), dict(epochs=15)),
    "mnist-L8-K8": ("mnist", dict(depth=8, heads=8), dict(epochs=15)),
    "mnist-L8-paper-cls": ("mnist", dict(depth=8, pool="cls", **PAPER), dict(epochs=15)),
    "mnist-L8-paper-p4": ("mnist", dict(depth=8, patch_size=4, **PAPER), dict(epochs=8)),
    "mnist-L8-tie": ("mnist", dict(depth=8, tie_out=True), dict(epochs=15)),
    "mnist-L12-paper": ("mnist", dict(depth=12, **PAPER), dict(epochs=15)),
    "mnist-L8-paper-lam1": ("mnist", dict(depth=8, lam=1.0, **PAPER), dict(epochs=15)),
    "mnist-L8-cls-lam05": ("mnist", dict(depth=8, pool="cls", lam=0.5), dict(epochs=15)),
    "mnist-L8-paper-lam2": ("mnist", dict(depth=8, lam=2.0, **PAPER), dict(epochs=15)),
    "mnist-L8-paperLN-lam05": ("mnist", dict(depth=8, lam=0.5, tie_out=True, attn_scale=1.0),
                               dict(epochs=15)),
    "mnist-L8-tie-lam05": ("mnist", dict(depth=8, lam=0.5, tie_out=True), dict(epochs=15)),
    "mnist-L12-paper-lam05": ("mnist", dict(depth=12, lam=0.5, **PAPER), dict(epochs=15)),
    "mnist-L8-paper-lam5": ("mnist", dict(depth=8, lam=5.0, **PAPER), dict(epochs=15)),
    "mnist-L8-cls-lam2": ("mnist", dict(depth=8, pool="cls", lam=2.0), dict(epochs=15)),
    "mnist-L8-paper-lam2-40ep": ("mnist", dict(depth=8, lam=2.0, **PAPER), dict(epochs=40)),
    "mnist-L8-tie-lam2": ("mnist", dict(depth=8, lam=2.0, tie_out=True), dict(epochs=15)),
    "mnist-L4-paper-lam2": ("mnist", dict(lam=2.0, **PAPER), dict(epochs=15)),
    "mnist-L8-paper-lam3": ("mnist", dict(depth=8, lam=3.0, **PAPER), dict(epochs=15)),
    "mnist-L8-paper-lam4": ("mnist", dict(depth=8, lam=4.0, **PAPER), dict(epochs=15)),
    "mnist-L8-paper-cls-lam2": ("mnist", dict(depth=8, pool="cls", lam=2.0, **PAPER), dict(epochs=15)),
    "mnist-L8-paper-cls-lam3": ("mnist", dict(depth=8, pool="cls", lam=3.0, **PAPER), dict(epochs=15)),
    "mnist-L8-paper-lam2.5-40ep": ("mnist", dict(depth=8, lam=2.5, **PAPER), dict(epochs=40)),
    "mnist-L6-paper-lam2-40ep": ("mnist", dict(depth=6, lam=2.0, **PAPER), dict(epochs=40)),
    "mnist-L8-paper-lam2-d192": ("mnist", dict(depth=8, dim=192, lam=2.0, **PAPER), dict(epochs=15)),
    "mnist-L8-paper-lam2-K8": ("mnist", dict(depth=8, heads=8, lam=2.0, **PAPER), dict(epochs=15)),
}


def run(name, n_images=500):
    data, model_over, train_over = SETTINGS[name]
    _, tc = recipe(data, **train_over)
    config = preset(data, **model_over)
    split = load(data, test_size=tc.test_size, seed=tc.split_seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train(config, tc, out, progress=False, log=lambda line: None, threads=1)
    wall = time.perf_counter() - t0
    images = split.x_test[:n_images]
    init = init_params(config, seed=tc.seed)
    measured = layerwise_comparison(result["params"], init, config, images)
    row = {
        "name": name, "data": data, "model": model_over, "recipe": train_over,
        "test_accuracy": evaluate(result["params"], config, split.x_test, split.y_test)["accuracy"],
        "train_s": round(wall, 1),
        "trained": {k: measured["trained"][k] for k in ("rc", "nonzero")},
        "init": {k: measured["init"][k] for k in ("rc", "nonzero")},
    }
    row["targets"] = targets(row["trained"], row["init"])
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    t, i = row["trained"], row["init"]
    print(f"{name}: acc {row['test_accuracy']:.3f} in {wall:.0f} s; R^c trained "
          f"{[round(v, 1) for v in t['rc']]} init {[round(v, 1) for v in i['rc']]}; nonzero trained "
          f"{[round(v, 3) for v in t['nonzero']]} init {[round(v, 3) for v in i['nonzero']]}; "
          f"targets {row['targets']}", flush=True)


def table(path=RESULTS):
    """The markdown table of every try recorded in ``path`` (the last run of each name)."""
    rows = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            rows[row["name"]] = row
    out = ["| try | model (over the preset) | epochs | test acc. | R^c layer 1 → L, trained (init) "
           "| non-zero layer 1 → L, trained (init) | fall | below init | sparser |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows.values():
        t, i, g = r["trained"], r["init"], r["targets"]
        over = dict(r["model"])
        paper = all(over.get(k) == v for k, v in PAPER.items())
        for k in PAPER if paper else ():
            del over[k]
        model = ", ".join(["paper form"] * paper + [f"{k}={v}" for k, v in over.items()]) or "preset"
        out.append(
            f"| {r['name']} | {model} | {r['recipe'].get('epochs', '')} | {100 * r['test_accuracy']:.1f} % "
            f"| {t['rc'][0]:.1f} → {t['rc'][-1]:.1f} ({i['rc'][0]:.1f} → {i['rc'][-1]:.1f}) "
            f"| {t['nonzero'][0]:.3f} → {t['nonzero'][-1]:.3f} ({i['nonzero'][0]:.3f} → {i['nonzero'][-1]:.3f}) "
            f"| {g['fall_pct']:.1f} % {'yes' if g['fall'] else 'no'} | {'yes' if g['below_init'] else 'no'} "
            f"| {'yes' if g['sparser'] else 'no'} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the markdown table of the tries so far")
    args = ap.parse_args(argv)
    if args.table:
        print(table())
        return 0
    if args.list or not args.names:
        for name, setting in SETTINGS.items():
            print(name, setting)
        return 0
    for name in args.names:
        run(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
