r"""Exercise tasks for training (chapter 9) and the layer-wise measurement (chapter 10).

Part of the registry of :mod:`minicrate.grading.tasks`; see there for how a
task is graded.  References: :mod:`minicrate.models.loss`, :mod:`minicrate.training.optim`,
:mod:`minicrate.objective.rates` and :mod:`minicrate.measure.layerwise`.  The known mistakes are
written out below in NumPy.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import normal, seeds
from minicrate.grading.tasks.common import solution_of
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task


def _h(x):
    from minicrate.core.backend import to_numpy

    return np.asarray(to_numpy(x), dtype=np.float64)


def _forward_output_named(name):
    def outputs(returned):
        if isinstance(returned, tuple) and len(returned) == 2:
            return {name: returned[0]}
        raise TypeError(f"should return a tuple ({name}, cache), got {type(returned).__name__}")

    return outputs


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
    from minicrate.core.backend import host_to

    rng = np.random.default_rng(spec["seed"])
    logits = rng.standard_normal((spec["B"], spec["C"])) * (1000.0 if spec["big"] else 2.0)
    labels = rng.integers(0, spec["C"], size=spec["B"])
    label = f"logits ({spec['B']}, {spec['C']}), smoothing={spec['smoothing']}" + (
        ", logits of size ~1000" if spec["big"] else ""
    )
    return Case(
        (host_to(xp, logits), host_to(xp, labels, dtype="int64")),
        {"smoothing": spec["smoothing"]},
        label,
        dout=xp.asarray(spec["dloss"], dtype=xp.float64),
        spec=spec,
    )


def _ce_np(case):
    logits, labels = _h(case.args[0]), np.asarray(_h(case.args[1]), dtype=np.int64)
    return logits, labels, case.kwargs["smoothing"]


def _log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _targets(labels, C, eps, kind="right"):
    onehot = np.eye(C)[labels]
    if kind == "right":
        return (1 - eps) * onehot + eps / C
    if kind == "C_minus_1":
        return (1 - eps) * onehot + eps / (C - 1) * (1 - onehot)
    if kind == "no_smoothing":
        return onehot
    if kind == "no_one_minus":
        return onehot + eps / C
    raise ValueError(kind)


def _ce_loss(case, targets="right", reduce="mean", stable=True):
    logits, labels, eps = _ce_np(case)
    B, C = logits.shape
    if stable:
        logp = _log_softmax(logits)
    else:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            e = np.exp(logits)
            logp = np.log(e / e.sum(-1, keepdims=True))
    per_sample = -(_targets(labels, C, eps, targets) * logp).sum(-1)
    return {"mean": per_sample.mean(), "sum": per_sample.sum(), "all": per_sample.sum() / (B * C)}[
        reduce
    ]


def _ce_variant(**kw):
    return lambda case: {"loss": _ce_loss(case, **kw)}


SMOOTHING_HINT = (
    "label smoothing with C classes: the target is q = (1 − ε)·onehot(y) + ε/C "
    "(timm's LabelSmoothingCrossEntropy; the ε/C also lands on the true class)"
)

_CE_FORWARD_MISTAKES = (
    Mistake(
        "sum over the batch (mean vs sum over the batch)",
        "the loss is the *mean* over the batch of the per-sample cross-entropies; you summed",
        _ce_variant(reduce="sum"),
    ),
    Mistake(
        "mean over classes too",
        "sum −q·log p over the classes, then average over the batch (not over classes too)",
        _ce_variant(reduce="all"),
    ),
    Mistake(
        "smoothing ε/(C−1)",
        SMOOTHING_HINT + "; you spread ε over the C − 1 wrong classes",
        _ce_variant(targets="C_minus_1"),
    ),
    Mistake(
        "no smoothing",
        SMOOTHING_HINT + "; you used the one-hot target",
        _ce_variant(targets="no_smoothing"),
    ),
    Mistake(
        "missing (1 − ε)",
        SMOOTHING_HINT + "; your target sums to 1 + ε",
        _ce_variant(targets="no_one_minus"),
    ),
    Mistake(
        "unstable log-softmax",
        "log(softmax) overflows for large logits: use log p = ℓ − m − log Σ exp(ℓ − m) with "
        "m the row maximum",
        _ce_variant(stable=False),
    ),
)


def _ref_ce_forward(case):
    from minicrate.models.loss import cross_entropy_forward

    return {"loss": cross_entropy_forward(*case.args, **case.kwargs)[0]}


def _ref_ce_fwd_fn(logits, labels, *, smoothing=0.1):
    from minicrate.models.loss import cross_entropy_forward

    return cross_entropy_forward(logits, labels, smoothing=smoothing)


def _ref_ce_backward(case):
    from minicrate.models.loss import cross_entropy_backward, cross_entropy_forward

    _, cache = cross_entropy_forward(*case.args, **case.kwargs)
    return {"dlogits": cross_entropy_backward(case.dout, cache)}


def _ce_grad(case, targets="right", divide=True, sign=1.0, use_dloss=True):
    logits, labels, eps = _ce_np(case)
    B, C = logits.shape
    p = np.exp(_log_softmax(logits))
    g = sign * (p - _targets(labels, C, eps, targets))
    if divide:
        g = g / B
    return {"dlogits": g * (float(_h(case.dout)) if use_dloss else 1.0)}


def _ce_bwd_variant(**kw):
    return lambda case: _ce_grad(case, **kw)


_CE_BACKWARD_MISTAKES = (
    Mistake(
        "not divided by the batch size (mean vs sum over the batch)",
        "the loss is a mean over the batch, so every row of dlogits carries a factor 1/B: "
        "(softmax(ℓ) − q) / B",
        _ce_bwd_variant(divide=False),
    ),
    Mistake(
        "one-hot instead of the smoothed target",
        SMOOTHING_HINT + "; the gradient is softmax(ℓ) − q with that same q",
        _ce_bwd_variant(targets="no_smoothing"),
    ),
    Mistake(
        "sign",
        "d(loss)/d(logits) = (softmax(ℓ) − q)/B, probabilities minus targets",
        _ce_bwd_variant(sign=-1.0),
    ),
    Mistake(
        "upstream gradient ignored",
        "multiply by the upstream gradient dloss (chain rule), even though it is often 1",
        _ce_bwd_variant(use_dloss=False),
    ),
)


def _ce_fd_forward(logits, labels, smoothing):
    from minicrate.models.loss import cross_entropy_forward

    return cross_entropy_forward(logits, labels, smoothing=smoothing)


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
    {
        "shape": (2, 3),
        "t": 1,
        "lr": 0.05,
        "wd": 0.1,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "seed": 81,
    },
    {"shape": (4,), "t": 3, "lr": 0.05, "wd": 0.1, "betas": (0.8, 0.99), "eps": 1e-3, "seed": 82},
)


def _build_adamw(spec, xp):
    from minicrate.core.backend import host_to

    rng = np.random.default_rng(spec["seed"])
    shape, t = spec["shape"], spec["t"]
    theta, g = rng.standard_normal(shape), rng.standard_normal(shape)
    if t == 1:
        m, v = np.zeros(shape), np.zeros(shape)
    else:
        m, v = 0.3 * rng.standard_normal(shape), 0.1 * rng.standard_normal(shape) ** 2
    args = tuple(host_to(xp, a) for a in (theta, g, m, v)) + (t,)
    kwargs = {
        "lr": spec["lr"],
        "betas": spec["betas"],
        "eps": spec["eps"],
        "weight_decay": spec["wd"],
    }
    return Case(
        args,
        kwargs,
        f"theta {shape}, t={t}, " + ", ".join(f"{k}={v}" for k, v in kwargs.items()),
        spec=spec,
    )


def _ref_adamw(case):
    from minicrate.training.optim import AdamW

    theta, g, m, v, t = case.args
    kw = case.kwargs
    opt = AdamW(kw["lr"], betas=kw["betas"], eps=kw["eps"], weight_decay=kw["weight_decay"])
    opt.t = t - 1
    opt.state = {"m": {"w": m}, "v": {"w": v}}
    params = opt.step({"w": theta}, {"w": g})
    return {"theta": params["w"], "m": opt.state["m"]["w"], "v": opt.state["v"]["w"]}


def _adamw_np(
    case, *, bias_correction=True, decoupled=True, wd_times_lr=True, t_shift=0, eps_inside=False
):
    theta, g, m, v = (_h(a) for a in case.args[:4])
    t = case.args[4] + t_shift
    kw = case.kwargs
    b1, b2 = kw["betas"]
    wd, lr, eps = kw["weight_decay"], kw["lr"], kw["eps"]
    if not decoupled:
        g = g + wd * theta
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1**t) if bias_correction else m
    v_hat = v / (1 - b2**t) if bias_correction else v
    step = m_hat / (np.sqrt(v_hat + eps) if eps_inside else np.sqrt(v_hat) + eps)
    if decoupled:
        theta = theta - lr * step - (lr * wd if wd_times_lr else wd) * theta
    else:
        theta = theta - lr * step
    return {"theta": theta, "m": m, "v": v}


def _adamw_variant(keys=("theta",), **kw):
    return lambda case: {k: v for k, v in _adamw_np(case, **kw).items() if k in keys}


_ADAMW_MISTAKES = (
    Mistake(
        "no bias correction",
        "divide the moments by (1 − β₁ᵗ) and (1 − β₂ᵗ) before the step (bias correction; "
        "t counts from 1)",
        _adamw_variant(bias_correction=False),
    ),
    Mistake(
        "L2 penalty instead of decoupled weight decay",
        "AdamW decouples the weight decay: θ ← θ − lr·(m̂/(√v̂ + ε) + wd·θ); adding wd·θ to the "
        "gradient (Adam + L2) lets the second moments rescale it",
        _adamw_variant(("theta", "m", "v"), decoupled=False),
    ),
    Mistake(
        "weight decay not scaled by lr",
        "the decoupled decay is scaled by the learning rate too: θ ← θ − lr·wd·θ − lr·m̂/(√v̂ + ε)",
        _adamw_variant(wd_times_lr=False),
    ),
    Mistake(
        "step counted from 0",
        "bias correction uses the step number t of *this* update "
        "(1 for the first update); you used t + 1",
        _adamw_variant(t_shift=1),
    ),
    Mistake(
        "ε inside the square root",
        "the denominator is √v̂ + ε, not √(v̂ + ε)",
        _adamw_variant(eps_inside=True),
    ),
)


def _adamw_outputs(returned):
    if not (isinstance(returned, (tuple, list)) and len(returned) == 3):
        raise TypeError(f"should return a tuple (theta, m, v), got {type(returned).__name__}")
    return dict(zip(("theta", "m", "v"), returned, strict=True))


def _sol_adamw(theta, g, m, v, t, *, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    out = _ref_adamw(
        Case(
            (theta, g, m, v, t),
            {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay},
            "",
        )
    )
    return out["theta"], out["m"], out["v"]


_sol_adamw.__name__ = "adamw_update"


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
)


def _build_clip(spec, xp):
    rng = np.random.default_rng(spec["seed"])
    grads = {f"g{i}": rng.standard_normal(s) * (1 + i) for i, s in enumerate(spec["shapes"])}
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    max_norm = spec["factor"] * norm
    from minicrate.core.backend import host_to

    return Case(
        ({k: host_to(xp, v) for k, v in grads.items()}, max_norm),
        {},
        f"{len(grads)} arrays of norm {norm:.3g}, max_norm={max_norm:.3g}",
        spec=spec,
    )


def _clip_outputs(returned):
    if not (
        isinstance(returned, (tuple, list)) and len(returned) == 2 and isinstance(returned[0], dict)
    ):
        raise TypeError("should return a tuple (clipped_grads_dict, norm)")
    out = {f"clipped[{k!r}]": v for k, v in returned[0].items()}
    out["norm"] = returned[1]
    return out


def _ref_clip(case):
    from minicrate.training.optim import clip_by_global_norm

    clipped, norm = clip_by_global_norm(*case.args)
    return _clip_outputs((clipped, norm))


def _clip_np(case, kind="right"):
    grads = {k: _h(v) for k, v in case.args[0].items()}
    max_norm = case.args[1]
    sq = sum(float((g * g).sum()) for g in grads.values())
    norm = math.sqrt(sq)
    if kind == "per_tensor":
        out = {}
        for k, g in grads.items():
            n = float(np.sqrt((g * g).sum()))
            out[k] = g * min(1.0, max_norm / n)
        return _clip_outputs((out, norm))
    if kind == "always":
        scale = max_norm / norm
    elif kind == "squared":
        norm = sq
        scale = min(1.0, max_norm / sq)
    elif kind == "inverted":
        scale = min(1.0, norm / max_norm)
    else:
        scale = min(1.0, max_norm / norm)
    out = _clip_outputs(({k: g * scale for k, g in grads.items()}, norm))
    if kind == "norm_after":
        out["norm"] = min(norm, max_norm)
    return out


def _clip_variant(kind, keys=None):
    def wrong(case):
        out = _clip_np(case, kind)
        return out if keys is None else {k: v for k, v in out.items() if k in keys}

    return wrong


_CLIP_MISTAKES = (
    Mistake(
        "per-tensor clipping",
        "clip by the *global* norm √(Σ_k ‖g_k‖²) over all arrays together, then scale every "
        "array by the same factor; you clipped each array on its own",
        _clip_variant("per_tensor"),
    ),
    Mistake(
        "always rescaled",
        "clip only when the norm exceeds max_norm: scale = min(1, max_norm/‖g‖)",
        _clip_variant("always"),
    ),
    Mistake("squared norm", "the norm is √(Σ g²), not Σ g²", _clip_variant("squared")),
    Mistake(
        "inverted factor",
        "scale = min(1, max_norm/‖g‖); you have ‖g‖/max_norm",
        _clip_variant("inverted"),
    ),
    Mistake(
        "norm after clipping",
        "return the norm measured *before* clipping (it is what "
        "training logs to spot exploding gradients)",
        _clip_variant("norm_after", ("norm",)),
    ),
)


# --------------------------------------------------------------------------
# 10.1, 10.2, 10.3: the layer-wise measurement
# --------------------------------------------------------------------------


@st.composite
def _measure_spec(draw):
    return {
        "B": draw(st.integers(1, 3)),
        "N": draw(st.integers(2, 6)),
        "K": draw(st.integers(1, 3)),
        "p": draw(st.integers(1, 3)),
        "eps_sq": draw(st.sampled_from([0.01, 0.1])),
        "seed": draw(seeds),
    }


_MEASURE_EXPLICIT = (
    {"B": 3, "N": 5, "K": 2, "p": 3, "eps_sq": 0.01, "seed": 101},
    {"B": 1, "N": 4, "K": 3, "p": 2, "eps_sq": 0.1, "seed": 102},
)


def _build_measure(spec, xp):
    K, p = spec["K"], spec["p"]
    d = K * p
    X = normal(xp, (spec["B"], spec["N"], d), spec["seed"])
    U = normal(xp, (K, d, p), spec["seed"] + 1, scale=1.0 / math.sqrt(d))
    return Case(
        (X, U),
        {"eps_sq": spec["eps_sq"]},
        f"X {(spec['B'], spec['N'], d)}, U {(K, d, p)}, eps_sq={spec['eps_sq']}",
        spec=spec,
    )


def _ref_measured(case):
    from minicrate.objective.rates import measured_compression_rate

    return {
        "R^c": measured_compression_rate(*case.args, eps_sq=case.kwargs["eps_sq"], reduction="none")
    }


def _measured_np(
    case,
    *,
    normalise="projection",
    constant="p",
    eps_power=1,
    reduce_heads="sum",
    reduce_images=None,
):
    X, U = _h(case.args[0]), _h(case.args[1])
    eps_sq = case.kwargs["eps_sq"] ** eps_power
    if normalise == "token":
        X = X / np.linalg.norm(X, axis=-1, keepdims=True)
    W = X[..., None, :, :] @ U  # (B, K, N, p)
    if normalise == "projection":
        W = W / np.maximum(np.linalg.norm(W, axis=-1, keepdims=True), 1e-12)
    elif normalise == "over_tokens":
        W = W / np.maximum(np.linalg.norm(W, axis=-2, keepdims=True), 1e-12)
    N, p = X.shape[-2], U.shape[-1]
    c = (p if constant == "p" else X.shape[-1]) / (N * eps_sq)
    _, logdet = np.linalg.slogdet(np.eye(p) + c * np.swapaxes(W, -1, -2) @ W)
    per_head = 0.5 * logdet
    per_image = per_head.sum(-1) if reduce_heads == "sum" else per_head.mean(-1)
    if reduce_images == "mean":
        return per_image.mean()
    return per_image


def _measured_variant(**kw):
    return lambda case: {"R^c": _measured_np(case, **kw)}


_MEASURED_MISTAKES = (
    Mistake(
        "no normalisation",
        "the paper's measurement scales each token's head projection XU_k to unit length "
        "first, so R^c does not depend on token size",
        _measured_variant(normalise=None),
    ),
    Mistake(
        "tokens normalised instead of projections",
        "normalise each token's *projection* on the head (a length-p row of XU_k), not the "
        "token itself",
        _measured_variant(normalise="token"),
    ),
    Mistake(
        "normalised over the tokens",
        "normalise each token's projection over its p coordinates (last axis), not each "
        "coordinate over the tokens",
        _measured_variant(normalise="over_tokens"),
    ),
    Mistake(
        "d instead of p",
        "wrong p: the constant is p/(N·eps_sq) with the head width p = U.shape[-1]",
        _measured_variant(constant="d"),
    ),
    Mistake(
        "eps_sq squared",
        "eps_sq already is ε² (0.01 means ε = 0.1): the constant is p/(N·eps_sq)",
        _measured_variant(eps_power=2),
    ),
    Mistake(
        "mean over heads",
        "sum the heads' rates; you averaged them",
        _measured_variant(reduce_heads="mean"),
    ),
    Mistake(
        "averaged over the images (mean vs sum over the batch)",
        "return one value per image, shape (B,); the figure averages them later",
        _measured_variant(reduce_images="mean"),
    ),
)


@st.composite
def _nonzero_spec(draw):
    return {
        "lead": draw(st.sampled_from([(1,), (3,), (2, 2)])),
        "N": draw(st.integers(1, 5)),
        "d": draw(st.integers(1, 6)),
        "seed": draw(seeds),
    }


def _build_nonzero(spec, xp):
    from minicrate.core.backend import host_to

    rng = np.random.default_rng(spec["seed"])
    shape = (*spec["lead"], spec["N"], spec["d"])
    Z = np.maximum(rng.standard_normal(shape), 0.0)
    return Case((host_to(xp, Z),), {}, f"Z {shape}", spec=spec)


def _ref_nonzero(case):
    from minicrate.objective.rates import nonzero_fraction

    return {"fraction": nonzero_fraction(case.args[0], reduction="none")}


def _nz_np(case, kind="right"):
    Z = _h(case.args[0])
    nz = (Z != 0).astype(float)
    if kind == "zeros":
        return {"fraction": 1.0 - nz.mean(axis=(-1, -2))}
    if kind == "whole_batch":
        return {"fraction": nz.mean()}
    if kind == "per_token":
        return {"fraction": nz.mean(-1)}
    if kind == "count":
        return {"fraction": nz.sum(axis=(-1, -2))}
    return {"fraction": nz.mean(axis=(-1, -2))}


_NONZERO_MISTAKES = (
    Mistake(
        "fraction of zeros",
        "count the *non-zero* entries (‖Z‖₀), not the zeros",
        lambda case: _nz_np(case, "zeros"),
    ),
    Mistake(
        "one number for the whole batch (mean vs sum over the batch)",
        "return one fraction per sample, shape Z.shape[:-2]; you averaged over the batch",
        lambda case: _nz_np(case, "whole_batch"),
    ),
    Mistake(
        "per token",
        "divide the sample's non-zero count by N·d (all its tokens and "
        "features), one number per sample",
        lambda case: _nz_np(case, "per_token"),
    ),
    Mistake(
        "a count, not a fraction",
        "divide the number of non-zeros by N·d",
        lambda case: _nz_np(case, "count"),
    ),
)


@st.composite
def _layerwise_spec(draw):
    return {
        "depth": draw(st.integers(1, 3)),
        "heads": draw(st.integers(1, 2)),
        "p": draw(st.integers(2, 3)),
        "pool": draw(st.sampled_from(["cls", "mean"])),
        "B": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 1000)),
    }


_LAYERWISE_EXPLICIT = ({"depth": 2, "heads": 2, "p": 2, "pool": "cls", "B": 3, "seed": 5},)


def _build_layerwise(spec, xp):
    from minicrate.models.classifier import CRATEConfig, init_params

    config = CRATEConfig(
        image_size=4,
        patch_size=2,
        channels=1,
        dim=spec["heads"] * spec["p"],
        depth=spec["depth"],
        heads=spec["heads"],
        num_classes=3,
        pool=spec["pool"],
        dtype="float64",
    )
    params = init_params(config, seed=spec["seed"], backend=xp)
    images = np.random.default_rng(spec["seed"] + 1).standard_normal((spec["B"], 1, 4, 4))
    return Case(
        (params, config, images),
        {},
        f"depth {config.depth}, d={config.dim}, {config.heads} heads, {spec['B']} images",
        spec=spec,
    )


def _layerwise_outputs(returned):
    if not isinstance(returned, dict) or "rc" not in returned or "nonzero" not in returned:
        raise TypeError(
            'should return a dict with the lists "rc" and "nonzero" (one value per layer)'
        )
    return {
        "rc": np.asarray(returned["rc"], dtype=np.float64),
        "nonzero": np.asarray(returned["nonzero"], dtype=np.float64),
    }


def _ref_layerwise(case):
    from minicrate.measure.layerwise import layerwise

    return _layerwise_outputs(layerwise(*case.args))


def _layerwise_np(
    case, *, rc_on="mssa_inputs", nz_on="ista_outputs", rc_kind="measured", reduce="mean"
):
    from minicrate.models.classifier import forward, intermediates
    from minicrate.objective.rates import compression_rate, measured_compression_rate, nonzero_fraction

    params, config, images = case.args
    xp = __import__("minicrate.core.backend", fromlist=["namespace"]).namespace(params["head.W"])
    _, cache = forward(params, xp.asarray(images), config)
    inter = intermediates(cache)
    rc, nz = [], []
    for layer in range(config.depth):
        X, U = inter[rc_on][layer], inter["U"][layer]
        if rc_kind == "measured":
            r = _h(measured_compression_rate(X, U, reduction="none"))
        else:
            r = _h(compression_rate(X, U, 0.1))
        n = _h(nonzero_fraction(inter[nz_on][layer], reduction="none"))
        rc.append(r.mean() if reduce == "mean" else r.sum())
        nz.append(n.mean() if reduce == "mean" else n.sum())
    return {"rc": np.asarray(rc), "nonzero": np.asarray(nz)}


def _layerwise_variant(keys, **kw):
    return lambda case: {k: v for k, v in _layerwise_np(case, **kw).items() if k in keys}


_LAYERWISE_MISTAKES = (
    Mistake(
        "R^c on the layer output",
        "measure R^c where the paper's hook does: on the MSSA input LN₁(Z^ℓ) "
        "(intermediates(cache)['mssa_inputs']), not on the ISTA output",
        _layerwise_variant(("rc",), rc_on="ista_outputs"),
    ),
    Mistake(
        "sparsity of the MSSA input",
        "the sparsity is the non-zero fraction of the ISTA output Z^{ℓ+1} "
        "(intermediates(cache)['ista_outputs']); the LayerNorm output is never sparse",
        _layerwise_variant(("nonzero",), nz_on="mssa_inputs"),
    ),
    Mistake(
        "unnormalised R^c",
        "use the paper's measurement (unit-normalised projections, eps_sq = 0.01: "
        "measured_compression_rate), not the plain R^c",
        _layerwise_variant(("rc",), rc_kind="plain"),
    ),
    Mistake(
        "summed over images (mean vs sum over the batch)",
        "each layer's value is the *mean* over images of the per-image measurements",
        _layerwise_variant(("rc", "nonzero"), reduce="sum"),
    ),
)


def _sol(module, name):
    return solution_of(module, name)


def _sol_measured(X, U, *, eps_sq=0.01):
    from minicrate.objective.rates import measured_compression_rate

    return measured_compression_rate(X, U, eps_sq=eps_sq, reduction="none")


def _sol_nonzero(Z):
    from minicrate.objective.rates import nonzero_fraction

    return nonzero_fraction(Z, reduction="none")


def _sol_layerwise(params, config, images):
    from minicrate.measure.layerwise import layerwise

    return layerwise(params, config, images)


def _sol_clip(grads, max_norm):
    from minicrate.training.optim import clip_by_global_norm

    return clip_by_global_norm(grads, max_norm)


_sol_measured.__name__ = "measured_compression_rate"
_sol_nonzero.__name__ = "nonzero_fraction"
_sol_layerwise.__name__ = "layerwise"
_sol_clip.__name__ = "clip_by_global_norm"


TRAINING_TASKS = [
    Task(
        id="9.1",
        function="cross_entropy_forward",
        notebook="ch09_training_step.md",
        book="Chapter 9, training CRATE on real digits",
        title="mean over the batch of −⟨q, log softmax(ℓ)⟩, q = (1 − ε)·onehot + ε/C; "
        "returns (loss, cache)",
        kind="function",
        strategy=_ce_spec(),
        build=_build_ce,
        reference=_ref_ce_forward,
        outputs=_forward_output_named("loss"),
        argnames=("logits", "labels"),
        explicit=_CE_EXPLICIT,
        examples=6,
        checks=("loss equals minicrate.cross_entropy_forward (also for logits of size 1000)",),
        mistakes=_CE_FORWARD_MISTAKES,
        solution=_ref_ce_fwd_fn,
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
        reference_forward=_ref_ce_fwd_fn,
        checks=(
            "dlogits equals minicrate.cross_entropy_backward",
            "dlogits agrees with finite differences of minicrate.cross_entropy_forward",
        ),
        mistakes=_CE_BACKWARD_MISTAKES,
        solution=_sol("models.loss", "cross_entropy_backward"),
        fd=FiniteDifferences(forward=_ce_fd_forward, wrt={"dlogits": "logits"}),
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
        solution=_sol_adamw,
    ),
    Task(
        id="9.4",
        function="clip_by_global_norm",
        notebook="ch09_training_step.md",
        book="Chapter 9, training CRATE on real digits",
        title="scale every gradient by min(1, max_norm/‖g‖), ‖g‖ the global norm; "
        "returns (clipped, norm)",
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
        solution=_sol_clip,
    ),
    Task(
        id="10.1",
        function="measured_compression_rate",
        notebook="ch10_layerwise_measurement.md",
        book="Chapter 10, opening the white box",
        title="the paper's R^c: unit-normalised head projections, ½ log det(I + p/(N·eps_sq) ŴᵀŴ) "
        "summed over heads, one value per image",
        kind="function",
        strategy=_measure_spec(),
        build=_build_measure,
        reference=_ref_measured,
        outputs=lambda r: {"R^c": r},
        argnames=("X", "U"),
        explicit=_MEASURE_EXPLICIT,
        examples=6,
        checks=(
            "per-image values equal minicrate.measured_compression_rate(..., reduction='none')",
        ),
        mistakes=_MEASURED_MISTAKES,
        solution=_sol_measured,
    ),
    Task(
        id="10.2",
        function="nonzero_fraction",
        notebook="ch10_layerwise_measurement.md",
        book="Chapter 10, opening the white box",
        title="‖Z‖₀/(N·d) per sample",
        kind="function",
        strategy=_nonzero_spec(),
        build=_build_nonzero,
        reference=_ref_nonzero,
        outputs=lambda r: {"fraction": r},
        argnames=("Z",),
        explicit=({"lead": (3,), "N": 4, "d": 5, "seed": 111},),
        examples=5,
        checks=("per-sample fractions equal minicrate.nonzero_fraction(..., reduction='none')",),
        mistakes=_NONZERO_MISTAKES,
        solution=_sol_nonzero,
    ),
    Task(
        id="10.3",
        function="layerwise",
        notebook="ch10_layerwise_measurement.md",
        book="Chapter 10, opening the white box",
        title="per layer: mean over images of R^c of the MSSA input and of the ISTA output's "
        "non-zero fraction",
        kind="function",
        strategy=_layerwise_spec(),
        build=_build_layerwise,
        reference=_ref_layerwise,
        outputs=_layerwise_outputs,
        argnames=("params", "config", "images"),
        explicit=_LAYERWISE_EXPLICIT,
        examples=3,
        checks=("rc and nonzero equal minicrate.measure.layerwise.layerwise on tiny random CRATE models",),
        mistakes=_LAYERWISE_MISTAKES,
        solution=_sol_layerwise,
    ),
]
