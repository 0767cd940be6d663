"""The white-box study: train in one setting, measure layer by layer, check the paper's claims.

``python -m minicrate whitebox --out DIR`` calls :func:`study`, which

1. trains the chosen setting (:data:`SETTING`) through the one training loop, stopping
   at a few epochs on the way (the run resumes bit for bit, so every snapshot lies on
   the one schedule), and measures the layer-wise R^c and non-zero fraction
   (:func:`~minicrate.measure.layerwise.layerwise`) at initialisation and at each snapshot;
2. trains the same model in the other form (official ↔ paper) for the comparison;
3. checks each layer's two steps (:func:`~minicrate.measure.steps.layer_steps`), both
   forms, trained and at initialisation;
4. runs the synthetic case (:func:`~minicrate.measure.synthetic.synthetic_descent`);
5. writes ``DIR/whitebox.json`` and the figure ``DIR/whitebox.png``.

The setting was chosen by the sweep in ``benchmarks/whitebox_sweep.py`` (every try is
listed in ``benchmarks/README.md``).
"""

from __future__ import annotations

import os
import time

from minicrate.data.images import load
from minicrate.measure.layerwise import layerwise
from minicrate.measure.steps import layer_steps
from minicrate.measure.synthetic import monotone_descent, synthetic_descent
from minicrate.models.classifier import init_params, preset
from minicrate.training.classifier import evaluate, recipe, train
from minicrate.training.rundir import write_json

FALL = 0.05  # the least relative fall of trained R^c from layer 1 to layer L that counts
PAPER_FORM = dict(tie_out=True, attn_scale=1.0, use_layernorm=False)
OFFICIAL_FORM = dict(tie_out=False, attn_scale=None, use_layernorm=True)

# The setting the sweep found (benchmarks/README.md, "White-box study").
# Only the paper form (tied output, temperature 1, no LayerNorm) made trained R^c fall with
# depth; with 6 or more layers and λ from 0.5 to 2.5 it also stayed below the untrained
# network's in 7 of 10 tries.  λ = 2 keeps the untrained network from thresholding nearly
# every entry away (λ >= 3 does), and 40 epochs bring the accuracy within a point of the
# official form's.
SETTING = {
    "data": "mnist",
    "form": "paper",
    "model": dict(depth=8, lam=2.0),
    "recipe": dict(epochs=40),
    "snapshots": (1, 2, 5, 10, 20),
}


def targets(trained, init):
    """The three layer-wise claims, each True or False, from ``{"rc", "nonzero"}`` lists.

    * ``fall``: trained R^c falls by at least 5 % from the first layer to the last;
    * ``below_init``: trained R^c is below the initialisation's at every layer after the first;
    * ``sparser``: the last layer's non-zero fraction is below the first layer's and below the
      initialisation's last layer.
    """
    rc, rc0 = trained["rc"], init["rc"]
    nz, nz0 = trained["nonzero"], init["nonzero"]
    return {
        "fall": bool(rc[-1] <= (1 - FALL) * rc[0]),
        "fall_pct": round(100 * (rc[0] - rc[-1]) / rc[0], 2),
        "below_init": bool(all(a < b for a, b in zip(rc[1:], rc0[1:], strict=True))),
        "sparser": bool(nz[-1] < nz[0] and nz[-1] < nz0[-1]),
    }


def form_config(setting, form):
    """The setting's model config in ``form`` (``"paper"`` or ``"official"``)."""
    options = PAPER_FORM if form == "paper" else OFFICIAL_FORM
    return preset(setting["data"], **{**setting["model"], **options})


def _measure(params, config, images):
    m = layerwise(params, config, images)
    return {"rc": m["rc"], "rc_std": m["rc_std"], "nonzero": m["nonzero"], "nonzero_std": m["nonzero_std"]}


def train_with_snapshots(config, tc, run_dir, snapshots, steps_per_epoch, measure, *,
                         overwrite=False, progress=False, log=print, threads=1):
    """Train a classifier to the end of ``tc``, stopping at each epoch in ``snapshots``.

    Each stop writes a checkpoint and the next call resumes from it bit for bit, so every
    snapshot lies on the one schedule of ``tc.epochs`` epochs.  ``measure(params, epoch)``
    returns a dict for each stop and for the end.

    Returns:
        ``(run, measured)``: the final :func:`~minicrate.training.classifier.train` result and
        ``[{"epoch": e, **measure(params, e)}, ...]`` in epoch order, the last at ``tc.epochs``.
    """
    epochs, run = [], None
    stops = sorted({e for e in snapshots if e < tc.epochs}) + [tc.epochs]
    for i, epoch in enumerate(stops):
        run = train(config, tc, run_dir, resume=i > 0, overwrite=overwrite and i == 0,
                    progress=progress, log=log, threads=threads,
                    stop_after_steps=None if epoch == tc.epochs else epoch * steps_per_epoch)
        epochs.append({"epoch": epoch, **measure(run["params"], epoch)})
    return run, epochs


def study(out_dir, *, setting=None, n_images=500, overwrite=False, progress=False, log=print,
          threads=1):
    """Run the white-box study into ``out_dir``; returns the result written to whitebox.json."""
    from minicrate.measure.whitebox_plot import plot_whitebox

    setting = dict(SETTING if setting is None else setting)
    t0 = time.perf_counter()
    _, tc = recipe(setting["data"], **setting["recipe"])
    split = load(setting["data"], test_size=tc.test_size, seed=tc.split_seed)
    images = split.x_test[:n_images]
    steps_per_epoch = -(-len(split.x_train) // tc.batch_size)
    os.makedirs(out_dir, exist_ok=True)
    forms = [setting["form"], "official" if setting["form"] == "paper" else "paper"]
    result = {"setting": {k: (list(v) if isinstance(v, tuple) else v) for k, v in setting.items()},
              "n_images": int(len(images)), "forms": {}, "steps": {}}
    for form in forms:
        config = form_config(setting, form)
        init = init_params(config, seed=tc.seed)
        log(f"whitebox: training the {form} form ({config.depth} layers, {tc.epochs} epochs)")
        run, epochs = train_with_snapshots(
            config, tc, os.path.join(out_dir, form),
            setting["snapshots"] if form == setting["form"] else (), steps_per_epoch,
            lambda params, _epoch, c=config: _measure(params, c, images),
            overwrite=overwrite, progress=progress, log=log, threads=threads)
        trained, at_init = epochs[-1], _measure(init, config, images)
        result["forms"][form] = {
            "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
            "test_accuracy": evaluate(run["params"], config, split.x_test, split.y_test)["accuracy"],
            "trained": {k: v for k, v in trained.items() if k != "epoch"}, "init": at_init,
            "epochs": [{"epoch": 0, **at_init}] + epochs,
            "targets": targets(trained, at_init),
        }
        result["steps"][form] = {"trained": layer_steps(run["params"], config, images),
                                 "init": layer_steps(init, config, images)}
    main = result["forms"][setting["form"]]
    result.update(config=main["config"], train_config={k: getattr(tc, k) for k in tc.__dataclass_fields__},
                  test_accuracy=main["test_accuracy"], trained=main["trained"], init=main["init"],
                  epochs=main["epochs"], targets=main["targets"])
    synthetic = synthetic_descent()
    synthetic["monotone"] = {name: monotone_descent(synthetic[name]["rc"]) for name in ("true", "random")}
    result["synthetic"] = synthetic
    result["wall_time_s"] = round(time.perf_counter() - t0, 1)
    write_json(os.path.join(out_dir, "whitebox.json"), result)
    plot_whitebox(result, os.path.join(out_dir, "whitebox.png"))
    return result
