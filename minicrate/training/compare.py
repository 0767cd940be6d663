"""CRATE against the standard transformer: the same recipe, budget and measurement for both.

:func:`compare` trains, for each seed, CRATE and its transformer twin with one of the
project's recipes, through the one loop (:func:`minicrate.training.loop.fit`), and
measures both layer by layer with the protocol of :mod:`minicrate.measure.layerwise`:

========================  ===========================  ============================================
``data``                  models                       score (row key)
========================  ===========================  ============================================
``digits``, ``mnist``     ``crate``, ``vit``           ``test_accuracy``
``shakespeare``           ``crate``/``gpt`` (causal),  ``val_ce_nats`` (causal),
                          ``crate``/``bert`` (masked)  ``masked_accuracy`` (masked)
``mae-mnist``             ``crate``, ``vit-mae``       ``masked_mse_ratio`` (× the mean-patch MSE)
========================  ===========================  ============================================

**The twin** (:func:`transformer_twin`) is the CRATE configuration with
``block="transformer"``: same width, depth, heads, tokens, embedding, positions,
head, loss, data, optimiser, schedule and number of steps.  A transformer layer
with CRATE's head width would hold ``4d² + 2dh`` weights against CRATE's ``3d²``,
more than CRATE's whole layer before any MLP, so the twin's attention uses a head
width of a quarter of CRATE's (its attention holds ``d²``) and its MLP hidden
width ``h`` is solved for the parameter count (``h ≈ d``, so ``2d²``): the split of
attention to MLP weights is ViT's 1 : 2, and the counts agree to well within 1 %.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from minicrate.core.validate import check_int, describe
from minicrate.data import images as datasets
from minicrate.data.text import fixed_windows, load_corpus
from minicrate.measure.comparison import format_markdown, layerwise_both, plot_comparison
from minicrate.models import lm
from minicrate.models.classifier import init_params, param_count
from minicrate.models.mae import init_mae_params, mae_param_count
from minicrate.training.classifier import recipe, train
from minicrate.training.lm import LMTrainConfig, train_lm
from minicrate.training.mae import load_split, mae_recipe, train_mae
from minicrate.training.rundir import limit_threads

DATASETS = ("digits", "mnist", "shakespeare", "mae-mnist")
TWIN_NAMES = {"classifier": "vit", "causal": "gpt", "masked": "bert", "mae": "vit-mae"}
SCORES = {"classifier": "test_accuracy", "causal": "val_ce_nats", "masked": "masked_accuracy",
          "mae": "masked_mse_ratio"}

# The budgets: digits (both models, 3 seeds) about 2 minutes, the others about 20 minutes on
# two shared cores (measured: benchmarks/results/compare-*).  Each is the project's recipe of
# that model (minicrate.training.classifier.RECIPES, minicrate.training.mae.MAE_RECIPES,
# benchmarks/train_lm.py's model and rates) -- the classifiers' in full, the MAE's and the
# language models' cut to what fits (the MAE recipe's 90 epochs take 50 minutes for CRATE alone).
RECIPES = {
    "digits": {"kind": "classifier", "recipe": "digits", "train": {}},
    "mnist": {"kind": "classifier", "recipe": "mnist", "train": {}},
    "shakespeare": {"kind": "lm", "model": {"context": 64, "dim": 128, "depth": 4, "heads": 4},
                    "train": {"causal": {"steps": 2000, "lr": 5e-3, "min_lr": 5e-4},
                              "masked": {"steps": 1000, "lr": 1e-3, "min_lr": 1e-4}}},
    "mae-mnist": {"kind": "mae", "recipe": "mnist", "train": {"epochs": 15}},
}


def transformer_twin(config, count, *, head_fraction=4):
    """The transformer matched to a CRATE ``config`` (see the module docstring).

    Args:
        config: a CRATE model configuration (classifier, LM or MAE); only ``block``,
            ``dim_head`` and ``mlp_ratio`` are changed.
        count: the model's parameter count function (``param_count``), so the MLP
            width makes the twin's count closest to CRATE's.
        head_fraction: the twin's head width is CRATE's divided by this (at least 1).

    Returns:
        the twin configuration.
    """
    if getattr(config, "block", None) != "crate":
        raise ValueError(f"config must be a CRATE configuration (block='crate'), got {describe(config)}")
    head_fraction = check_int(head_fraction, "head_fraction", minimum=1)
    d = config.dim
    twin = lambda h: dataclasses.replace(config, block="transformer", dim_head=max(1, config.head_dim // head_fraction),
                                         mlp_ratio=h / d, project_out=True)
    target, base = count(config), count(twin(1))
    per_unit = count(twin(2)) - base  # the count is linear in the hidden width: 2d + 1 per unit and layer
    h = max(1, round(1 + (target - base) / per_unit))
    return twin(h)


def _row(model, data, params, seed, score_key, score, wall, epochs, **extra):
    return {"model": model, "data": data, "params": int(params), "seed": int(seed), score_key: float(score),
            "wall_time_s": float(wall), "epochs": float(epochs), **extra}


def _classifier_pair(data, spec, seed, out, log, epochs):

    crate, tc = recipe(spec["recipe"], seed=seed, **{**spec["train"], **({"epochs": epochs} if epochs else {})})
    split = datasets.load(tc.data, test_size=tc.test_size, seed=tc.split_seed)
    results = []
    for name, config in (("crate", crate), ("vit", transformer_twin(crate, param_count))):
        log(f"--- {data} seed {seed}: {name} ({param_count(config):,} parameters)")
        run = train(config, tc, os.path.join(out, f"{name}-seed{seed}"), progress=False, log=log)
        curve = [(h["epoch"], h["test_accuracy"]) for h in run["history"]]
        x = split.x_test[:500]
        measured = {"trained": layerwise_both("classifier", run["params"], config, x),
                    "init": layerwise_both("classifier", init_params(config, seed=seed), config, x)}
        results.append((_row(name, data, param_count(config), seed, "test_accuracy", run["test_accuracy"],
                             run["wall_time_s"], tc.epochs), curve, measured))
    return results


def _lm_pairs(data, spec, seed, out, log, steps):

    corpus = load_corpus(val_plays=4, seed=0)
    results = []
    for form, recipe_of_form in spec["train"].items():
        crate = lm.LMConfig(vocab_size=corpus.vocab.size, form=form, **spec["model"])
        length = {"steps": steps} if steps else {}
        tc = LMTrainConfig(form=form, seed=seed, batch_size=32, weight_decay=0.1, clip=1.0, warmup_steps=50,
                           eval_windows=128, eval_every=100, **{**recipe_of_form, **length})
        windows = fixed_windows(corpus.val, crate.context, 32)
        for name, config in (("crate", crate), (TWIN_NAMES[form], transformer_twin(crate, lm.param_count))):
            log(f"--- {data} ({form}) seed {seed}: {name} ({lm.param_count(config):,} parameters)")
            run = train_lm(config, tc, os.path.join(out, f"{name}-{form}-seed{seed}"), overwrite=True,
                           progress=False, corpus=corpus, log=log)
            last = run["history"][-1]
            key = SCORES[form]
            score = last["val_loss"] if form == "causal" else last["val_accuracy"]
            curve = [(h["step"], h["val_loss"] if form == "causal" else h["val_accuracy"]) for h in run["history"]]
            measured = {"trained": layerwise_both("lm", run["params"], config, windows),
                        "init": layerwise_both("lm", lm.init_params(config, seed=seed), config, windows)}
            results.append((_row(name, data, lm.param_count(config), seed, key, score, run["wall_time_s"],
                                 run["steps"] / max(1, corpus.train.size // (tc.batch_size * crate.context)),
                                 form=form, steps=run["steps"]), curve, measured))
    return results


def _mae_pair(data, spec, seed, out, log, epochs):

    crate, tc = mae_recipe(spec["recipe"], seed=seed, **{**spec["train"], **({"epochs": epochs} if epochs else {})})
    results = []
    for name, config in (("crate", crate), ("vit-mae", transformer_twin(crate, mae_param_count))):
        log(f"--- {data} seed {seed}: {name} ({mae_param_count(config):,} parameters)")
        run = train_mae(config, tc, os.path.join(out, f"{name}-seed{seed}"), overwrite=True, progress=False,
                        probe=False, log=log)
        curve = [(h["epoch"], h["mse_over_baseline"]) for h in run["history"]]
        x = load_split(tc.data, config, test_size=tc.test_size, seed=tc.split_seed).x_test[:250]
        measured = {"trained": layerwise_both("mae", run["params"], config, x),
                    "init": layerwise_both("mae", init_mae_params(config, seed=seed), config, x)}
        results.append((_row(name, data, mae_param_count(config), seed, "masked_mse_ratio",
                             run["test_mse"] / run["baseline_mse"], run["wall_time_s"], tc.epochs,
                             test_masked_mse=run["test_mse"]), curve, measured))
    return results


def compare(data, out_dir, *, seeds=(0,), length=None, log=print, threads=1):
    """Train CRATE and its transformer twin on ``data`` for every seed; write the comparison.

    Args:
        data: one of ``DATASETS``.
        out_dir: where ``compare.json``, ``compare.md``, ``compare.png`` and the run
            directories (``runs/<model>-seed<k>``) go.
        seeds: the seeds (each trains both models).
        length: epochs (steps for ``shakespeare``) instead of the recipe's.
        log: where progress lines go.
        threads: BLAS threads (``None``: the library's setting).

    Returns:
        ``{"rows": [...], "curves": ..., "layerwise": ..., ...}``, as written to ``compare.json``.
    """

    if data not in RECIPES:
        raise ValueError(f"data must be one of {DATASETS}, got {data!r}")
    seeds = [check_int(s, "seed", minimum=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if length is not None:
        length = check_int(length, "length", minimum=1)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    spec = RECIPES[data]
    run = {"classifier": _classifier_pair, "lm": _lm_pairs, "mae": _mae_pair}[spec["kind"]]
    t0 = time.perf_counter()
    results = []
    with limit_threads(threads):
        for seed in seeds:
            results += run(data, spec, seed, os.path.join(out_dir, "runs"), log, length)
    rows = [r for r, _, _ in results]
    report = {
        "data": data, "seeds": seeds, "rows": rows,
        "curves": [{"model": r["model"], "form": r.get("form"), "seed": r["seed"], "points": c}
                   for r, c, _ in results],
        "layerwise": [{"model": r["model"], "form": r.get("form"), "seed": r["seed"], **m} for r, _, m in results],
        "protocol": ("layer-wise R^c: unit-normalised head projections of LN1(Z^l) on each head's basis "
                     "(CRATE: U; transformer: the value maps), 1/2 logdet(I + p/(N*0.01) W W^T) summed over "
                     "heads, mean over inputs; R^c of the tokens: the same with the identity as the one basis; "
                     "nonzero: exact non-zero fraction of each layer's output Z^{l+1}"),
        "total_wall_time_s": time.perf_counter() - t0,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    with open(os.path.join(out_dir, "compare.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(format_markdown(report))
    plot_comparison(report, os.path.join(out_dir, "compare.png"))
    return report

