"""Training CRATE with the hand-written backward: the loop, evaluation, resume.

One call, :func:`train`, runs the whole recipe::

    for each epoch e:                         (batch order: a function of (seed, e))
        for each batch b:                     (augmentation: a function of (seed, e, b))
            lr      = warmup_cosine(step)
            loss, g = loss_and_grads(params, x_b, y_b)      # minicrate.models.classifier, no autograd
            stop if loss or ‖g‖ is not finite (the last good checkpoint stays)
            g       = clip_by_global_norm(g)                 # optional
            params  = optimizer.step(params, g, lr)
        test accuracy, metrics.json, checkpoint.npz          (atomic)

Every random choice is a pure function of the seed and the position in the
run (epoch, batch), and the checkpoint stores the parameters, the optimiser
state and that position, so ``resume=True`` continues *bit for bit* as if the
run had never stopped -- after a clean stop, a Ctrl-C (SIGINT/SIGTERM save a
checkpoint between two steps and exit), or a hard kill (the run restarts from
the last checkpoint written: every epoch, and every ``checkpoint_every``
steps if set).

Determinism: on NumPy the same seed gives identical losses and parameters on
one machine (same BLAS and thread count).  Other backends: torch on CPU is
deterministic for these operations in practice; CuPy/cuBLAS and torch on GPU
may reorder floating-point sums between runs, so losses agree only to
rounding (a few ulps per step, which can grow over a long run).

A run directory holds ``checkpoint.npz`` (the latest state),
``metrics.json`` (configs, per-epoch history, wall time, status) and
``curves.png`` (loss and accuracy per epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time

import numpy as np

from minicrate.core import checkpoint as ckpt
from minicrate.core.backend import BACKENDS, get_backend, host_to, to_numpy
from minicrate.core.validate import check_int, check_keys, check_positive, describe, finite_checks
from minicrate.data.augment import batch_rng, random_shift
from minicrate.data.images import DATASETS
from minicrate.models.classifier import CRATEConfig, forward, init_params, loss_and_grads, param_count, preset
from minicrate.training.optim import OPTIMIZERS, clip_by_global_norm, global_norm, make_optimizer
from minicrate.training.schedule import warmup_cosine

CHECKPOINT = "checkpoint.npz"
METRICS = "metrics.json"
CURVES = "curves.png"
IMAGE_SIZES = {"digits": 8, "mnist": 28}


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written between two steps."""


@dataclasses.dataclass
class TrainConfig:
    """How to train (the model's shape lives in :class:`~minicrate.models.classifier.CRATEConfig`).

    ``warmup_epochs`` may be fractional (the schedule is stepped per update)
    and is cut to ``epochs`` if longer.
    ``shift`` is the augmentation's largest random shift in pixels (0: off).
    ``clip`` is the global gradient-norm bound (``None``: no clipping).
    ``checkpoint_every`` adds mid-epoch checkpoints every that many steps.

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


def _choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


# Recipes measured to reach the README's figures (benchmarks/train.py).
RECIPES = {
    "digits": (
        dict(preset="digits"),
        dict(
            data="digits",
            optimizer="adamw",
            lr=2e-3,
            weight_decay=0.05,
            epochs=40,
            batch_size=64,
            warmup_epochs=2,
            shift=0,
        ),
    ),
    "mnist": (
        dict(preset="mnist"),
        dict(
            data="mnist",
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.05,
            epochs=40,
            batch_size=64,
            warmup_epochs=2,
            shift=2,
        ),
    ),
}


def recipe(name, **train_overrides):
    """``(CRATEConfig, TrainConfig)`` of a named recipe (``RECIPES``)."""
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {name!r}")
    model_part, train_part = RECIPES[name]
    return preset(model_part["preset"]), TrainConfig(**{**train_part, **train_overrides})


@contextlib.contextmanager
def limit_threads(n=1):
    """Limit NumPy's BLAS threads (``threadpoolctl``, installed with scikit-learn).

    CRATE's matrices here are tiny (d ≤ 128, N ≤ 50), so one thread per
    process is fastest; several threads mostly wait on each other, badly so on
    a shared machine.  ``n=None`` or ``0`` leaves the setting alone, and
    without ``threadpoolctl`` this does nothing.
    """
    if not n:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(int(n)):
        yield


# -- evaluation ---------------------------------------------------------------
def evaluate(params, config: CRATEConfig, images, labels, *, batch_size=500):
    """Accuracy and mean (label-smoothed) loss on host arrays, in batches.

    Args:
        params: the model's parameters (any backend).
        config: its :class:`~minicrate.models.classifier.CRATEConfig`.
        images: ``(n, C, H, W)`` NumPy, n >= 1; labels ``(n,)`` integers.
        batch_size: images per forward pass (an integer >= 1).
    Returns:
        ``{"accuracy", "loss", "predictions"}`` (predictions a NumPy array).
    """
    from minicrate.core.backend import device_of, namespace
    from minicrate.models.loss import cross_entropy_forward

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
            logits, _ = forward(params, xb, config)
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


# -- run directory ------------------------------------------------------------
def checkpoint_path(run_or_file):
    """A checkpoint file given either itself or a run directory."""
    path = os.fspath(run_or_file)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (give a run directory or a .npz file)")
    return path


def load_run(run_or_file, *, backend="numpy"):
    """``(params, model_config, extra)`` of the latest checkpoint of a run,
    with the parameters moved to ``backend``."""
    params, config, extra = ckpt.load(checkpoint_path(run_or_file))
    ckpt.check_params(params, init_params(config, seed=0), source=os.fspath(run_or_file))
    xp = get_backend(backend)
    return {k: host_to(xp, v, v.dtype.name) for k, v in params.items()}, config, extra


def _write_json(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


class _Signals:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps
    (a second signal interrupts at once).  A no-op off the main thread."""

    def __init__(self, enabled):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if self.enabled:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


# -- the loop -----------------------------------------------------------------
def train(
    model_config: CRATEConfig,
    train_config: TrainConfig,
    out_dir,
    *,
    resume=False,
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
        ``test_accuracy``, ``wall_time_s``, ``steps``, ``status``.
    Raises:
        TrainingDiverged: the loss or gradient norm was not finite at a step;
            the last checkpoint on disk is the last good state.
        TrainingInterrupted: a signal stopped the run (checkpoint written).
    """
    if not isinstance(model_config, CRATEConfig):
        raise TypeError(f"model_config must be a CRATEConfig, got {type(model_config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise TypeError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    try:
        out_dir = os.fspath(out_dir)
    except TypeError:
        raise TypeError(f"out_dir must be a directory name, got {describe(out_dir)}") from None
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {out_dir!r} is a file; the run needs a directory")
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
        return _train(
            model_config,
            train_config,
            out_dir,
            resume=resume,
            progress=progress,
            handle_signals=handle_signals,
            stop_after_steps=stop_after_steps,
            workers=workers,
            log=log,
        )


def _train(
    model_config, train_config, out_dir, *, resume, progress, handle_signals, stop_after_steps, log,
    workers=1,
):
    from minicrate.core.allocator import keep_freed_memory
    from minicrate.data import images as datasets
    from minicrate.training.parallel.threads import default_workers
    from minicrate.training.parallel.threads import loss_and_grads as split_loss_and_grads

    keep_freed_memory()  # this process is ours for the run: reuse freed arrays (no page faults)

    tc, mc = train_config, model_config
    os.makedirs(out_dir, exist_ok=True)
    ck_file = os.path.join(out_dir, CHECKPOINT)
    split = datasets.load(tc.data, test_size=tc.test_size, seed=tc.split_seed)
    if (split.image_size, split.num_classes, split.x_train.shape[1]) != (
        mc.image_size,
        mc.num_classes,
        mc.channels,
    ):
        raise ValueError(
            f"model config expects {mc.channels}×{mc.image_size}×{mc.image_size} images and "
            f"{mc.num_classes} classes, but {tc.data!r} has {split.x_train.shape[1]}×"
            f"{split.image_size}×{split.image_size} and {split.num_classes}"
        )
    xp = get_backend(tc.backend)
    dtype = mc.dtype
    workers = default_workers(xp) if workers == 0 else workers
    n_train = len(split.x_train)
    steps_per_epoch = -(-n_train // tc.batch_size)
    total_steps = tc.epochs * steps_per_epoch
    # A warm-up longer than the run (e.g. a recipe cut short with --epochs 1) is cut to it.
    warmup_steps = int(round(min(tc.warmup_epochs, tc.epochs) * steps_per_epoch))
    background = (0.0 - split.mean) / split.std  # a black pixel after standardising

    params = init_params(mc, seed=tc.seed, backend=xp, dtype=dtype)
    decay = None  # decoupled weight decay on every parameter, as the official code does
    optimizer = make_optimizer(tc.optimizer, tc.lr, weight_decay=tc.weight_decay, decay=decay)
    position = {"epoch": 0, "batch": 0, "step": 0}
    running = {"loss_sum": 0.0, "correct": 0, "seen": 0}
    history, wall_before = [], 0.0

    if resume:
        if not os.path.exists(ck_file):
            raise FileNotFoundError(f"--resume: no checkpoint at {ck_file!r}")
        saved, saved_config, extra = ckpt.load(ck_file, expect_config=mc)
        ckpt.check_params(saved, params, source=ck_file)
        _check_resumable(extra.get("train_config", {}), tc, ck_file)
        params = {k: host_to(xp, v, v.dtype.name) for k, v in saved.items()}
        optimizer.load_state_dict(extra["optimizer"], like=params)
        position = {k: int(extra["position"][k]) for k in ("epoch", "batch", "step")}
        running = dict(extra["running"])
        history = list(extra["history"])
        wall_before = float(extra["wall_time_s"])
        log(
            f"resumed {ck_file} at epoch "
            f"{position['epoch'] + position['batch'] / steps_per_epoch:.2f} "
            f"(step {position['step']})"
        )

    def save_state(status):
        extra = {
            "train_config": dataclasses.asdict(tc),
            "optimizer": optimizer.state_dict(),
            "position": dict(position),
            "running": dict(running),
            "history": history,
            "wall_time_s": wall_before + (time.perf_counter() - t0),
            "status": status,
        }
        ckpt.save(ck_file, params, mc, extra=extra)

    def write_metrics(status, message=None):
        wall = wall_before + (time.perf_counter() - t0)
        metrics = {
            "status": status,
            "message": message,
            "model_config": dataclasses.asdict(mc),
            "train_config": dataclasses.asdict(tc),
            "param_count": param_count(mc),
            "n_train": n_train,
            "n_test": int(len(split.x_test)),
            "steps": position["step"],
            "steps_per_epoch": steps_per_epoch,
            "wall_time_s": wall,
            "history": history,
            "test_accuracy": history[-1]["test_accuracy"] if history else None,
        }
        _write_json(os.path.join(out_dir, METRICS), metrics)
        return metrics

    def plot():
        if history:
            from minicrate.measure.plotting import plot_curves

            plot_curves(
                history,
                os.path.join(out_dir, CURVES),
                title=f"CRATE on {tc.data} ({param_count(mc):,} parameters)",
            )

    bar_factory = _progress_factory(progress)
    t0 = time.perf_counter()
    status = "completed"
    with _Signals(handle_signals) as signals, finite_checks(False):
        while position["epoch"] < tc.epochs:
            epoch = position["epoch"]
            epoch_start = time.perf_counter()
            stop = False
            order = np.random.default_rng([tc.seed, epoch]).permutation(n_train)
            bar = bar_factory(
                total=steps_per_epoch,
                initial=position["batch"],
                desc=f"epoch {epoch + 1}/{tc.epochs}",
            )
            while position["batch"] < steps_per_epoch:
                b = position["batch"]
                idx = order[b * tc.batch_size : (b + 1) * tc.batch_size]
                x = split.x_train[idx]
                if tc.shift:
                    x = random_shift(x, tc.shift, batch_rng(tc.seed, epoch, b), fill=background)
                xb = host_to(xp, x, dtype)
                yb = host_to(xp, split.y_train[idx], "int64")
                lr = warmup_cosine(
                    position["step"],
                    total_steps=total_steps,
                    warmup_steps=warmup_steps,
                    base_lr=tc.lr,
                    min_lr=tc.min_lr,
                )
                if workers == 1:
                    loss, grads, logits = loss_and_grads(params, xb, yb, mc)
                else:
                    loss, grads, logits = split_loss_and_grads(params, xb, yb, mc, workers=workers)
                where = (
                    f"step {position['step'] + 1} (epoch {epoch + 1}, batch {b + 1}/"
                    f"{steps_per_epoch})"
                )
                if not math.isfinite(loss):
                    _diverged(f"loss is {loss} at {where}", ck_file, write_metrics, plot, bar)
                if tc.clip is not None:
                    grads, gnorm = clip_by_global_norm(grads, tc.clip)
                else:
                    gnorm = global_norm(grads)
                if not math.isfinite(gnorm):
                    _diverged(
                        f"gradient norm is {gnorm} at {where}", ck_file, write_metrics, plot, bar
                    )
                optimizer.step(params, grads, lr=lr)
                running["loss_sum"] += loss * len(idx)
                running["correct"] += int(
                    np.sum(to_numpy(xp.argmax(logits, axis=-1)) == split.y_train[idx])
                )
                running["seen"] += len(idx)
                position["batch"] += 1
                position["step"] += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                stop = signals.received or (
                    stop_after_steps is not None and position["step"] >= stop_after_steps
                )
                every = tc.checkpoint_every and position["step"] % tc.checkpoint_every == 0
                if (stop or every) and position["batch"] < steps_per_epoch:
                    save_state("running")
                if stop:
                    bar.close()
                    if position["batch"] >= steps_per_epoch:
                        break  # finish the epoch's bookkeeping first
                    return _stopped(signals, write_metrics, plot, position, params, history, log)
            bar.close()
            test = evaluate(params, mc, split.x_test, split.y_test, batch_size=tc.eval_batch_size)
            history.append(
                {
                    "epoch": epoch + 1,
                    "step": position["step"],
                    "lr": lr,
                    "train_loss": running["loss_sum"] / running["seen"],
                    "train_accuracy": running["correct"] / running["seen"],
                    "test_loss": test["loss"],
                    "test_accuracy": test["accuracy"],
                    "epoch_time_s": time.perf_counter() - epoch_start,
                    "wall_time_s": wall_before + (time.perf_counter() - t0),
                }
            )
            position.update(epoch=epoch + 1, batch=0)
            running = {"loss_sum": 0.0, "correct": 0, "seen": 0}
            last = history[-1]
            log(
                f"epoch {epoch + 1:>3}/{tc.epochs}  train loss {last['train_loss']:.4f}  "
                f"train acc {last['train_accuracy']:.4f}  test acc {last['test_accuracy']:.4f}  "
                f"({last['epoch_time_s']:.1f} s)"
            )
            done = position["epoch"] >= tc.epochs
            save_state("completed" if done else "running")
            write_metrics("completed" if done else "running")
            if stop and not done:
                return _stopped(signals, write_metrics, plot, position, params, history, log)
    plot()
    metrics = write_metrics(status)
    return {
        "params": params,
        "history": history,
        "test_accuracy": metrics["test_accuracy"],
        "wall_time_s": metrics["wall_time_s"],
        "steps": position["step"],
        "status": status,
        "n_test": metrics["n_test"],
    }


def _stopped(signals, write_metrics, plot, position, params, history, log):
    why = f"signal {signals.received}" if signals.received else "stop_after_steps"
    message = (
        f"stopped by {why} after step {position['step']}; checkpoint saved, continue with --resume"
    )
    metrics = write_metrics("interrupted", message)
    plot()
    if signals.received:
        raise TrainingInterrupted(message)
    log(message)
    return {
        "params": params,
        "history": history,
        "test_accuracy": metrics["test_accuracy"],
        "wall_time_s": metrics["wall_time_s"],
        "steps": position["step"],
        "status": "interrupted",
        "n_test": metrics["n_test"],
    }


def _diverged(what, ck_file, write_metrics, plot, bar):
    bar.close()
    kept = (
        f"the last good checkpoint {ck_file!r} is kept"
        if os.path.exists(ck_file)
        else "no checkpoint had been written yet"
    )
    message = f"training stopped: {what}; {kept}. Try a lower --lr, --clip, or float64."
    write_metrics("diverged", message)
    plot()
    raise TrainingDiverged(message)


_RESUME_FREE = {"epochs", "backend", "eval_batch_size", "checkpoint_every"}


def _check_resumable(saved, current, source):
    now = dataclasses.asdict(current)
    diffs = [
        f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}"
        for k in now
        if k not in _RESUME_FREE and saved.get(k) != now[k]
    ]
    if diffs:
        raise ckpt.CheckpointError(
            f"{source} was trained with a different recipe; resuming would not continue the same "
            "run (" + "; ".join(diffs) + ")"
        )


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def _progress_factory(progress):
    if not progress:
        return lambda **kw: _NoBar()
    from tqdm.auto import tqdm

    return lambda **kw: tqdm(leave=False, unit="step", dynamic_ncols=True, **kw)
