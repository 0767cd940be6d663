r"""Chapter 9's exercise tasks: the loss, its gradient and the optimiser of a training step.

==== ========================= =================================================
task function                  notebook
==== ========================= =================================================
9.1  cross_entropy_forward     ch09_training_step.md
9.2  cross_entropy_backward    ch09_training_step.md
9.3  adamw_update              ch09_training_step.md
9.4  clip_by_global_norm       ch09_training_step.md
==== ========================= =================================================

The known mistakes are built from :mod:`minicrate.models.loss` and
:mod:`minicrate.training.optim` themselves: a wrong smoothing is the library's
loss at the smoothing that gives that target, a missing bias correction is the
library's AdamW step so far on that ``1 − βᵗ`` is 1, a wrong clipping factor is the library's
clipping at the ``max_norm`` that gives it; the rest are multiples or one-line changes.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import seeds
from minicrate.core.backend import host_to
from minicrate.grading.mistakes import training as mistakes
from minicrate.grading.tasks.common import forward_output, only, solution_of
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task
from minicrate.models.loss import cross_entropy_backward, cross_entropy_forward
from minicrate.training.optim import clip_by_global_norm, global_norm

# --------------------------------------------------------------------------
# 9.1, 9.2: label-smoothed cross-entropy
# --------------------------------------------------------------------------


@st.composite
def _ce_spec(draw):
    return {
        "B": draw(st.integers(1, 5)),
        "C": draw(st.integers(2, 6)),
        "smoothing": draw(st.sampled_from([0.0, 0.1, 0.3])),
        "big": False,
        "dloss": draw(st.sampled_from([1.0, 0.5, 2.0])),
        "seed": draw(seeds),
    }


_CE_EXPLICIT = (
    {"B": 4, "C": 5, "smoothing": 0.1, "big": False, "dloss": 1.0, "seed": 71},
    {"B": 3, "C": 4, "smoothing": 0.1, "big": True, "dloss": 0.5, "seed": 72},
)


def _build_ce(spec, xp):
    rng = np.random.default_rng(spec["seed"])
    logits = rng.standard_normal((spec["B"], spec["C"])) * (1000.0 if spec["big"] else 2.0)
    labels = rng.integers(0, spec["C"], size=spec["B"])
    text = f"logits ({spec['B']}, {spec['C']}), smoothing={spec['smoothing']}" + (
        ", logits of size ~1000" if spec["big"] else ""
    )
    return Case(
        (host_to(xp, logits), host_to(xp, labels, dtype="int64")),
        {"smoothing": spec["smoothing"]},
        text,
        dout=xp.asarray(spec["dloss"], dtype=xp.float64),
        spec=spec,
    )


def _ref_ce_forward(case):
    return {"loss": cross_entropy_forward(*case.args, **case.kwargs)[0]}


def _loss(builder):
    """A mistake whose loss is ``builder(logits, labels, smoothing)``."""
    return lambda case: {"loss": builder(*case.args, case.kwargs["smoothing"])}


def _ce_scaled(by_shape):
    """The reference loss times a size of the logits (a wrong reduction)."""
    return lambda case: {"loss": by_shape(*case.args[0].shape) * mistakes.loss_at(*case.args, case.kwargs["smoothing"])}


SMOOTHING_HINT = (
    "label smoothing with C classes: the target is q = (1 − ε)·onehot(y) + ε/C "
    "(timm's LabelSmoothingCrossEntropy; the ε/C also lands on the true class)"
)

_CE_FORWARD_MISTAKES = (
    Mistake(
        "sum over the batch (mean vs sum over the batch)",
        "the loss is the *mean* over the batch of the per-sample cross-entropies; you summed",
        _ce_scaled(lambda B, C: B),
    ),
    Mistake(
        "mean over classes too",
        "sum −q·log p over the classes, then average over the batch (not over classes too)",
        _ce_scaled(lambda B, C: 1.0 / C),
    ),
    Mistake(
        "smoothing ε/(C−1)",
        SMOOTHING_HINT + "; you spread ε over the C − 1 wrong classes",
        _loss(mistakes.loss_smoothed_over_others),
    ),
    Mistake(
        "no smoothing",
        SMOOTHING_HINT + "; you used the one-hot target",
        lambda case: {"loss": mistakes.loss_at(*case.args, 0.0)},
    ),
    Mistake("missing (1 − ε)", SMOOTHING_HINT + "; your target sums to 1 + ε", _loss(mistakes.loss_without_one_minus)),
    Mistake(
        "unstable log-softmax",
        "log(softmax) overflows for large logits: use log p = ℓ − m − log Σ exp(ℓ − m) with m the row maximum",
        _loss(mistakes.loss_unstable),
    ),
)


def _dlogits(case, *, smoothing=None, dloss=None):
    """The library's dlogits, optionally at another smoothing or upstream gradient."""
    smoothing = case.kwargs["smoothing"] if smoothing is None else smoothing
    return mistakes.dlogits_at(*case.args, case.dout if dloss is None else dloss, smoothing)


def _ref_ce_backward(case):
    _, cache = cross_entropy_forward(*case.args, **case.kwargs)
    return {"dlogits": cross_entropy_backward(case.dout, cache)}


_CE_BACKWARD_MISTAKES = (
    Mistake(
        "not divided by the batch size (mean vs sum over the batch)",
        "the loss is a mean over the batch, so every row of dlogits carries a factor 1/B: (softmax(ℓ) − q) / B",
        lambda case: {"dlogits": case.args[0].shape[0] * _dlogits(case)},
    ),
    Mistake(
        "one-hot instead of the smoothed target",
        SMOOTHING_HINT + "; the gradient is softmax(ℓ) − q with that same q",
        lambda case: {"dlogits": _dlogits(case, smoothing=0.0)},
    ),
    Mistake(
        "sign",
        "d(loss)/d(logits) = (softmax(ℓ) − q)/B, probabilities minus targets",
        lambda case: {"dlogits": -_dlogits(case)},
    ),
    Mistake(
        "upstream gradient ignored",
        "multiply by the upstream gradient dloss (chain rule), even though it is often 1",
        lambda case: {"dlogits": _dlogits(case, dloss=1.0)},
    ),
)

# --------------------------------------------------------------------------
# 9.3: one AdamW update
# --------------------------------------------------------------------------


@st.composite
def _adamw_spec(draw):
    return {
        "shape": draw(st.sampled_from([(3,), (2, 3), (4,)])),
        "t": draw(st.sampled_from([1, 3, 10])),
        "lr": draw(st.sampled_from([1e-3, 0.05])),
        "wd": draw(st.sampled_from([0.01, 0.1])),
        "betas": draw(st.sampled_from([(0.9, 0.999), (0.8, 0.99)])),
        "eps": draw(st.sampled_from([1e-8, 1e-3])),
        "seed": draw(seeds),
    }


_ADAMW_EXPLICIT = (
    {"shape": (2, 3), "t": 1, "lr": 0.05, "wd": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "seed": 81},
    {"shape": (4,), "t": 3, "lr": 0.05, "wd": 0.1, "betas": (0.8, 0.99), "eps": 1e-3, "seed": 82},
)


def _build_adamw(spec, xp):
    rng = np.random.default_rng(spec["seed"])
    shape, t = spec["shape"], spec["t"]
    theta, g = rng.standard_normal(shape), rng.standard_normal(shape)
    if t == 1:
        m, v = np.zeros(shape), np.zeros(shape)
    else:
        m, v = 0.3 * rng.standard_normal(shape), 0.1 * rng.standard_normal(shape) ** 2
    args = tuple(host_to(xp, a) for a in (theta, g, m, v)) + (t,)
    kwargs = {"lr": spec["lr"], "betas": spec["betas"], "eps": spec["eps"], "weight_decay": spec["wd"]}
    return Case(args, kwargs, f"theta {shape}, t={t}, " + ", ".join(f"{k}={v}" for k, v in kwargs.items()), spec=spec)


def _adamw(case, update=mistakes.adamw_update, t=None):
    """``update`` (the library's, or a builder calling it with changed inputs) of the case, named."""
    theta, g, m, v, t0 = case.args
    out = update(theta, g, m, v, t0 if t is None else t, **case.kwargs)
    return dict(zip(("theta", "m", "v"), out, strict=True))


def _ref_adamw(case):
    return _adamw(case)


_ADAMW_MISTAKES = (
    Mistake(
        "no bias correction",
        "divide the moments by (1 − β₁ᵗ) and (1 − β₂ᵗ) before the step (bias correction; t counts from 1)",
        lambda case: only(_adamw(case, t=mistakes.NO_BIAS_CORRECTION_STEP), ("theta",)),
    ),
    Mistake(
        "L2 penalty instead of decoupled weight decay",
        "AdamW decouples the weight decay: θ ← θ − lr·(m̂/(√v̂ + ε) + wd·θ); adding wd·θ to the "
        "gradient (Adam + L2) lets the second moments rescale it",
        lambda case: _adamw(case, mistakes.adam_l2),
    ),
    Mistake(
        "weight decay not scaled by lr",
        "the decoupled decay is scaled by the learning rate too: θ ← θ − lr·wd·θ − lr·m̂/(√v̂ + ε)",
        lambda case: only(_adamw(case, mistakes.adamw_decay_not_times_lr), ("theta",)),
    ),
    Mistake(
        "step counted from 0",
        "bias correction uses the step number t of *this* update (1 for the first update); you used t + 1",
        lambda case: only(_adamw(case, t=case.args[4] + 1), ("theta",)),
    ),
    Mistake(
        "ε inside the square root",
        "the denominator is √v̂ + ε, not √(v̂ + ε)",
        lambda case: {"theta": mistakes.adamw_eps_inside(*case.args, **case.kwargs)},
    ),
)


def _adamw_outputs(returned):
    if not (isinstance(returned, (tuple, list)) and len(returned) == 3):
        raise TypeError(f"should return a tuple (theta, m, v), got {type(returned).__name__}")
    return dict(zip(("theta", "m", "v"), returned, strict=True))


# --------------------------------------------------------------------------
# 9.4: clipping by the global norm
# --------------------------------------------------------------------------


@st.composite
def _clip_spec(draw):
    n = draw(st.integers(1, 3))
    return {
        "shapes": tuple(draw(st.sampled_from([(3,), (2, 2), (4, 1)])) for _ in range(n)),
        "factor": draw(st.sampled_from([0.5, 0.1, 2.0])),
        "seed": draw(seeds),
    }


_CLIP_EXPLICIT = (
    {"shapes": ((3,), (2, 2)), "factor": 0.5, "seed": 91},
    {"shapes": ((2, 2), (3,), (4, 1)), "factor": 2.0, "seed": 92},
    {"shapes": ((3,), (2, 2)), "factor": 0.5, "seed": 93, "scale": 1e-3},  # torch's +1e-6 shows
)


def _build_clip(spec, xp):
    rng = np.random.default_rng(spec["seed"])
    size = spec.get("scale", 1.0)  # the explicit small-gradient case
    grads = {f"g{i}": rng.standard_normal(s) * (1 + i) * size for i, s in enumerate(spec["shapes"])}
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    max_norm = spec["factor"] * norm
    return Case(
        ({k: host_to(xp, v) for k, v in grads.items()}, max_norm),
        {},
        f"{len(grads)} arrays of norm {norm:.3g}, max_norm={max_norm:.3g}",
        spec=spec,
    )


def _clip_outputs(returned):
    if not (isinstance(returned, (tuple, list)) and len(returned) == 2 and isinstance(returned[0], dict)):
        raise TypeError("should return a tuple (clipped_grads_dict, norm)")
    out = {f"clipped[{k!r}]": v for k, v in returned[0].items()}
    out["norm"] = returned[1]
    return out


def _ref_clip(case):
    return _clip_outputs(clip_by_global_norm(*case.args))


def _clipped(builder):
    """A mistake whose ``(clipped, norm)`` is ``builder(grads, max_norm)``."""
    return lambda case: _clip_outputs(builder(*case.args))


_CLIP_MISTAKES = (
    Mistake(
        "per-tensor clipping",
        "clip by the *global* norm √(Σ_k ‖g_k‖²) over all arrays together, then scale every "
        "array by the same factor; you clipped each array on its own",
        _clipped(mistakes.clip_per_tensor),
    ),
    Mistake(
        "always rescaled",
        "clip only when the norm exceeds max_norm: scale = min(1, max_norm/‖g‖)",
        _clipped(mistakes.clip_always),
    ),
    Mistake("torch-style epsilon", "scale by max_norm/‖g‖ exactly (minicrate.clip_by_global_norm); "
            "torch's max_norm/(‖g‖ + 1e-6) is off for small gradients", _clipped(mistakes.clip_torch_style)),
    Mistake("squared norm", "the norm is √(Σ g²), not Σ g²", _clipped(mistakes.clip_squared_norm)),
    Mistake("inverted factor", "scale = min(1, max_norm/‖g‖); you have ‖g‖/max_norm", _clipped(mistakes.clip_inverted)),
    Mistake(
        "norm after clipping",
        "return the norm measured *before* clipping (it is what training logs to spot exploding gradients)",
        lambda case: {"norm": min(global_norm(case.args[0]), case.args[1])},
    ),
)

# --------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------


TASKS = [
    Task(
        id="9.1",
        function="cross_entropy_forward",
        notebook="ch09_training_step.md",
        book="Chapter 9, training CRATE on real digits",
        title="mean over the batch of −⟨q, log softmax(ℓ)⟩, q = (1 − ε)·onehot + ε/C; returns (loss, cache)",
        kind="function",
        strategy=_ce_spec(),
        build=_build_ce,
        reference=_ref_ce_forward,
        outputs=forward_output("loss"),
        argnames=("logits", "labels"),
        explicit=_CE_EXPLICIT,
        examples=6,
        checks=("loss equals minicrate.cross_entropy_forward (also for logits of size 1000)",),
        mistakes=_CE_FORWARD_MISTAKES,
        solution=solution_of("models.loss", "cross_entropy_forward"),
    ),
    Task(
        id="9.2",
        function="cross_entropy_backward",
        notebook="ch09_training_step.md",
        book="Chapter 9, training CRATE on real digits",
        title="dlogits = dloss·(softmax(ℓ) − q)/B",
        kind="backward",
        strategy=_ce_spec(),
        build=_build_ce,
        reference=_ref_ce_backward,
        outputs=lambda r: {"dlogits": r},
        argnames=("logits", "labels"),
        explicit=_CE_EXPLICIT,
        examples=6,
        forward_name="cross_entropy_forward",
        reference_forward=cross_entropy_forward,
        checks=(
            "dlogits equals minicrate.cross_entropy_backward",
            "dlogits agrees with finite differences of minicrate.cross_entropy_forward",
        ),
        mistakes=_CE_BACKWARD_MISTAKES,
        solution=solution_of("models.loss", "cross_entropy_backward"),
        fd=FiniteDifferences(forward=cross_entropy_forward, wrt={"dlogits": "logits"}),
    ),
    Task(
        id="9.3",
        function="adamw_update",
        notebook="ch09_training_step.md",
        book="Chapter 9, training CRATE on real digits",
        title="one AdamW step for one parameter: returns (theta, m, v)",
        kind="function",
        strategy=_adamw_spec(),
        build=_build_adamw,
        reference=_ref_adamw,
        outputs=_adamw_outputs,
        argnames=("theta", "g", "m", "v", "t"),
        explicit=_ADAMW_EXPLICIT,
        examples=6,
        checks=("theta, m, v equal one step of minicrate.training.optim.AdamW",),
        mistakes=_ADAMW_MISTAKES,
        solution=mistakes.adamw_update,
    ),
    Task(
        id="9.4",
        function="clip_by_global_norm",
        notebook="ch09_training_step.md",
        book="Chapter 9, training CRATE on real digits",
        title="scale every gradient by min(1, max_norm/‖g‖), ‖g‖ the global norm; returns (clipped, norm)",
        kind="function",
        strategy=_clip_spec(),
        build=_build_clip,
        reference=_ref_clip,
        outputs=_clip_outputs,
        argnames=("grads", "max_norm"),
        explicit=_CLIP_EXPLICIT,
        examples=6,
        checks=("the clipped arrays and the norm equal minicrate.training.optim.clip_by_global_norm",),
        mistakes=_CLIP_MISTAKES,
        solution=solution_of("training.optim", "clip_by_global_norm"),
    ),
]
