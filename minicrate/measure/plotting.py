"""Figures for runs: training curves, the layer-wise measurements, attention maps.

Uses ``matplotlib.figure.Figure`` directly (no ``pyplot``), so drawing never
opens a window, needs no display, and does not touch global state; every
function writes one PNG and returns its path.
"""

from __future__ import annotations

import os

import numpy as np


def figure(width, height):
    """A new ``width`` × ``height`` inch Figure (constrained layout, no pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_figure(fig, path):
    """Write ``fig`` to ``path`` atomically (parent folders made); returns ``path``.  The format
    is the one ``path`` ends with (``.pdf``, ``.svg``), PNG otherwise."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.png"
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    fig.savefig(tmp, format=suffix[1:] if suffix in (".pdf", ".svg") else "png")
    os.replace(tmp, path)
    return path


def plot_curves(history, path, *, title="training"):
    """Two panels: train/test loss and train/test accuracy per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = figure(9, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    ax1.plot(epochs, [h["test_loss"] for h in history], "s-", ms=3, label="test")
    ax1.set(xlabel="epoch", ylabel="label-smoothed cross-entropy", title="loss")
    ax2.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", ms=3, label="train")
    ax2.plot(epochs, [100 * h["test_accuracy"] for h in history], "s-", ms=3, label="test")
    best = max(h["test_accuracy"] for h in history)
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title=f"accuracy (best test {100 * best:.1f}%)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_layerwise(result, path, *, title=None):
    """The paper's layer-wise figure (JMLR Fig. 13 style), trained vs initialisation.

    Left: R^c of each layer's MSSA input
    (:func:`minicrate.objective.rates.measured_compression_rate`); right: the
    fraction of non-zeros of each layer's ISTA output.  Error bars: std over images.

    Args:
        result: the dict of :func:`minicrate.measure.layerwise.layerwise_comparison`.
    """
    layers = np.arange(1, len(result["trained"]["rc"]) + 1)
    fig = figure(9, 3.6)
    ax1, ax2 = fig.subplots(1, 2)
    styles = {"trained": dict(fmt="o-", color="C0"), "init": dict(fmt="s--", color="C7")}
    labels = {"trained": "trained", "init": "at initialisation"}
    for which in ("trained", "init"):
        r = result[which]
        ax1.errorbar(
            layers, r["rc"], yerr=r["rc_std"], capsize=3, label=labels[which], **styles[which]
        )
        ax2.errorbar(
            layers,
            r["nonzero"],
            yerr=r["nonzero_std"],
            capsize=3,
            label=labels[which],
            **styles[which],
        )
    ax1.set(
        xlabel="layer index ℓ",
        ylabel=r"$R^c(Z^{\ell})$ (nats)",
        title="compression (lower = more compressed)",
    )
    ax2.set(
        xlabel="layer index ℓ",
        ylabel=r"$\|Z^{\ell+1}\|_0 \,/\, (d\cdot N)$",
        title="sparsity (lower = sparser)",
    )
    for ax in (ax1, ax2):
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "layer-wise measurements")
    return save_figure(fig, path)


def plot_attention(images, maps, labels, predictions, path, *, layer, patch_size, title=None):
    """One row per image: the image, then the class token's attention per head.

    Args:
        images: ``(n, C, H, W)`` host images (standardised is fine).
        maps: ``(n, K, h, w)`` attention of the class token over the patches.
        labels, predictions: ``(n,)`` integers for the row titles.
    """
    n, K, gh, gw = maps.shape
    fig = figure(1.5 * (K + 1), 1.55 * n + 0.5)
    axes = np.atleast_2d(fig.subplots(n, K + 1, squeeze=False))
    H, W = images.shape[-2:]
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(images[i].mean(axis=0), cmap="gray", extent=(0, W, H, 0))
        for t in range(1, gh):  # the patch grid
            ax.axhline(t * H / gh, color="C1", lw=0.8)
        for t in range(1, gw):
            ax.axvline(t * W / gw, color="C1", lw=0.8)
        ax.set_title(f"label {labels[i]}, pred {predictions[i]}", fontsize=8)
        top = float(maps[i].max())
        for k in range(K):
            ax = axes[i, k + 1]
            ax.imshow(
                maps[i, k],
                cmap="viridis",
                vmin=0,
                vmax=top,
                interpolation="nearest",
                extent=(0, W, H, 0),
            )
            if gh * gw <= 16:  # few patches: print each share
                for r in range(gh):
                    for c in range(gw):
                        v = maps[i, k, r, c]
                        ax.text(
                            (c + 0.5) * W / gw,
                            (r + 0.5) * H / gh,
                            f"{v:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="w" if v < 0.6 * top else "k",
                        )
            if i == 0:
                ax.set_title(f"head {k + 1}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        title or f"class-token attention over {patch_size}×{patch_size} patches, layer {layer}",
        fontsize=9,
    )
    return save_figure(fig, path)


def plot_mae_curves(history, path, *, title="CRATE-MAE"):
    """Training loss and test masked-patch MSE per epoch, with the baseline."""
    epochs = [h["epoch"] for h in history]
    fig = figure(6, 3.6)
    ax = fig.subplots()
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train (random masks)")
    ax.plot(epochs, [h["test_mse"] for h in history], "s-", ms=3, label="test (fixed masks)")
    ax.axhline(history[-1]["baseline_mse"], color="grey", ls="--", label="mean-patch baseline (test)")
    ax.axhline(0.5 * history[-1]["baseline_mse"], color="grey", ls=":", label="0.5 × baseline")
    ax.set(xlabel="epoch", ylabel="masked-patch MSE (standardised pixels)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_lm_curves(history, path, *, form, unigram=None, bigram=None, title="language model"):
    """Train/validation loss per step (and masked accuracy vs baseline) as a PNG."""
    steps = [h["step"] for h in history]
    masked = form == "masked"
    fig = figure(9 if masked else 5.5, 3.4)
    axes = fig.subplots(1, 2 if masked else 1)
    ax1 = axes[0] if masked else axes
    ax1.plot(steps, [h["train_loss"] for h in history], "o-", ms=3, label="train (running mean)")
    ax1.plot(steps, [h["val_loss"] for h in history], "s-", ms=3, label="validation plays")
    if unigram is not None and not masked:
        ax1.axhline(unigram, color="gray", ls="--", lw=1, label=f"unigram {unigram:.2f}")
    if bigram is not None and not masked:
        ax1.axhline(bigram, color="gray", ls=":", lw=1, label=f"bigram {bigram:.2f}")
    best = min(h["val_loss"] for h in history)
    ax1.set(xlabel="step", ylabel="cross-entropy (nats/char)",
            title=f"loss (best validation {best:.3f})")
    if masked:
        ax2 = axes[1]
        ax2.plot(steps, [100 * h["val_accuracy"] for h in history], "s-", ms=3, label="model")
        ax2.plot(steps, [100 * h["val_baseline_accuracy"] for h in history], "--", color="gray",
                 label="most frequent character")
        ax2.set(xlabel="step", ylabel="accuracy (%)", title="masked-character accuracy")
    for ax in (axes if masked else [axes]):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)
