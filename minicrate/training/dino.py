r"""Self-supervised training (DINO, SimDINO): the recipe and the task for the one loop.

Each step (:class:`SelfSupTask` inside :func:`minicrate.training.loop.fit`)::

    views    = multi_crop(batch)                      G global + L local views (seed, epoch, batch)
    student  = selfsup_forward(params, all views)     (V, B, m), with a cache
    teacher  = selfsup_forward(teacher, global views) (G, B, m), no cache, no gradient
    loss, dS = dino or simdino loss and its backward  (minicrate.models.selfsup_loss)
    grads    = selfsup_backward(dS)                   the student's only
    (the loop: clipping, optimiser step)
    after_step: teacher <- m_s teacher + (1 - m_s) student,  m_s = 1 - (1 - m_0)(1 + cos(pi s/S))/2
                DINO's centre <- c_m centre + (1 - c_m) mean(teacher logits)

The teacher and DINO's centre are part of the run's state: the checkpoint holds them
(``teacher.*``, ``dino.center``) beside the student, so ``resume`` is bit for bit.
After each epoch: the teacher's 20-NN accuracy and the coding rate of its test
features; at the end the probe, the baselines and the figure
(:mod:`minicrate.training.dino_eval`).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from minicrate.core import checkpoint as ckpt
from minicrate.core.backend import device_of, get_backend, host_to, to_numpy
from minicrate.core.validate import check_int, check_positive
from minicrate.data.views import ViewSpec, multi_crop
from minicrate.measure.knn import collapse_report, knn_accuracy
from minicrate.models.classifier import param_count, preset
from minicrate.models.selfsup import (
    METHODS,
    SelfSupConfig,
    features,
    frozen_features,
    init_selfsup_params,
    selfsup_backward,
    selfsup_forward,
    selfsup_predict,
)
from minicrate.models.selfsup_loss import (
    SIMDINO_EPS,
    dino_loss_backward,
    dino_loss_forward,
    simdino_gamma,
    simdino_loss_backward,
    simdino_loss_forward,
)
from minicrate.training.classifier import TrainConfig
from minicrate.training.compare import transformer_twin
from minicrate.training.epochs import EpochTask
from minicrate.training.parallel.threads import default_workers, map_chunks, split_map

TEACHER, CENTER = "teacher.", "dino.center"


@dataclasses.dataclass
class SelfSupRecipe:
    """What self-distillation adds to a :class:`TrainConfig`.

    ``momentum``: the teacher's EMA momentum m₀ at the start (cosine to 1 at the end);
    ``center_momentum``, ``student_temp``, ``teacher_temp`` (after a linear warm-up from
    ``warmup_teacher_temp`` over ``warmup_teacher_epochs``): DINO's; ``gamma`` (``None``:
    :func:`~minicrate.models.selfsup_loss.simdino_gamma` of the width and batch) and
    ``eps``: SimDINO's coding-rate term; ``knn_k``: neighbours of the k-NN evaluation;
    ``supervised_epochs``: the supervised baseline's run (0: skip it).
    """

    method: str = "simdino"
    views: ViewSpec = dataclasses.field(default_factory=ViewSpec)
    momentum: float = 0.996
    center_momentum: float = 0.9
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_epochs: float = 10.0
    gamma: float | None = None
    eps: float = SIMDINO_EPS
    knn_k: int = 20
    supervised_epochs: int = 20

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.views, dict):
            self.views = ViewSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.views.items()})
        if not isinstance(self.views, ViewSpec):
            raise TypeError(f"views must be a ViewSpec, got {type(self.views).__name__}")
        for name in ("momentum", "center_momentum"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("student_temp", "teacher_temp", "warmup_teacher_temp", "eps"):
            setattr(self, name, check_positive(getattr(self, name), name))
        self.warmup_teacher_epochs = check_positive(self.warmup_teacher_epochs, "warmup_teacher_epochs",
                                                    allow_zero=True)
        if self.gamma is not None:
            self.gamma = check_positive(self.gamma, "gamma", allow_zero=True)
        self.knn_k = check_int(self.knn_k, "knn_k", minimum=1)
        self.supervised_epochs = check_int(self.supervised_epochs, "supervised_epochs", minimum=0)


# Views with most of the digit in every crop: MNIST's digit fills the middle 20×20 of 28×28, and a
# crop of 15 % of the image is often background only (measured: 84.5 % 20-NN at epoch 7 against
# 81.7 % with local crops of 0.15-0.45; benchmarks/README.md has every try).
MILD_VIEWS = ViewSpec(global_scale=(0.6, 1.0), local_scale=(0.3, 0.6), max_rotation=10.0)

# benchmarks/selfsup.py runs these (figures in benchmarks/README.md).  Chosen by 15-epoch tries on
# MNIST-5k: mean pooling over the class token (87.1 % against 79.5 % 20-NN at epoch 19 of 50),
# lr 1e-2 over 2e-3 (+4.1 points),
# teacher momentum 0.99 over 0.996 (+2.8) and gamma 0.01 over the released code's 1/32 (+0.9;
# 0.003 lets the features shrink towards collapse, 82.6 %).
_TRAIN = dict(optimizer="adamw", lr=1e-2, weight_decay=0.04, batch_size=64, warmup_epochs=5, shift=0, clip=3.0)
_RECIPE = dict(views=MILD_VIEWS, momentum=0.99, gamma=0.01, warmup_teacher_epochs=10)
SELFSUP_RECIPES = {
    "mnist": dict(backbone=dict(preset="mnist", pool="mean"),
                  head=dict(hidden_dim=256, bottleneck_dim=64, out_dim=1024),
                  train=dict(_TRAIN, data="mnist", epochs=75), recipe=dict(_RECIPE, supervised_epochs=20)),
    "digits": dict(backbone=dict(preset="digits", pool="mean"),
                   head=dict(hidden_dim=128, bottleneck_dim=32, out_dim=256),
                   train=dict(_TRAIN, data="digits", epochs=60), recipe=dict(_RECIPE, supervised_epochs=40)),
}


def selfsup_recipe(data, method="simdino", *, block="crate", **train_overrides):
    """``(SelfSupConfig, TrainConfig, SelfSupRecipe)`` of a named recipe; ``block="transformer"``
    swaps the CRATE backbone for its parameter-matched transformer twin
    (:func:`minicrate.training.compare.transformer_twin`)."""
    if data not in SELFSUP_RECIPES:
        raise ValueError(f"data must be one of {sorted(SELFSUP_RECIPES)}, got {data!r}")
    if block not in ("crate", "transformer"):
        raise ValueError(f"block must be 'crate' or 'transformer', got {block!r}")
    r = SELFSUP_RECIPES[data]
    backbone = dict(r["backbone"])
    backbone = preset(backbone.pop("preset"), **backbone)
    if block == "transformer":  # the ViT with CRATE's parameter count, as `compare` builds it
        backbone = transformer_twin(backbone, param_count)
    config = SelfSupConfig(backbone=backbone, method=method, **r["head"])
    return config, TrainConfig(**{**r["train"], **train_overrides}), SelfSupRecipe(method=method, **r["recipe"])


def ema_update(teacher, student, momentum):
    """teacher ← m·teacher + (1 − m)·student for every key of the teacher, in place; the
    student (and its gradients) are read only."""
    for k in teacher:
        teacher[k] = momentum * teacher[k] + (1.0 - momentum) * student[k]
    return teacher


def teacher_momentum(step, total_steps, start):
    """DINO's cosine schedule from ``start`` at step 0 to 1 at the last step."""
    return 1.0 - (1.0 - start) * (math.cos(math.pi * step / max(total_steps, 1)) + 1.0) / 2.0


def teacher_temperature(epoch_float, recipe: SelfSupRecipe):
    """τ_t: linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up epochs."""
    if epoch_float >= recipe.warmup_teacher_epochs:
        return recipe.teacher_temp
    t = epoch_float / recipe.warmup_teacher_epochs
    return recipe.warmup_teacher_temp + t * (recipe.teacher_temp - recipe.warmup_teacher_temp)


def json_ready(d):
    """``d`` as it reads back from JSON (tuples become lists), so saved and current recipes compare."""
    return json.loads(json.dumps(d))


class SelfSupTask(EpochTask):
    """DINO or SimDINO: the student learns from an EMA teacher; k-NN accuracy per epoch."""

    def __init__(self, config: SelfSupConfig, train_config: TrainConfig, recipe: SelfSupRecipe, *,
                 out_dir=None, workers=1):
        from minicrate.data import images as datasets

        if config.method != recipe.method:
            raise ValueError(f"config.method {config.method!r} and recipe.method {recipe.method!r} differ")
        tc = train_config
        split = datasets.load(tc.data, test_size=tc.test_size, seed=tc.split_seed)
        bb = config.backbone
        if (split.image_size, split.x_train.shape[1]) != (bb.image_size, bb.channels):
            raise ValueError(f"the backbone expects {bb.channels}×{bb.image_size}×{bb.image_size} images, but "
                             f"{tc.data!r} has {split.x_train.shape[1]}×{split.image_size}×{split.image_size}")
        super().__init__(tc, split, get_backend(tc.backend))
        self.config, self.recipe = config, recipe
        self.gamma = (recipe.gamma if recipe.gamma is not None
                      else simdino_gamma(config.bottleneck_dim, tc.batch_size))
        self.teacher, self.center, self.pending_center = None, None, None
        self.final, self.out_dir = None, out_dir  # the figure and the supervised baseline go there
        self.workers = default_workers(self.xp) if workers == 0 else check_int(workers, "workers", minimum=1)

    # -- state ---------------------------------------------------------------------
    def config_dict(self):
        return json_ready({**dataclasses.asdict(self.tc), "selfsup": dataclasses.asdict(self.recipe),
                           "gamma_used": self.gamma})

    def init_params(self):
        params = init_selfsup_params(self.config, seed=self.tc.seed, backend=self.xp)
        self.teacher = {k: v + 0.0 for k, v in params.items()}  # a copy: the teacher starts as the student
        ref = params["head.ln_gamma"]
        self.center = self.xp.zeros((self.config.output_dim,), dtype=ref.dtype, device=device_of(ref))
        return params

    def save_checkpoint(self, path, params, extra):
        arrays = {**params, **{TEACHER + k: v for k, v in self.teacher.items()}, CENTER: self.center}
        ckpt.save(path, arrays, None, extra={**extra, "selfsup_config": self.config.to_dict()})

    def load_checkpoint(self, path):
        arrays, _, extra = ckpt.load(path)
        saved = extra.get("selfsup_config")
        if saved is None:
            raise ckpt.CheckpointError(f"{path} is not a self-supervised checkpoint (no selfsup_config)")
        ckpt.check_config(saved, self.config.to_dict(), source=path)
        student = {k: v for k, v in arrays.items() if not k.startswith(TEACHER) and k != CENTER}
        reference = init_selfsup_params(self.config, seed=0)
        ckpt.check_params(student, reference, source=path)
        teacher = {k[len(TEACHER):]: v for k, v in arrays.items() if k.startswith(TEACHER)}
        ckpt.check_params(teacher, reference, source=f"{path} (teacher)")
        if CENTER not in arrays or arrays[CENTER].shape != (self.config.output_dim,):
            raise ckpt.CheckpointError(f"{path}: entry {CENTER!r} is missing or has the wrong shape")
        self.teacher = {k: host_to(self.xp, v, v.dtype.name) for k, v in teacher.items()}
        self.center = host_to(self.xp, arrays[CENTER], arrays[CENTER].dtype.name)  # resume: its saved state
        return student, extra

    # -- one step ----------------------------------------------------------------
    def batch(self, step):
        """``{"idx": (B,), "x": (V·B, C, H, W)}``: the views stacked, globals first."""
        epoch, idx, x = self.images(step)
        rng = np.random.default_rng([self.tc.seed, epoch, self.position(step)[1], 0xD1])
        views = multi_crop(x, rng, self.recipe.views, fill=self.background)
        V, B = views.shape[:2]
        return {"idx": idx, "step": int(step), "x": host_to(self.xp, views.reshape(V * B, *x.shape[1:]),
                                                                 self.config.backbone.dtype)}

    def loss_and_grads(self, params, batch):
        spec, xp = self.recipe.views, self.xp
        V, G = spec.n_views, spec.n_global
        x = batch["x"]
        B = x.shape[0] // V
        out, caches = self.forward(params, x)
        # the teacher takes no gradient: the inference path, split over worker processes on NumPy
        t_out = split_map(selfsup_predict, self.teacher, (x[: G * B, ...],), self.config, workers=self.workers)
        S, T = xp.reshape(out, (V, B, -1)), xp.reshape(t_out, (G, B, -1))
        if self.config.method == "dino":
            tau_t = teacher_temperature(batch["step"] / self.steps_per_epoch, self.recipe)
            loss, lc = dino_loss_forward(S, T, self.center, student_temp=self.recipe.student_temp,
                                         teacher_temp=tau_t)
            dS = dino_loss_backward(1.0, lc)
            self.pending_center = xp.mean(t_out, axis=0)
            aux = {"rate": math.nan}
        else:
            loss, lc = simdino_loss_forward(S, T, gamma=self.gamma, eps=self.recipe.eps)
            dS = simdino_loss_backward(1.0, lc)
            aux = {"rate": float(lc["rate"])}
        return float(loss), self.backward(xp.reshape(dS, (V * B, -1)), caches), aux

    def forward(self, params, x):
        """``selfsup_forward`` over ``self.workers`` chunks of the images in parallel threads
        (:func:`minicrate.training.parallel.threads.map_chunks`): ``(out, [(slice, cache)])``."""
        parts = map_chunks(lambda s: (s, selfsup_forward(params, x[s, ...], self.config)), x.shape[0],
                           self.workers)
        return self.xp.concat([out for _, (out, _) in parts], axis=0), [(s, c) for s, (_, c) in parts]

    def backward(self, dout, caches):
        """The chunks' backwards in parallel; their gradients summed in chunk order (the loss's
        gradient already carries every scale, so the sum is exact up to rounding)."""
        def one(part):  # map_chunks hands each thread slice(i, i + 1): chunk i
            rows, cache = caches[part.start]
            return selfsup_backward(dout[rows, ...], cache)

        parts = map_chunks(one, len(caches), len(caches))
        grads = parts[0]
        for more in parts[1:]:
            grads = {k: g + more[k] for k, g in grads.items()}
        return grads

    def after_step(self, params, step):
        ema_update(self.teacher, params, teacher_momentum(step, self.total_steps, self.recipe.momentum))
        if self.pending_center is not None:
            m = self.recipe.center_momentum
            self.center = m * self.center + (1.0 - m) * self.pending_center
            self.pending_center = None

    def new_running(self):
        return {"loss_sum": 0.0, "rate_sum": 0.0, "seen": 0}

    def accumulate(self, running, loss, batch, aux):
        n = len(batch["idx"])
        running["loss_sum"] += loss * n
        running["rate_sum"] += (0.0 if math.isnan(aux["rate"]) else aux["rate"]) * n
        running["seen"] += n

    # -- evaluation ----------------------------------------------------------------
    def features(self, params):
        """Frozen backbone features of the train and test split (host arrays)."""
        def split(p, x, config):  # each batch split over the workers (the inference path)
            return split_map(features, p, (x,), config, workers=self.workers)

        def frozen(images):
            return to_numpy(frozen_features(params, images, self.config.backbone,
                                            batch_size=self.tc.eval_batch_size, forward=split))

        return frozen(self.split.x_train), frozen(self.split.x_test)

    def evaluate(self, params, *, step, lr, running, final, period_s, wall_s):
        f_train, f_test = self.features(self.teacher)
        s = self.split
        knn = knn_accuracy(f_train, s.y_train, f_test, s.y_test, k=self.recipe.knn_k)
        return {"epoch": step // self.steps_per_epoch, "step": step, "lr": lr,
                "train_loss": running["loss_sum"] / running["seen"],
                "train_rate": running["rate_sum"] / running["seen"] if self.config.method == "simdino" else None,
                "knn_accuracy": knn, "test_feature_rate": collapse_report(f_test)["coding_rate"],
                "epoch_time_s": period_s, "wall_time_s": wall_s}

    def log_line(self, e):
        rate = f"  R(batch) {e['train_rate']:.2f}" if e.get("train_rate") is not None else ""
        return (f"epoch {e['epoch']:>3}/{self.tc.epochs}  loss {e['train_loss']:.4f}{rate}  teacher "
                f"{self.recipe.knn_k}-NN {100 * e['knn_accuracy']:.2f}%  R(test features) "
                f"{e['test_feature_rate']:.1f}  ({e['epoch_time_s']:.1f} s)")

    def finish(self, params, log):
        from minicrate.training.dino_eval import final_evaluation

        self.final = final_evaluation(self, params, log)

    def metrics(self, status, message, history, step, wall_s):
        final = self.final or {}
        return {"status": status, "message": message, "kind": self.config.method,
                "model_config": self.config.to_dict(), "train_config": self.config_dict(),
                "n_train": self.n_train, "n_test": int(len(self.split.x_test)), "steps": step,
                "steps_per_epoch": self.steps_per_epoch, "wall_time_s": wall_s, "history": history,
                "loss": [h["train_loss"] for h in history],
                "knn_accuracy": final.get("knn_accuracy", history[-1]["knn_accuracy"] if history else None),
                "probe_accuracy": final.get("probe_accuracy"), "baselines": final.get("baselines"),
                "collapse": final.get("collapse"), "student_knn_accuracy": final.get("student_knn_accuracy")}

    def plot(self, history, path):
        from minicrate.measure.selfsup_plot import plot_selfsup_curves

        plot_selfsup_curves(history, path, title=f"{self.config.method} on {self.tc.data}")

    def result(self, params, history, step, metrics, status):
        return {"params": params, "teacher": self.teacher, "history": history, "metrics": metrics,
                "knn_accuracy": metrics["knn_accuracy"], "probe_accuracy": metrics["probe_accuracy"],
                "wall_time_s": metrics["wall_time_s"], "steps": step, "status": status}


def train_dino(config: SelfSupConfig, train_config: TrainConfig, recipe: SelfSupRecipe, out_dir, *,
               resume=False, overwrite=False, progress=True, handle_signals=False, stop_after_steps=None,
               log=print, threads=1, workers=1):
    """Train (or resume) a self-supervised backbone with DINO or SimDINO; write the run directory.

    Args:
        config: :class:`SelfSupConfig` (backbone and head); train_config: the optimisation
            (:class:`TrainConfig`; its ``shift`` is off, the views are the augmentation);
            recipe: :class:`SelfSupRecipe`.
        out_dir, resume, overwrite, progress, handle_signals, stop_after_steps, log, threads:
            as in :func:`minicrate.training.classifier.train`.
        workers: the views of a step are split over this many threads (``0``: one per usable
            core); like ``threads`` it changes results only by rounding, and a resumed run
            continues bit for bit with the same value.
    Returns:
        dict: ``params`` (the student), ``teacher``, ``history``, ``metrics`` (as in
        ``metrics.json``), ``knn_accuracy``, ``probe_accuracy``, ``wall_time_s``, ``steps``, ``status``.
    """
    from minicrate.core.allocator import keep_freed_memory
    from minicrate.training.classifier import run_dir
    from minicrate.training.loop import fit
    from minicrate.training.rundir import check_run_dir, limit_threads

    for value, cls, name in ((config, SelfSupConfig, "config"), (train_config, TrainConfig, "train_config"),
                             (recipe, SelfSupRecipe, "recipe")):
        if not isinstance(value, cls):
            raise TypeError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
    out_dir = run_dir(out_dir)
    check_run_dir(out_dir, resume=resume, overwrite=overwrite)  # before loading any data
    with limit_threads(threads):
        task = SelfSupTask(config, train_config, recipe, out_dir=out_dir,
                           workers=check_int(workers, "workers", minimum=0))
        keep_freed_memory()
        return fit(task, train_config, out_dir, resume=resume, overwrite=overwrite, progress=progress,
                   handle_signals=handle_signals, stop_after_steps=stop_after_steps, log=log)
