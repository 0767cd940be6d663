"""The white-box study's figure (``minicrate whitebox``), in the style of the paper's layer-wise plots.

Six panels, from the dict that :func:`minicrate.training.whitebox.study` writes:

1. R^c per layer, one curve per training-epoch snapshot, initialisation dashed;
2. the non-zero fraction per layer, the same way;
3. the other form (official ↔ paper): R^c trained and at initialisation;
4. the compression half's change of R^c(·|U^ℓ), per layer, in % (negative: it lowered R^c);
5. the ISTA half's change of the LASSO objective, per layer, in % (negative: it lowered it);
6. the synthetic case: R^c per layer with the true bases and with random ones.
"""

from __future__ import annotations

import numpy as np

from minicrate.measure.plotting import figure, save_figure


def _epochs(ax, epochs, key, ylabel, title):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    last = max(e["epoch"] for e in epochs)
    for e in epochs:
        layers = np.arange(1, len(e[key]) + 1)
        if e["epoch"] == 0:
            ax.plot(layers, e[key], "s--", color="C7", label="initialisation")
        else:
            ax.plot(layers, e[key], "o-", ms=3, color=cmap(0.15 + 0.8 * e["epoch"] / last),
                    label=f"epoch {e['epoch']}")
    ax.set(xlabel="layer ℓ", ylabel=ylabel, title=title)


def _change(before, after):
    return 100 * (np.asarray(after) - np.asarray(before)) / np.abs(np.asarray(before))


def plot_whitebox(result, path):
    """Write the study's six-panel figure (:func:`whitebox_figure`) to ``path``; returns ``path``."""
    return save_figure(whitebox_figure(result), path)


def whitebox_figure(result):
    """The study's six-panel figure, a matplotlib ``Figure``."""
    from matplotlib.ticker import MaxNLocator

    main, other = result["setting"]["form"], [f for f in result["forms"] if f != result["setting"]["form"]][0]
    fig = figure(13, 7.4)
    axes = fig.subplots(2, 3)
    _epochs(axes[0, 0], result["epochs"], "rc", r"$R^c$ (nats)",
            f"{main} form: compression (lower = more compressed)")
    _epochs(axes[0, 1], result["epochs"], "nonzero", "non-zero fraction of the ISTA output",
            f"{main} form: sparsity (lower = sparser)")
    ax = axes[0, 2]
    o = result["forms"][other]
    layers = np.arange(1, len(o["trained"]["rc"]) + 1)
    ax.plot(layers, o["trained"]["rc"], "o-", color="C1", label="trained")
    ax.plot(layers, o["init"]["rc"], "s--", color="C7", label="initialisation")
    ax.set(xlabel="layer ℓ", ylabel=r"$R^c$ (nats)", title=f"{other} form: compression")
    for col, (before, after, what) in enumerate((("rc_before", "rc_after", r"$R^c(\cdot\,|\,U^\ell)$"),
                                                 ("lasso_before", "lasso_after", "LASSO objective"))):
        ax = axes[1, col]
        for i, form in enumerate((main, other)):
            for state, style in (("trained", "o-"), ("init", "s--")):
                s = result["steps"][form][state]
                ax.plot(layers, _change(s[before], s[after]), style, ms=3, color=f"C{i}",
                        label=f"{form}, {'trained' if state == 'trained' else 'init'}")
        ax.axhline(0, color="k", lw=0.8)
        half = "compression half (MSSA)" if col == 0 else "sparsification half (ISTA)"
        ax.set(xlabel="layer ℓ", ylabel=f"change of {what} (%)", title=f"{half}: below 0 = it lowered it")
    ax = axes[1, 2]
    syn = result["synthetic"]
    for name, style in (("true", "o-"), ("random", "s--")):
        rc = np.asarray(syn[name]["rc"])
        ax.plot(syn["layers"], rc, style, ms=3, label=f"{name} bases")
    ax.set(xlabel="layer ℓ (0: input)", ylabel=rf"$R^c$ (nats, $\epsilon$ = {syn['setting']['eps']:g})",
           title="synthetic union of subspaces")
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"white-box study: {result['setting']['data']}, {len(layers)} layers "
                 f"(test accuracy {100 * result['test_accuracy']:.1f} %)")
    return fig
