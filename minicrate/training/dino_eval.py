"""The end of a self-supervised run: frozen-feature accuracy beside its baselines, the
collapse diagnostics, and the figure (``DIR/selfsup.png``).

Everything is measured in the same run on the same split:

* ``knn_accuracy``, ``probe_accuracy``: the teacher's backbone features (20-NN, and a
  logistic-regression probe, :func:`minicrate.measure.probe.linear_probe`);
* ``baselines``: ``pixels_knn`` and ``pixels_probe`` (the raw standardised pixels),
  ``untrained_knn`` (the same backbone at initialisation), ``supervised_knn`` (the same
  backbone trained with labels by :func:`minicrate.training.classifier.train`, its
  features read the same way);
* ``collapse``: :func:`minicrate.measure.knn.collapse_report` of the test features, trained
  and untrained.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import numpy as np

from minicrate.core.backend import device_of, host_to, namespace, to_numpy
from minicrate.measure.knn import collapse_report, knn_accuracy
from minicrate.measure.layerwise import class_token_maps
from minicrate.measure.probe import linear_probe
from minicrate.models.classifier import encode, intermediates
from minicrate.models.selfsup import init_selfsup_params
from minicrate.training.classifier import RECIPES, train
from minicrate.training.rundir import CHECKPOINT, SELFSUP_FIGURE, writing


def supervised_features(task, log):
    """Features of the same backbone trained with labels (``supervised_epochs`` epochs of the
    classifier recipe for the data), ``(train, test)`` host arrays; ``None`` when skipped."""
    epochs = task.recipe.supervised_epochs
    if not epochs:
        return None
    bb = dataclasses.replace(task.config.backbone, num_classes=task.split.num_classes)
    tc = dataclasses.replace(task.tc, **{**RECIPES[task.tc.data][1], "epochs": epochs,
                                         "warmup_epochs": min(2, epochs / 2), "test_size": task.tc.test_size,
                                         "split_seed": task.tc.split_seed, "seed": task.tc.seed})
    with tempfile.TemporaryDirectory() as tmp:
        params = train(bb, tc, os.path.join(tmp, "run"), progress=False, log=lambda line: None)["params"]
    log(f"supervised baseline: {epochs} epochs with labels")
    return task.features(params)


def attention_of(params, config, images, *, layer=-1):
    """The class token's attention over the patches, per head: ``(n, K, g, g)`` host."""
    ref = params["head.ln_gamma"]
    x = host_to(namespace(ref), images, ref.dtype, device_of(ref))
    _, cache = encode(params, x, config, fast=False)
    return class_token_maps(to_numpy(intermediates(cache)["attention"][layer]), config)


def embed_2d(features, seed=0):
    """A 2-D t-SNE embedding of ``(n, m)`` features (scikit-learn, fixed seed)."""
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=30).fit_transform(features)


def final_evaluation(task, params, log):
    """Every end-of-run figure of a :class:`~minicrate.training.dino.SelfSupTask` (a dict)."""
    t0 = time.perf_counter()
    s, k = task.split, task.recipe.knn_k
    flat = lambda x: x.reshape(len(x), -1)  # noqa: E731
    f_train, f_test = task.features(task.teacher)
    st_train, st_test = task.features(params)
    init = init_selfsup_params(task.config, seed=task.tc.seed, backend=task.xp)
    u_train, u_test = task.features(init)
    pixels_probe = linear_probe(s.x_train, s.y_train, s.x_test, s.y_test)["test_accuracy"]
    out = {
        "knn_accuracy": knn_accuracy(f_train, s.y_train, f_test, s.y_test, k=k),
        "student_knn_accuracy": knn_accuracy(st_train, s.y_train, st_test, s.y_test, k=k),
        "probe_accuracy": linear_probe(f_train, s.y_train, f_test, s.y_test)["test_accuracy"],
        "baselines": {"pixels_knn": knn_accuracy(flat(s.x_train), s.y_train, flat(s.x_test), s.y_test, k=k),
                      "pixels_probe": pixels_probe,
                      "untrained_knn": knn_accuracy(u_train, s.y_train, u_test, s.y_test, k=k)},
        "collapse": {"trained": collapse_report(f_test), "untrained": collapse_report(u_test)},
    }
    sup = supervised_features(task, log)
    out["baselines"]["supervised_knn"] = (None if sup is None
                                          else knn_accuracy(sup[0], s.y_train, sup[1], s.y_test, k=k))
    b = out["baselines"]
    log(f"{task.config.method}: teacher {k}-NN {100 * out['knn_accuracy']:.2f}% (student "
        f"{100 * out['student_knn_accuracy']:.2f}%), probe {100 * out['probe_accuracy']:.2f}%; pixels "
        f"{k}-NN {100 * b['pixels_knn']:.2f}%, probe {100 * b['pixels_probe']:.2f}%; untrained {k}-NN "
        f"{100 * b['untrained_knn']:.2f}%"
        + (f"; supervised {k}-NN {100 * b['supervised_knn']:.2f}%" if b["supervised_knn"] is not None else ""))
    c = out["collapse"]
    log(f"test features: coding rate {c['trained']['coding_rate']:.1f} (untrained "
        f"{c['untrained']['coding_rate']:.1f}), effective rank {c['trained']['effective_rank']:.1f} of "
        f"{f_test.shape[1]}")
    if task.out_dir is not None:
        write_figure(task, os.path.join(task.out_dir, SELFSUP_FIGURE), f_test, {"trained": c["trained"]["spectrum"],
                                                                       "untrained": c["untrained"]["spectrum"]})
    out["time_s"] = time.perf_counter() - t0
    return out


def write_figure(task, path, f_test, spectra, *, n_images=4):
    """Attention maps of the teacher on the first test image of ``n_images`` classes, the
    t-SNE of the test features, the spectra."""
    from minicrate.measure.selfsup_plot import plot_selfsup_summary

    s = task.split
    picks = [int(np.flatnonzero(s.y_test == c)[0]) for c in range(min(n_images, s.num_classes))]
    maps = attention_of(task.teacher, task.config.backbone, s.x_test[picks])
    with writing(path, os.path.join(os.path.dirname(path), CHECKPOINT)):
        plot_selfsup_summary(path, images=s.x_test[picks], maps=maps, labels=s.y_test[picks],
                             embedding=embed_2d(f_test, seed=task.tc.seed), embedding_labels=s.y_test,
                             spectra=spectra, title=f"{task.config.method} on {task.tc.data}: teacher")
