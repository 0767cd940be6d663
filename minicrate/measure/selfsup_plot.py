"""Figures of a self-supervised run: its curves, and the teacher's attention, embedding and
spectrum (written by ``train-dino``)."""

from __future__ import annotations

import numpy as np

from minicrate.measure.plotting import figure, save_figure


def plot_selfsup_curves(history, path, *, title="self-supervised"):
    """Training loss and the teacher's k-NN test accuracy per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = figure(9, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3)
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax2.plot(epochs, [100 * h["knn_accuracy"] for h in history], "s-", ms=3, label="teacher features")
    ax2.set(xlabel="epoch", ylabel="k-NN test accuracy (%)", title="k-NN on frozen features")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_selfsup_summary(path, *, images, maps, labels, embedding, embedding_labels, spectra, title):
    """One figure: rows of (digit, class-token attention per head) on the left; the 2-D
    embedding of the test features coloured by label and the covariance spectra on the right.

    Args:
        images ``(n, C, H, W)``, maps ``(n, K, g, g)``, labels ``(n,)``;
        embedding ``(t, 2)`` with ``embedding_labels`` ``(t,)``;
        spectra: ``{name: normalised eigenvalues, largest first}``.
    """
    n, K = maps.shape[:2]
    fig = figure(1.3 * (K + 1) + 7.5, max(1.35 * n + 0.6, 4.2))
    left, right = fig.subfigures(1, 2, width_ratios=[1.3 * (K + 1), 7.5])
    axes = np.atleast_2d(left.subplots(n, K + 1, squeeze=False))
    for i in range(n):
        axes[i, 0].imshow(images[i].mean(axis=0), cmap="gray")
        axes[i, 0].set_title(f"digit {labels[i]}", fontsize=8)
        for k in range(K):
            axes[i, k + 1].imshow(maps[i, k], cmap="viridis", interpolation="nearest")
            if i == 0:
                axes[i, k + 1].set_title(f"head {k + 1}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    left.suptitle("class-token attention, last layer", fontsize=9)
    ax_e, ax_s = right.subplots(1, 2)
    sc = ax_e.scatter(embedding[:, 0], embedding[:, 1], c=embedding_labels, cmap="tab10", s=4, vmin=-0.5,
                      vmax=9.5)
    right.colorbar(sc, ax=ax_e, ticks=range(10), shrink=0.8, label="label")
    ax_e.set(title="test features (t-SNE)", xticks=[], yticks=[])
    for name, eig in spectra.items():
        ax_s.semilogy(np.arange(1, len(eig) + 1), np.maximum(eig, 1e-12), label=name)
    ax_s.set(xlabel="eigenvalue index", ylabel="share of variance", title="feature spectrum")
    ax_s.grid(alpha=0.3)
    ax_s.legend(fontsize=7)
    fig.suptitle(title)
    return save_figure(fig, path)
