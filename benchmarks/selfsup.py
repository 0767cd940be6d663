"""Self-supervised CRATE (issue 19): DINO and SimDINO on MNIST-5k, one named try at a time.

Each try is a method, a model (overrides of the recipe's backbone and head), a recipe
(overrides of its TrainConfig and SelfSupRecipe); it trains through ``train_dino`` (one
thread, no progress bar) into ``runs/selfsup-<name>`` and appends one JSON line to
``benchmarks/results/selfsup.jsonl``: k-NN and probe accuracy, the four baselines, the
collapse diagnostics, wall time.

Usage::

    .venv/bin/python benchmarks/selfsup.py --list
    .venv/bin/python benchmarks/selfsup.py simdino dino      # one after another
    .venv/bin/python benchmarks/selfsup.py --table           # the table of benchmarks/README.md
    .venv/bin/python -m minicrate train-dino --data mnist --out runs/simdino-mnist   # both cores
    .venv/bin/python benchmarks/selfsup.py --record runs/simdino-mnist simdino-cli   # its row

Run two processes at once on a 2-core machine (each uses one core).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minicrate.data.views import ViewSpec  # noqa: E402
from minicrate.training.dino import MILD_VIEWS, selfsup_recipe, train_dino  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "selfsup.jsonl")

MILD = MILD_VIEWS
FIRST = dict(views=ViewSpec(), momentum=0.996, gamma=None)  # the first recipe's views, momentum and gamma
# name: (method, backbone overrides, train overrides, recipe overrides)
TRIES = {
    # the default recipe (minicrate.training.dino.SELFSUP_RECIPES["mnist"]), both methods
    "simdino": ("simdino", {}, {}, {}),
    "dino": ("dino", {}, {}, {}),
    # the coding-rate term off, and the parameter-matched ViT: 15 epochs each
    "simdino-gamma0": ("simdino", {}, dict(epochs=15), dict(gamma=0.0)),
    "simdino-vit": ("simdino", dict(block="transformer"), dict(epochs=15), {}),
    # the first recipe (class token, lr 1e-3, local crops 0.15-0.45, momentum 0.996, gamma 1/32)
    # and the 15-epoch tries that led from it to the default
    "first-cls": ("simdino", dict(pool="cls"), dict(lr=1e-3, epochs=50), FIRST),
    "first-mean": ("simdino", {}, dict(lr=1e-3, epochs=50), FIRST),
    "simdino-mean-mild": ("simdino", {}, dict(lr=2e-3, epochs=50), dict(FIRST, views=MILD)),
    "q-base": ("simdino", {}, dict(lr=2e-3, epochs=15), dict(FIRST, views=MILD)),
    "q-g01": ("simdino", {}, dict(lr=2e-3, epochs=15), dict(FIRST, views=MILD, gamma=0.01)),
    "q-m99": ("simdino", {}, dict(lr=2e-3, epochs=15), dict(FIRST, views=MILD, momentum=0.99)),
    "q-m99-g01": ("simdino", {}, dict(lr=2e-3, epochs=15), dict(FIRST, views=MILD, momentum=0.99, gamma=0.01)),
    "q-m99-g003": ("simdino", {}, dict(lr=2e-3, epochs=15), dict(FIRST, views=MILD, momentum=0.99, gamma=0.003)),
    "q-dino": ("dino", {}, dict(lr=2e-3, epochs=15), dict(FIRST, views=MILD, momentum=0.99)),
    "q-m99-g01-lr4": ("simdino", {}, dict(lr=4e-3, epochs=15), dict(FIRST, views=MILD, momentum=0.99, gamma=0.01)),
    "q-lr4-l6": ("simdino", {}, dict(lr=4e-3, epochs=15),
                 dict(FIRST, views=dataclasses.replace(MILD, n_local=6), momentum=0.99, gamma=0.01)),
    "q-lr6": ("simdino", {}, dict(lr=6e-3, epochs=15), dict(FIRST, views=MILD, momentum=0.99, gamma=0.01)),
    "q-lr6-b128": ("simdino", {}, dict(lr=6e-3, epochs=15, batch_size=128),
                   dict(FIRST, views=MILD, momentum=0.99, gamma=0.01)),
    "q-lr10": ("simdino", {}, dict(epochs=15), {}),
    "q-lr10-g02": ("simdino", {}, dict(epochs=15), dict(gamma=0.02)),
    "q-lr20": ("simdino", {}, dict(lr=2e-2, epochs=15), {}),
}


def run(name, workers=1):
    method, bb_over, train_over, recipe_over = TRIES[name]
    config, tc, recipe = selfsup_recipe("mnist", method, **train_over)
    if bb_over:
        config = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, **bb_over))
    recipe = dataclasses.replace(recipe, **recipe_over)
    t0 = time.perf_counter()
    result = train_dino(config, tc, recipe, os.path.join("runs", f"selfsup-{name}"), overwrite=True,
                        progress=False, log=lambda line: print(f"[{name}] {line}", flush=True),
                        workers=workers)
    row = row_of(name, method, result["metrics"], bb_over, train_over, recipe_over, workers)
    row["wall_time_s"] = time.perf_counter() - t0
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


BOOK = os.path.normpath(os.path.join(HERE, "..", "book", "data", "selfsup.json"))
BOOK_TRIES = ("simdino", "simdino-cli", "dino", "simdino-gamma0", "simdino-vit")


def book():
    """Write the latest row of each of ``BOOK_TRIES`` that was run to ``book/data/selfsup.json``."""
    latest = {}
    for line in open(RESULTS):
        row = json.loads(line)
        latest[row["name"]] = row
    tries = [latest[name] for name in BOOK_TRIES if name in latest]
    with open(BOOK, "w") as f:
        json.dump({"source": "benchmarks/selfsup.py --book", "tries": tries}, f, indent=1)
    print(f"wrote {BOOK} with {[t['name'] for t in tries]}")


def row_of(name, method, m, bb_over, train_over, recipe_over, workers):
    """One JSON line of a finished run's ``metrics.json`` (``m``)."""
    return {"name": name, "method": method, "backbone": bb_over, "train": train_over,
            "recipe": {k: dataclasses.asdict(v) if k == "views" else v for k, v in recipe_over.items()},
            "epochs": m["train_config"]["epochs"], "knn_accuracy": m["knn_accuracy"],
            "student_knn_accuracy": m["student_knn_accuracy"], "probe_accuracy": m["probe_accuracy"],
            "baselines": m["baselines"], "collapse": m["collapse"],
            "knn_by_epoch": [h["knn_accuracy"] for h in m["history"]],
            "wall_time_s": m["wall_time_s"], "train_time_s": m["wall_time_s"], "workers": workers}


def record(run_dir, name):
    """Append the row of a ``train-dino`` run directory (e.g. the command's default run)."""
    m = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    if m["status"] != "completed":
        raise SystemExit(f"{run_dir} holds a run that is {m['status']}, not completed")
    row = row_of(name, m["kind"], m, {}, {}, {}, "command line (--workers 0)")
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"recorded {run_dir} as {name}")


def table():
    rows = [json.loads(line) for line in open(RESULTS)]
    print("| try | epochs | k-NN (teacher) | k-NN (student) | probe | pixels k-NN / probe | untrained k-NN | "
          "supervised k-NN | R(test features) trained / untrained | effective rank | time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    pct = lambda v: "–" if v is None else f"{100 * v:.1f} %"  # noqa: E731
    for r in rows:
        b, c = r["baselines"], r["collapse"]
        print(f"| {r['name']} | {r['epochs']} | {pct(r['knn_accuracy'])} | {pct(r['student_knn_accuracy'])} | "
              f"{pct(r['probe_accuracy'])} | {pct(b['pixels_knn'])} / {pct(b['pixels_probe'])} | "
              f"{pct(b['untrained_knn'])} | {pct(b['supervised_knn'])} | {c['trained']['coding_rate']:.1f} / "
              f"{c['untrained']['coding_rate']:.1f} | {c['trained']['effective_rank']:.1f} | "
              f"{r['wall_time_s'] / 60:.1f} min |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tries", nargs="*", help="names of tries (see --list)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--table", action="store_true")
    p.add_argument("--book", action="store_true", help="write book/data/selfsup.json from the results")
    p.add_argument("--workers", type=int, default=1, help="threads per run (train_dino's workers)")
    p.add_argument("--record", nargs=2, metavar=("RUN_DIR", "NAME"), help="append a train-dino run's row")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(TRIES))
    elif args.table:
        table()
    elif args.book:
        book()
    elif args.record:
        record(*args.record)
    for name in args.tries:
        if name not in TRIES:
            p.error(f"unknown try {name!r}; --list shows them")
        run(name, workers=args.workers)


if __name__ == "__main__":
    main()
