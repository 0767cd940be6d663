"""Train the ``mnist`` recipe to the end and record what the white-box chapter shows.

The white-box chapter (book/white-box.md) trains the small ``digits`` model while the book
builds.  The ``mnist`` model (28x28 digits, 7x7 patches, N = 17 tokens of width 96, 4 layers of
4 heads) needs its full 40-epoch recipe to be trained, about 10 minutes on one core, too long for
a chapter.  This script trains it once, stopping at a few epochs on the way (the run resumes bit
for bit, so the snapshots lie on the one 40-epoch schedule), and writes, for the initialisation
and each snapshot:

* the test accuracy;
* the layer-wise measurement of the paper (measured R^c of each layer's MSSA input, non-zero
  fraction of each ISTA output; :func:`minicrate.measure.layerwise.layerwise`) on 500 test images;

and for the initialisation and the final model: the overlap of the heads' subspaces, the
coherence of the dictionaries, attention statistics per layer, and the last layer's class-token
attention maps of six test images (the first test image of each class 0-5; the chapter loads
the images themselves from minicrate.data).  It also records the two references of the measured R^c in
the same setting (same N, p, K and eps^2): tokens collapsed onto one direction per head, and
isotropic random tokens.

Usage::

    .venv/bin/python benchmarks/white_box_mnist.py                 # writes book/data/white_box_mnist.json
    .venv/bin/python benchmarks/white_box_mnist.py --out other.json --epochs 40

The chapter loads the JSON file; rerun this script after changing the model or the recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import minicrate as mc  # noqa: E402
from minicrate.data.images import load  # noqa: E402
from minicrate.measure.layerwise import attention_maps, layerwise  # noqa: E402
from minicrate.models.classifier import describe, forward, intermediates  # noqa: E402
from minicrate.models.stack import layer_params  # noqa: E402
from minicrate.objective.rates import measured_compression_rate  # noqa: E402
from minicrate.training.classifier import evaluate, limit_threads, recipe  # noqa: E402
from minicrate.training.whitebox import train_with_snapshots  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "book", "data", "white_box_mnist.json")


def head_overlap(U):
    """Mean cosine of the principal angles between the column spaces of every pair of heads.

    ``U`` ``(K, d, p)``; 0 for mutually orthogonal subspaces, 1 for identical ones.
    """
    Q = [np.linalg.qr(U[k])[0] for k in range(U.shape[0])]
    pairs = [(a, b) for a in range(len(Q)) for b in range(a + 1, len(Q))]
    return float(np.mean([np.linalg.svd(Q[a].T @ Q[b], compute_uv=False).mean() for a, b in pairs]))


def dictionary_coherence(D):
    """Mean |cosine| between distinct columns of ``D`` ``(d, d)`` (0: orthogonal columns)."""
    Dn = D / np.linalg.norm(D, axis=0, keepdims=True)
    G = np.abs(Dn.T @ Dn)
    return float(G[~np.eye(len(G), dtype=bool)].mean())


def structure(params, config):
    """Head overlap and dictionary coherence of every layer."""
    overlap, coherence = [], []
    for layer in range(config.depth):
        p = {k: np.asarray(v, dtype=np.float64) for k, v in layer_params(params, layer).items()}
        overlap.append(head_overlap(p["U"]))
        coherence.append(dictionary_coherence(p["D"]))
    return {"head_overlap": overlap, "dictionary_coherence": coherence}


def attention_stats(params, config, images):
    """Per layer, averaged over images, heads and query tokens.

    ``self_weight``: a token's weight on itself (uniform: 1/N); ``max_weight``: the largest
    weight of a row; ``entropy_ratio``: row entropy / log N (1: uniform); ``other_max`` and
    ``other_entropy_ratio``: the same for the weights on the *other* N - 1 tokens, renormalised
    to sum to 1 (uniform: 1/(N - 1) and 1).
    """
    _, cache = forward(params, images, config)
    keys = ("self_weight", "max_weight", "entropy_ratio", "other_max", "other_entropy_ratio")
    out = {k: [] for k in keys}

    def entropy(P):
        return -(P * np.log(np.clip(P, 1e-300, None))).sum(axis=-1)

    for A in intermediates(cache)["attention"]:
        A = np.asarray(A, dtype=np.float64)  # (B, K, N, N), rows sum to 1
        n = A.shape[-1]
        off = A[..., ~np.eye(n, dtype=bool)].reshape(*A.shape[:-1], n - 1)
        off = off / off.sum(axis=-1, keepdims=True)
        out["self_weight"].append(float(np.diagonal(A, axis1=-2, axis2=-1).mean()))
        out["max_weight"].append(float(A.max(axis=-1).mean()))
        out["entropy_ratio"].append(float(entropy(A).mean() / np.log(n)))
        out["other_max"].append(float(off.max(axis=-1).mean()))
        out["other_entropy_ratio"].append(float(entropy(off).mean() / np.log(n - 1)))
    return out


def references(n_tokens, heads, head_dim, eps_sq, *, n_draws=200, seed=0):
    """The measured R^c of two synthetic token sets in the same setting (N, K, p, eps^2).

    Collapsed: every token the same vector (the smallest value unit-norm tokens can give);
    isotropic: independent standard normal tokens (then unit-normalised by the measurement);
    maximum: equal Gram eigenvalues, the largest value (closed form).
    """
    rng = np.random.default_rng(seed)
    U = np.stack([np.eye(heads * head_dim)[:, k * head_dim : (k + 1) * head_dim] for k in range(heads)])
    iso = measured_compression_rate(rng.standard_normal((n_draws, n_tokens, heads * head_dim)), U,
                                    eps_sq=eps_sq, reduction="none")
    collapsed = measured_compression_rate(np.ones((1, n_tokens, heads * head_dim)), U, eps_sq=eps_sq,
                                          reduction="none")
    m = min(n_tokens, head_dim)
    return {
        "collapsed": float(collapsed[0]),
        "isotropic": float(np.mean(iso)),
        "isotropic_std": float(np.std(iso)),
        "maximum": float(heads * 0.5 * m * np.log1p(head_dim / (m * eps_sq))),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's 40 epochs")
    ap.add_argument("--snapshots", default="1,2,5,10,20,40", help="epochs at which to measure")
    ap.add_argument("--n-images", type=int, default=500)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    config, tc = recipe("mnist", **overrides)
    split = load("mnist", test_size=tc.test_size, seed=tc.split_seed)
    images = split.x_test[: args.n_images]
    snapshots = sorted({int(e) for e in args.snapshots.split(",") if int(e) <= tc.epochs} | {tc.epochs})
    steps_per_epoch = -(-len(split.x_train) // tc.batch_size)
    init = mc.init_params(config, seed=tc.seed)
    picks = [int(np.flatnonzero(split.y_test == c)[0]) for c in range(6)]
    eps_sq = 0.01

    def snapshot(params, epoch):
        test = evaluate(params, config, split.x_test, split.y_test)
        entry = {"epoch": epoch, "test_accuracy": test["accuracy"],
                 "layerwise": layerwise(params, config, images, eps_sq=eps_sq)}
        print(f"epoch {epoch:>3}: test accuracy {test['accuracy']:.3f}, R^c "
              f"{np.round(entry['layerwise']['rc'], 1)}, non-zero "
              f"{np.round(entry['layerwise']['nonzero'], 3)} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        return entry

    results = [snapshot(init, 0)]
    with limit_threads(1), tempfile.TemporaryDirectory() as run_dir:
        run, measured = train_with_snapshots(config, tc, run_dir, snapshots, steps_per_epoch, snapshot,
                                             log=lambda line: None)
    results += measured
    trained = run["params"]

    maps, predictions = attention_maps(trained, config, split.x_test[picks], layer=-1)
    maps_init, _ = attention_maps(init, config, split.x_test[picks], layer=-1)
    rng = np.random.default_rng(0)
    d, K = config.dim, config.heads
    random_overlap = [head_overlap(rng.standard_normal((K, d, d // K))) for _ in range(50)]
    out = {
        "script": "benchmarks/white_box_mnist.py",
        "model": describe(config),
        "param_count": mc.param_count(config),
        "n_tokens": config.num_patches + 1,
        "heads": K,
        "head_dim": d // K,
        "dim": d,
        "depth": config.depth,
        "recipe": {k: getattr(tc, k) for k in ("data", "optimizer", "lr", "weight_decay", "epochs",
                                               "batch_size", "warmup_epochs", "shift", "seed")},
        "n_train": int(len(split.x_train)),
        "n_test": int(len(split.x_test)),
        "n_images": int(len(images)),
        "eps_sq": eps_sq,
        "history": [{k: h[k] for k in ("epoch", "train_loss", "test_loss", "test_accuracy")}
                    for h in run["history"]],
        "snapshots": results,
        "references": references(config.num_patches + 1, K, d // K, eps_sq),
        "structure": {"trained": structure(trained, config), "init": structure(init, config),
                      "random_overlap": float(np.mean(random_overlap)),
                      "random_overlap_std": float(np.std(random_overlap))},
        "attention": {"trained": attention_stats(trained, config, images[:200]),
                      "init": attention_stats(init, config, images[:200]),
                      "uniform": 1.0 / (config.num_patches + 1)},
        "maps": {"test_indices": picks, "labels": [int(v) for v in split.y_test[picks]],
                 "predictions": [int(v) for v in predictions],
                 "trained": np.round(maps, 4).tolist(), "init": np.round(maps_init, 4).tolist()},
        "wall_time_s": time.perf_counter() - t0,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out} in {out['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
