"""Reading a CRATE-against-transformer comparison (:func:`minicrate.training.compare.compare`):
the layer-wise measurement of either block, the table and the figure.

The layer-wise protocol is that of :mod:`minicrate.measure.layerwise` for both blocks
(:func:`minicrate.models.stack.layer_readouts` gives each layer's attention input,
output and head bases): R^c of the unit-normalised head projections of LN₁(Z^ℓ), on
CRATE's ``U`` or the transformer's value maps, and the exact non-zero fraction of the
layer's output Z^{ℓ+1}.  A transformer block's output is the residual stream, which
has no exact zeros, so its non-zero fraction is 1: the contrast the paper draws.
"""

from __future__ import annotations

import numpy as np

from minicrate.core.backend import device_of, host_to, namespace, to_numpy
from minicrate.core.validate import check_positive, finite_checks
from minicrate.measure.plotting import figure, save_figure
from minicrate.models import lm
from minicrate.models.classifier import forward
from minicrate.models.mae import mae_encode
from minicrate.models.masking import random_masking
from minicrate.models.stack import layer_readouts
from minicrate.objective.rates import measured_compression_rate, nonzero_fraction

SCORE_LABELS = {"test_accuracy": "test accuracy (%)", "val_ce_nats": "validation cross-entropy (nats/char)",
                "masked_accuracy": "masked-character accuracy (%)",
                "masked_mse_ratio": "masked-patch MSE / mean-patch MSE"}
PERCENT = ("test_accuracy", "masked_accuracy")
HIGHER_IS_BETTER = {"test_accuracy": True, "val_ce_nats": False, "masked_accuracy": True,
                    "masked_mse_ratio": False}


def layer_caches(kind, params, config, inputs, *, seed=0):
    """The layer caches of one forward pass of a model of ``kind`` (``"classifier"``, ``"lm"``
    or ``"mae"``, whose encoder is measured with the fixed evaluation masks, keys = position
    in ``inputs``) on host ``inputs`` (images, or token windows for ``"lm"``)."""
    if kind not in ("classifier", "lm", "mae"):
        raise ValueError(f"kind must be 'classifier', 'lm' or 'mae', got {kind!r}")
    if kind == "lm":
        return lm.forward(params, inputs, config)[1]["layers"]
    W = params["embed.W"]
    x = host_to(namespace(W), inputs, W.dtype, device_of(W))
    if kind == "classifier":
        return forward(params, x, config)[1]["layers"]
    mask = random_masking(np.arange(len(inputs)), config.num_patches, config.mask_ratio, seed=seed)
    return mae_encode(params, x, mask, config)[1]["layers"]


def layerwise_both(kind, params, config, inputs, *, batch_size=250, eps_sq=0.01):
    """The layer-wise measurement of either block, from :func:`minicrate.models.stack.layer_readouts`.

    Per layer and input (image or text window), mean and standard deviation over inputs:

    * ``rc``: the protocol of :func:`minicrate.measure.layerwise.layerwise` -- R^c of the
      unit-normalised projections of LN₁(Z^ℓ) on the layer's own head bases (CRATE's U, the
      transformer's value maps), summed over heads (tests/test_compare.py checks that it
      equals :func:`~minicrate.measure.layerwise.layerwise` on a CRATE classifier);
    * ``rc_tokens``: the same with one basis, the identity (p = d): the coding rate of the
      unit-normalised tokens themselves, which depends on no learned basis, so the two
      models' values can be set side by side (``rc`` depends on each model's K and p);
    * ``nonzero``: the exact non-zero fraction of the layer output Z^{ℓ+1}.

    Returns:
        dict of lists over layers: ``rc``, ``rc_std``, ``rc_tokens``, ``rc_tokens_std``, ``nonzero``,
        ``nonzero_std``, and ``n_inputs``.
    """
    eps_sq = check_positive(eps_sq, "eps_sq")
    sums = {}
    with finite_checks(False):
        for start in range(0, len(inputs), batch_size):
            for layer, c in enumerate(layer_caches(kind, params, config, inputs[start:start + batch_size])):
                r = layer_readouts(c)
                X = r["mixing_input"]
                xp = namespace(X)
                eye = xp.reshape(xp.eye(X.shape[-1], dtype=X.dtype, device=device_of(X)), (1, X.shape[-1], -1))
                values = {"rc": measured_compression_rate(X, r["bases"], eps_sq=eps_sq, reduction="none"),
                          "rc_tokens": measured_compression_rate(X, eye, eps_sq=eps_sq, reduction="none"),
                          "nonzero": nonzero_fraction(r["output"], reduction="none")}
                for k, v in values.items():
                    sums.setdefault((k, layer), []).append(to_numpy(v).astype(np.float64))
    out = {"n_inputs": int(len(inputs))}
    for k in ("rc", "rc_tokens", "nonzero"):
        per_layer = [np.concatenate(sums[(k, layer)]) for layer in range(config.depth)]
        out[k] = [float(v.mean()) for v in per_layer]
        out[f"{k}_std"] = [float(v.std()) for v in per_layer]
    return out


def summary(rows):
    """Per model (and form): the score's mean and spread (half the range) over seeds, the
    parameter count and the mean wall time, as a list of dicts in the rows' order."""
    groups = {}
    for r in rows:
        key = next(k for k in HIGHER_IS_BETTER if k in r)
        groups.setdefault((r["model"], r.get("form"), key), []).append(r)
    out = []
    for (model, form, key), rs in groups.items():
        v = np.array([r[key] for r in rs])
        out.append({"model": model, "form": form, "score": key, "mean": float(v.mean()),
                    "spread": float((v.max() - v.min()) / 2), "n": len(rs), "params": rs[0]["params"],
                    "wall_time_s": float(np.mean([r["wall_time_s"] for r in rs])), "epochs": rs[0]["epochs"],
                    "values": [float(x) for x in v]})
    return out


def _fmt(key, value):
    return f"{100 * value:.2f} %" if key in PERCENT else f"{value:.4f}"


def _mean_layerwise(report, model, form, which):
    entries = [e[which] for e in report["layerwise"] if e["model"] == model and e.get("form") == form]
    return {k: np.mean([e[k] for e in entries], axis=0) for k in ("rc", "rc_tokens", "nonzero")}


def format_markdown(report):
    """``compare.md``: the scores (mean ± half-range over seeds) and the layer-wise table."""
    lines = [f"# CRATE against the transformer: {report['data']}", "",
             f"Seeds {', '.join(map(str, report['seeds']))}; same recipe, budget and measurement for both models "
             f"(minicrate.training.compare).", "",
             "| model | form | parameters | score | mean ± half-range | per seed | epochs | wall time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summary(report["rows"]):
        spread = f"{100 * s['spread']:.2f}" if s["score"] in PERCENT else f"{s['spread']:.4f}"
        per_seed = " / ".join(_fmt(s["score"], v) for v in s["values"])
        lines.append(f"| {s['model']} | {s['form'] or '-'} | {s['params']:,} | {s['score']} | "
                     f"{_fmt(s['score'], s['mean'])} ± {spread} | {per_seed} | {s['epochs']:.1f} | "
                     f"{s['wall_time_s']:.0f} |")
    lines += ["", "Layer-wise measurement, trained / at initialisation (mean over seeds; "
              + report["protocol"] + "):", ""]
    for model, form in dict.fromkeys((e["model"], e.get("form")) for e in report["layerwise"]):
        t, i = (_mean_layerwise(report, model, form, w) for w in ("trained", "init"))
        name = model + (f" ({form})" if form else "")
        header = " | ".join(f"layer {k + 1}" for k in range(len(t["rc"])))
        lines += [f"| {name} | {header} |", "|---|" + "---|" * len(t["rc"])]
        rc = zip(t["rc"], i["rc"], strict=True)
        nz = zip(t["nonzero"], i["nonzero"], strict=True)
        tokens = zip(t["rc_tokens"], i["rc_tokens"], strict=True)
        lines.append("| R^c | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in rc) + " |")
        lines.append("| R^c of the tokens (identity basis) | " + " | ".join(f"{a:.2f} / {b:.2f}" for a, b in tokens)
                     + " |")
        lines.append("| non-zero fraction | " + " | ".join(f"{a:.3f} / {b:.3f}" for a, b in nz) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot_comparison(report, path):
    """``compare.png``: the learning curves of both models (every seed) and their layer-wise
    R^c and non-zero fraction, trained (solid) and at initialisation (dashed)."""
    pairs = list(dict.fromkeys((c["model"], c.get("form")) for c in report["curves"]))
    forms = list(dict.fromkeys(f for _, f in pairs))
    fig = figure(17, 3.6 * len(forms))
    axes = np.atleast_2d(fig.subplots(len(forms), 4))
    colors = {}
    for row, form in zip(axes, forms, strict=True):
        ax_curve, ax_rc, ax_tok, ax_nz = row
        for model, f in pairs:
            if f != form:
                continue
            color = colors.setdefault(model, f"C{len(colors)}")
            key = next(k for k in HIGHER_IS_BETTER if any(k in r for r in report["rows"] if r["model"] == model
                                                         and r.get("form") == f))
            scale = 100 if key in PERCENT else 1
            for n, c in enumerate(x for x in report["curves"] if x["model"] == model and x.get("form") == f):
                pts = np.array(c["points"], dtype=float)
                ax_curve.plot(pts[:, 0], scale * pts[:, 1], "-", color=color, alpha=0.8,
                              label=model if n == 0 else None)
            ax_curve.set(xlabel="step" if form in ("causal", "masked") else "epoch", ylabel=SCORE_LABELS[key])
            for which, style in (("trained", "o-"), ("init", "s--")):
                m = _mean_layerwise(report, model, f, which)
                layers = np.arange(1, len(m["rc"]) + 1)
                ax_rc.plot(layers, m["rc"], style, color=color, ms=4, label=f"{model} {which}")
                ax_tok.plot(layers, m["rc_tokens"], style, color=color, ms=4, label=f"{model} {which}")
                ax_nz.plot(layers, m["nonzero"], style, color=color, ms=4, label=f"{model} {which}")
        title = f" ({form})" if form else ""
        ax_curve.set_title("learning curves" + title)
        ax_rc.set(xlabel="layer", ylabel="R^c of LN1(Z^l), own head bases",
                  title="compression (lower = more compressed)")
        ax_tok.set(xlabel="layer", ylabel="coding rate of LN1(Z^l) tokens", title="same, identity basis (comparable)")
        ax_nz.set(xlabel="layer", ylabel="non-zero fraction of Z^{l+1}", title="sparsity (lower = sparser)")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in row[1:]:
            ax.set_xticks(np.arange(1, len(report["layerwise"][0]["trained"]["rc"]) + 1))
    fig.suptitle(f"CRATE against the transformer on {report['data']}")
    return save_figure(fig, path)
