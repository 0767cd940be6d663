"""Training a CRATE classifier: the recipe, the task for :func:`minicrate.training.loop.fit`.

One call, :func:`train`, runs the whole recipe through the shared loop::

    for each epoch e:                         (batch order: a function of (seed, e))
        for each batch b:                     (augmentation: a function of (seed, e, b))
            loss, g = loss_and_grads(params, x_b, y_b)      # minicrate.models.classifier, no autograd
            (warm-up + cosine lr, clipping, finiteness checks, optimiser: the loop)
        test accuracy, metrics.json, checkpoint.npz          (atomic)

Every random choice is a pure function of the seed and the position in the
run (epoch, batch), so ``resume=True`` continues *bit for bit* (see
:mod:`minicrate.training.loop`).

Determinism: on NumPy the same seed gives identical losses and parameters on
one machine (same BLAS and thread count).  CuPy/cuBLAS and torch on GPU may
reorder floating-point sums between runs, so losses agree only to rounding.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from minicrate.core import checkpoint as ckpt
from minicrate.core.backend import BACKENDS, get_backend, host_to, to_numpy
from minicrate.core.validate import check_int, check_keys, check_positive, describe, finite_checks
from minicrate.data.images import DATASETS
from minicrate.models.classifier import CRATEConfig, init_params, loss_and_grads, param_count, preset
from minicrate.training.epochs import EpochTask
from minicrate.training.loop import fit
from minicrate.training.optim import OPTIMIZERS
from minicrate.training.rundir import (  # noqa: F401  (older imports name them here)
    CHECKPOINT,
    CURVES,
    METRICS,
    TrainingDiverged,
    TrainingInterrupted,
    check_run_dir,
    checkpoint_path,
    limit_threads,
)

IMAGE_SIZES = {"digits": 8, "mnist": 28}


@dataclasses.dataclass
class TrainConfig:
    """How to train (the model's shape lives in :class:`~minicrate.models.classifier.CRATEConfig`).

    ``warmup_epochs`` may be fractional (the schedule is stepped per update)
    and is cut to ``epochs`` if longer.
    ``shift`` is the augmentation's largest random shift in pixels (0: off).
    ``clip`` is the global gradient-norm bound (``None``: no clipping).
    ``checkpoint_every`` adds mid-epoch checkpoints every that many steps.
    ``eval_every_epochs``: evaluate (and checkpoint) every that many epochs and after the last.
    ``adam_beta2``: AdamW's second-moment decay β₂ (β₁ is 0.9); other optimisers ignore it.

    Every field is checked on construction (and by ``dataclasses.replace``):
    a bad value raises ``ValueError``/``TypeError`` naming the field, what it
    got and what was expected.
    """

    data: str = "digits"
    test_size: int | None = None
    split_seed: int = 0
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    epochs: int = 40
    batch_size: int = 64
    warmup_epochs: float = 2.0
    min_lr: float = 0.0
    clip: float | None = 1.0
    shift: int = 1
    seed: int = 0
    backend: str = "numpy"
    eval_batch_size: int = 500
    checkpoint_every: int = 0
    eval_every_epochs: int = 1
    adam_beta2: float = 0.999

    def __post_init__(self):
        # Each field is checked and normalised (numbers to plain Python int/float, so the
        # config saves as JSON) here, so a bad value fails now, naming the field, instead
        # of somewhere inside train().
        self.data = _choice(self.data, "data", DATASETS)
        if self.test_size is not None:
            self.test_size = check_int(self.test_size, "test_size", minimum=1)
        self.split_seed = check_int(self.split_seed, "split_seed", minimum=0)
        self.optimizer = _choice(self.optimizer, "optimizer", OPTIMIZERS)
        self.lr = check_positive(self.lr, "lr")
        self.weight_decay = check_positive(self.weight_decay, "weight_decay", allow_zero=True)
        self.epochs = check_int(self.epochs, "epochs", minimum=1)
        self.batch_size = check_int(self.batch_size, "batch_size", minimum=1)
        self.warmup_epochs = check_positive(self.warmup_epochs, "warmup_epochs", allow_zero=True)
        self.min_lr = check_positive(self.min_lr, "min_lr", allow_zero=True)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be <= lr = {self.lr}, got {self.min_lr}")
        if self.clip is not None:
            self.clip = check_positive(self.clip, "clip")
        self.shift = check_int(self.shift, "shift", minimum=0)
        self.seed = check_int(self.seed, "seed", minimum=0)
        self.backend = _choice(self.backend, "backend", BACKENDS)
        self.eval_batch_size = check_int(self.eval_batch_size, "eval_batch_size", minimum=1)
        self.checkpoint_every = check_int(self.checkpoint_every, "checkpoint_every", minimum=0)
        self.eval_every_epochs = check_int(self.eval_every_epochs, "eval_every_epochs", minimum=1)
        self.adam_beta2 = check_positive(self.adam_beta2, "adam_beta2", allow_zero=True)  # a bool is refused
        if self.adam_beta2 >= 1.0:
            raise ValueError(f"adam_beta2 must be in [0, 1), got {self.adam_beta2!r}")


def _choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


# Recipes measured to reach the README's figures (benchmarks/train.py).
RECIPES = {
    "digits": (dict(preset="digits"), dict(data="digits", optimizer="adamw", lr=2e-3, weight_decay=0.05,
                                           epochs=40, batch_size=64, warmup_epochs=2, shift=0)),
    "mnist": (dict(preset="mnist"), dict(data="mnist", optimizer="adamw", lr=1e-3, weight_decay=0.05,
                                         epochs=40, batch_size=64, warmup_epochs=2, shift=2)),
}


def recipe(name, **train_overrides):
    """``(CRATEConfig, TrainConfig)`` of a named recipe (``RECIPES``)."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    model_part, train_part = RECIPES[name]
    return preset(model_part["preset"]), TrainConfig(**{**train_part, **train_overrides})


# -- evaluation ---------------------------------------------------------------
def evaluate(params, config: CRATEConfig, images, labels, *, batch_size=500, workers=None):
    """Accuracy and mean (label-smoothed) loss on host arrays, in batches, through the
    inference path (:func:`minicrate.models.classifier.predict`: no cache) with each batch
    split over the cores (:func:`minicrate.training.parallel.threads.predict`).

    Args:
        params: the model's parameters (any backend).
        config: its :class:`~minicrate.models.classifier.CRATEConfig`.
        images: ``(n, C, H, W)`` NumPy, n >= 1; labels ``(n,)`` integers.
        batch_size: images per forward pass (an integer >= 1).
        workers: chunks per batch (``None``: one per core on NumPy, else 1).
    Returns:
        ``{"accuracy", "loss", "predictions"}`` (predictions a NumPy array).
    """
    from minicrate.core.backend import device_of, namespace
    from minicrate.models.loss import cross_entropy_forward
    from minicrate.training.parallel.threads import predict

    if not isinstance(config, CRATEConfig):
        raise TypeError(f"config must be a CRATEConfig, got {type(config).__name__}")
    check_keys(params, ["head.W"], "params")
    _check_eval_data(images, labels)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    xp = namespace(params["head.W"])
    dtype, device = params["head.W"].dtype, device_of(params["head.W"])
    preds, total_loss = [], 0.0
    with finite_checks(False):
        for start in range(0, len(images), batch_size):
            xb = host_to(xp, images[start : start + batch_size], dtype, device)
            yb = host_to(xp, labels[start : start + batch_size], "int64", device)
            logits = predict(params, xb, config, workers=workers)
            loss, _ = cross_entropy_forward(logits, yb, smoothing=config.label_smoothing)
            total_loss += float(loss) * xb.shape[0]
            preds.append(to_numpy(xp.argmax(logits, axis=-1)))
    preds = np.concatenate(preds)
    return {
        "accuracy": float(np.mean(preds == np.asarray(labels))),
        "loss": total_loss / len(images),
        "predictions": preds,
    }


def _check_eval_data(images, labels):
    for name, x, ndim, what in (
        ("images", images, 4, "(n, C, H, W)"),
        ("labels", labels, 1, "(n,) integers"),
    ):
        if not (hasattr(x, "shape") and hasattr(x, "dtype")):
            raise TypeError(f"{name} must be a NumPy array {what}, got {describe(x)}")
        if x.ndim != ndim:
            raise ValueError(f"{name} must have shape {what}, got {describe(x)}")
    if len(images) == 0:
        raise ValueError(f"images must hold at least one image, got {describe(images)}")
    if len(labels) != len(images):
        raise ValueError(
            f"labels must have one entry per image ({len(images)}), got {describe(labels)}"
        )
    if not np.issubdtype(np.asarray(labels).dtype, np.integer):
        raise TypeError(f"labels must be integers, got {describe(labels)}")


def load_run(run_or_file, *, backend="numpy"):
    """``(params, model_config, extra)`` of the latest checkpoint of a run,
    with the parameters moved to ``backend``."""
    params, config, extra = ckpt.load(checkpoint_path(run_or_file), config_cls=CRATEConfig)
    ckpt.check_params(params, init_params(config, seed=0), source=os.fspath(run_or_file))
    xp = get_backend(backend)
    return {k: host_to(xp, v, v.dtype.name) for k, v in params.items()}, config, extra


# -- the task for minicrate.training.loop.fit ----------------------------------
class ClassifierTask(EpochTask):
    """Image classification: batch -> label-smoothed cross-entropy; test accuracy per epoch.

    Args:
        model_config: :class:`CRATEConfig`; train_config: :class:`TrainConfig`.
        workers: chunks per batch (``0``: one per usable core; see :func:`train`).
    """

    def __init__(self, model_config, train_config, *, workers=1):
        from minicrate.data import images as datasets
        from minicrate.training.parallel.threads import default_workers

        tc, mc = train_config, model_config
        split = datasets.load(tc.data, test_size=tc.test_size, seed=tc.split_seed)
        if (split.image_size, split.num_classes, split.x_train.shape[1]) != (
            mc.image_size, mc.num_classes, mc.channels,
        ):
            raise ValueError(
                f"model config expects {mc.channels}×{mc.image_size}×{mc.image_size} images and "
                f"{mc.num_classes} classes, but {tc.data!r} has {split.x_train.shape[1]}×"
                f"{split.image_size}×{split.image_size} and {split.num_classes}"
            )
        xp = get_backend(tc.backend)
        super().__init__(tc, split, xp)
        self.mc = mc
        self.workers = default_workers(xp) if workers == 0 else workers

    def init_params(self):
        return init_params(self.mc, seed=self.tc.seed, backend=self.xp, dtype=self.mc.dtype)

    def load_checkpoint(self, path):
        saved, _, extra = ckpt.load(path, expect_config=self.mc)
        ckpt.check_params(saved, init_params(self.mc, seed=0), source=path)
        return saved, extra

    def save_checkpoint(self, path, params, extra):
        ckpt.save(path, params, self.mc, extra=extra)

    def batch(self, step):
        """``{"idx": (b,), "x": (b, C, H, W), "y": (b,)}`` on the backend."""
        _, idx, x = self.images(step)
        return {"idx": idx, "x": host_to(self.xp, x, self.mc.dtype),
                "y": host_to(self.xp, self.split.y_train[idx], "int64")}

    def loss_and_grads(self, params, batch):
        from minicrate.training.parallel.threads import loss_and_grads as split_loss_and_grads

        if self.workers == 1:
            return loss_and_grads(params, batch["x"], batch["y"], self.mc)
        return split_loss_and_grads(params, batch["x"], batch["y"], self.mc, workers=self.workers)

    def new_running(self):
        return {"loss_sum": 0.0, "correct": 0, "seen": 0}

    def accumulate(self, running, loss, batch, logits):
        idx = batch["idx"]
        running["loss_sum"] += loss * len(idx)
        running["correct"] += int(np.sum(to_numpy(self.xp.argmax(logits, axis=-1)) == self.split.y_train[idx]))
        running["seen"] += len(idx)

    def evaluate(self, params, *, step, lr, running, final, period_s, wall_s):
        tc, split = self.tc, self.split
        test = evaluate(params, self.mc, split.x_test, split.y_test, batch_size=tc.eval_batch_size,
                        workers=self.workers)
        return {"epoch": step // self.steps_per_epoch, "step": step, "lr": lr,
                "train_loss": running["loss_sum"] / running["seen"],
                "train_accuracy": running["correct"] / running["seen"],
                "test_loss": test["loss"], "test_accuracy": test["accuracy"],
                "epoch_time_s": period_s, "wall_time_s": wall_s}

    def log_line(self, e):
        return (f"epoch {e['epoch']:>3}/{self.tc.epochs}  train loss {e['train_loss']:.4f}  "
                f"train acc {e['train_accuracy']:.4f}  test acc {e['test_accuracy']:.4f}  "
                f"({e['epoch_time_s']:.1f} s)")

    def metrics(self, status, message, history, step, wall_s):
        return {"status": status, "message": message, "model_config": dataclasses.asdict(self.mc),
                "train_config": dataclasses.asdict(self.tc), "param_count": param_count(self.mc),
                "n_train": self.n_train, "n_test": int(len(self.split.x_test)), "steps": step,
                "steps_per_epoch": self.steps_per_epoch, "wall_time_s": wall_s, "history": history,
                "test_accuracy": history[-1]["test_accuracy"] if history else None}

    def plot(self, history, path):
        from minicrate.measure.plotting import plot_curves

        name = "ViT" if self.mc.block == "transformer" else "CRATE"
        plot_curves(history, path, title=f"{name} on {self.tc.data} ({param_count(self.mc):,} parameters)")

    def result(self, params, history, step, metrics, status):
        return {"params": params, "history": history, "test_accuracy": metrics["test_accuracy"],
                "wall_time_s": metrics["wall_time_s"], "steps": step, "status": status,
                "n_test": metrics["n_test"]}


def train(
    model_config: CRATEConfig,
    train_config: TrainConfig,
    out_dir,
    *,
    resume=False,
    overwrite=False,
    progress=True,
    handle_signals=False,
    stop_after_steps=None,
    log=print,
    threads=1,
    workers=1,
):
    """Train (or resume training) a CRATE classifier; write the run directory.

    Args:
        model_config: the architecture.
        train_config: the recipe (:class:`TrainConfig`).
        out_dir: the run directory (created).
        resume: continue from ``out_dir/checkpoint.npz``; the model config and
            recipe must match the checkpoint's (``epochs`` may be raised,
            which re-shapes the remaining learning-rate schedule).
        overwrite: start again in a directory that holds a run (refused without it).
        progress: show a tqdm bar per epoch.
        handle_signals: on SIGINT/SIGTERM finish the current step, save a
            checkpoint and raise :class:`TrainingInterrupted` (the CLI does this).
        stop_after_steps: stop (with a checkpoint) once this many steps in
            total are done, as if interrupted -- used by tests.
        log: where per-epoch lines go.
        threads: NumPy BLAS threads during the run (:func:`limit_threads`;
            ``None`` leaves the library's setting).
        workers: split each batch over this many chunks computed at the same time
            (:func:`minicrate.training.parallel.threads.loss_and_grads`: worker processes on NumPy);
            ``0``: one per usable core.  Like ``threads`` it changes results only by
            rounding, and a resumed run continues bit for bit with the same value.
    Returns:
        a dict: ``params`` (on the backend), ``history`` (per epoch),
        ``test_accuracy``, ``wall_time_s``, ``steps``, ``status``, ``n_test``.
    Raises:
        TrainingDiverged: the loss or gradient norm was not finite at a step;
            the last checkpoint on disk is the last good state.
        TrainingInterrupted: a signal stopped the run (checkpoint written).
    """
    from minicrate.core.allocator import keep_freed_memory

    if not isinstance(model_config, CRATEConfig):
        raise TypeError(f"model_config must be a CRATEConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    out_dir = run_dir(out_dir)
    check_run_dir(out_dir, resume=resume, overwrite=overwrite)  # before loading any data
    if stop_after_steps is not None:
        stop_after_steps = check_int(stop_after_steps, "stop_after_steps", minimum=1)
    if threads is not None:
        threads = check_int(threads, "threads", minimum=0)
    workers = check_int(workers, "workers", minimum=0)
    size = IMAGE_SIZES.get(train_config.data)
    if size is not None and size != model_config.image_size:
        raise ValueError(
            f"model config expects {model_config.image_size}×{model_config.image_size} images, "
            f"but {train_config.data!r} has {size}×{size}"
        )
    with limit_threads(threads):
        task = ClassifierTask(model_config, train_config, workers=workers)
        keep_freed_memory()  # this process is ours for the run: reuse freed arrays (no page faults)
        return fit(task, train_config, out_dir, resume=resume, overwrite=overwrite, progress=progress,
                   handle_signals=handle_signals, stop_after_steps=stop_after_steps, log=log)


def run_dir(out_dir):
    """``out_dir`` as a path string; a clear error when it is not a name or is a file."""
    try:
        out_dir = os.fspath(out_dir)
    except TypeError:
        raise TypeError(f"out_dir must be a directory name, got {describe(out_dir)}") from None
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {out_dir!r} is a file; the run needs a directory")
    return out_dir
