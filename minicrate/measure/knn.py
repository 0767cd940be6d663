r"""Judging frozen features without training on them much: k-NN accuracy, and the
diagnostics of a collapse (the book's chapter *Learning without labels*).

**Weighted k-NN** (Wu et al. 2018, as DINO evaluates): features are ℓ2-normalised; each
test feature votes with its k nearest training features by cosine similarity
:math:`s`, each vote weighted :math:`e^{s/T}` (T = 0.07); the class with the largest
total wins.

**Collapse.**  Features that all point the same way (complete collapse) or span few
directions (dimensional collapse) carry little information.  Two measurements show it:
the coding rate :math:`R_\epsilon` of the normalised features (the quantity SimDINO pushes
up), and the eigenvalue spectrum of their covariance with its *effective rank*
:math:`\exp(H(\lambda/\sum\lambda))` (the exponential of the spectrum's entropy; d for an
even spread, 1 for a single direction).
"""

from __future__ import annotations

import numpy as np

from minicrate.core.backend import to_numpy
from minicrate.core.validate import check_array, check_int, check_positive
from minicrate.models.masking import host_ints
from minicrate.objective.rates import coding_rate


def _unit_rows(x, name):
    check_array(x, name, ndim=2)
    x = to_numpy(x).astype(np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def knn_accuracy(train_x, train_y, test_x, test_y, *, k=20, temperature=0.07, num_classes=None,
                 batch_size=500):
    """Weighted cosine k-NN accuracy of ``test_x`` against ``train_x``.

    Args:
        train_x ``(n, m)``, test_x ``(t, m)``: features (any backend; copied to the host).
        train_y ``(n,)``, test_y ``(t,)``: integer labels.
        k: neighbours (at most n); temperature: T of the vote weights e^{s/T}.
    Returns:
        the fraction of test rows classified correctly (a float).
    """
    train, test = _unit_rows(train_x, "train_x"), _unit_rows(test_x, "test_x")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train_x and test_x must have one width, got {train.shape[1]} and {test.shape[1]}")
    ytr, yte = host_ints(train_y, "train_y"), host_ints(test_y, "test_y")
    if ytr.shape != (len(train),) or yte.shape != (len(test),):
        raise ValueError(f"train_y and test_y must hold one label per row: got {ytr.shape} for {len(train)} "
                         f"rows and {yte.shape} for {len(test)}")
    k = check_int(k, "k", minimum=1)
    if k > len(train):
        raise ValueError(f"k = {k} is more than the {len(train)} training features")
    temperature = check_positive(temperature, "temperature")
    C = int(num_classes or max(ytr.max(), yte.max()) + 1)
    correct = 0
    for start in range(0, len(test), batch_size):
        sims = test[start : start + batch_size] @ train.T  # (b, n)
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, nearest, axis=1)
        votes = np.zeros((len(s), C))
        np.add.at(votes, (np.arange(len(s))[:, None], ytr[nearest]), np.exp(s / temperature))
        correct += int(np.sum(votes.argmax(axis=1) == yte[start : start + batch_size]))
    return correct / len(test)


def feature_spectrum(x):
    """Eigenvalues of the covariance of the ℓ2-normalised features ``(n, m)``, largest first,
    divided by their sum (they then sum to 1)."""
    u = _unit_rows(x, "x")
    centred = u - u.mean(axis=0)
    eig = np.clip(np.linalg.eigvalsh(centred.T @ centred / len(u))[::-1], 0.0, None)
    total = eig.sum()
    return eig / total if total > 0 else eig


def effective_rank(spectrum):
    """exp(entropy) of a normalised spectrum: between 1 (one direction) and its length."""
    p = np.asarray(spectrum, dtype=np.float64)
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p)))) if p.size else 0.0


def collapse_report(x, *, eps=0.5 ** 0.5):
    """``{"coding_rate", "effective_rank", "top_eigenvalue", "spectrum"}`` of features
    ``(n, m)``: R_ε of the normalised rows (:func:`minicrate.objective.rates.coding_rate`),
    and the covariance spectrum (as a list)."""
    u = _unit_rows(x, "x")
    spectrum = feature_spectrum(u)
    return {"coding_rate": float(coding_rate(u, eps)), "eps": float(eps),
            "effective_rank": effective_rank(spectrum), "top_eigenvalue": float(spectrum[0]),
            "spectrum": [float(v) for v in spectrum]}
