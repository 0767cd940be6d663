r"""Chapter 10's exercise tasks: the paper's layer-wise measurement of compression and sparsity.

==== ========================== =================================================
task function                   notebook
==== ========================== =================================================
10.1 measured_compression_rate  ch10_layerwise_measurement.md
10.2 nonzero_fraction           ch10_layerwise_measurement.md
10.3 layerwise                  ch10_layerwise_measurement.md
==== ========================== =================================================

The known mistakes are built from :mod:`minicrate.objective.rates` and
:mod:`minicrate.measure.layerwise` themselves: a wrong constant is the
library's measurement at the ``eps_sq`` that gives it, a missing or misplaced
normalisation is the library's plain R^c of the (re-scaled) projections, a
wrong reduction is the library's other reduction or a multiple of the
reference, and a wrong place to measure is the library's measurement on
another entry of the forward's intermediates.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import normal, seeds
from minicrate.core.backend import host_to, namespace
from minicrate.grading.tasks.common import host, solution_of
from minicrate.grading.types import Case, Mistake, Task
from minicrate.measure.layerwise import layerwise
from minicrate.models.classifier import CRATEConfig, forward, init_params, intermediates
from minicrate.objective.rates import compression_rate, measured_compression_rate, nonzero_fraction

# --------------------------------------------------------------------------
# 10.1: the measured compression rate
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


def measured_per_image(X, U, *, eps_sq=0.01):
    """:func:`minicrate.objective.rates.measured_compression_rate`, one value per image
    (the student's function: the reduction over images is left to the figure)."""
    return measured_compression_rate(X, U, eps_sq=eps_sq, reduction="none")


measured_per_image.__name__ = "measured_compression_rate"


def _ref_measured(case):
    return {"R^c": measured_per_image(*case.args, **case.kwargs)}


def _measured_at(case, eps_sq, reduction="none"):
    """The library's measurement of the case at another ``eps_sq`` (or reduction)."""
    return {"R^c": host(measured_compression_rate(*case.args, eps_sq=eps_sq, reduction=reduction))}


def _plain_rc(X, U, eps_sq):
    """Plain R^c with the measurement's constant p/(N·eps_sq): no unit-normalised projections."""
    return {"R^c": host(compression_rate(X, U, math.sqrt(eps_sq)))}


def _tokens_normalised(case):
    X, U = (host(a) for a in case.args)
    return _plain_rc(X / np.linalg.norm(X, axis=-1, keepdims=True), U, case.kwargs["eps_sq"])


def _normalised_over_tokens(case):
    """Each coordinate of XU_k scaled to unit norm over the tokens: that scales U_k's columns,
    by a factor of each image's own, so it is the plain R^c of each image with its own U."""
    X, U = (host(a) for a in case.args)
    eps = math.sqrt(case.kwargs["eps_sq"])
    rates = []
    for x in X:
        norms = np.linalg.norm(x[None] @ U, axis=-2, keepdims=True)  # (K, 1, p)
        rates.append(host(compression_rate(x, U / np.maximum(norms, 1e-12), eps)))
    return {"R^c": np.stack(rates)}


_MEASURED_MISTAKES = (
    Mistake(
        "no normalisation",
        "the paper's measurement scales each token's head projection XU_k to unit length "
        "first, so R^c does not depend on token size",
        lambda case: _plain_rc(*case.args, case.kwargs["eps_sq"]),
    ),
    Mistake(
        "tokens normalised instead of projections",
        "normalise each token's *projection* on the head (a length-p row of XU_k), not the token itself",
        _tokens_normalised,
    ),
    Mistake(
        "normalised over the tokens",
        "normalise each token's projection over its p coordinates (last axis), not each coordinate over the tokens",
        _normalised_over_tokens,
    ),
    Mistake(
        "d instead of p",
        "wrong p: the constant is p/(N·eps_sq) with the head width p = U.shape[-1]",
        # d/(N·eps_sq) = p/(N·eps_sq·p/d)
        lambda case: _measured_at(case, case.kwargs["eps_sq"] * case.args[1].shape[-1] / case.args[1].shape[-2]),
    ),
    Mistake(
        "eps_sq squared",
        "eps_sq already is ε² (0.01 means ε = 0.1): the constant is p/(N·eps_sq)",
        lambda case: _measured_at(case, case.kwargs["eps_sq"] ** 2),
    ),
    Mistake(
        "mean over heads",
        "sum the heads' rates; you averaged them",
        lambda case: {"R^c": host(measured_per_image(*case.args, **case.kwargs)) / case.args[1].shape[0]},
    ),
    Mistake(
        "averaged over the images (mean vs sum over the batch)",
        "return one value per image, shape (B,); the figure averages them later",
        lambda case: _measured_at(case, case.kwargs["eps_sq"], reduction="mean"),
    ),
)

# --------------------------------------------------------------------------
# 10.2: the non-zero fraction
# --------------------------------------------------------------------------


@st.composite
def _nonzero_spec(draw):
    return {
        "lead": draw(st.sampled_from([(1,), (3,), (2, 2)])),
        "N": draw(st.integers(1, 5)),
        "d": draw(st.integers(1, 6)),
        "seed": draw(seeds),
    }


def _build_nonzero(spec, xp):
    rng = np.random.default_rng(spec["seed"])
    shape = (*spec["lead"], spec["N"], spec["d"])
    Z = np.maximum(rng.standard_normal(shape), 0.0)
    flat = Z.reshape(-1)  # every third non-zero is tiny: ‖Z‖₀ counts them (no threshold)
    flat[np.flatnonzero(flat)[::3]] *= 1e-9
    return Case((host_to(xp, Z),), {}, f"Z {shape}", spec=spec)


def nonzero_per_sample(Z):
    """:func:`minicrate.objective.rates.nonzero_fraction`, one value per sample."""
    return nonzero_fraction(Z, reduction="none")


nonzero_per_sample.__name__ = "nonzero_fraction"


def _ref_nonzero(case):
    return {"fraction": nonzero_per_sample(case.args[0])}


def _fraction(case):
    return host(nonzero_per_sample(case.args[0]))


_NONZERO_MISTAKES = (
    Mistake(
        "fraction of zeros",
        "count the *non-zero* entries (‖Z‖₀), not the zeros",
        lambda case: {"fraction": 1.0 - _fraction(case)},
    ),
    Mistake(
        "one number for the whole batch (mean vs sum over the batch)",
        "return one fraction per sample, shape Z.shape[:-2]; you averaged over the batch",
        lambda case: {"fraction": host(nonzero_fraction(case.args[0], reduction="mean"))},
    ),
    Mistake(
        "per token",
        "divide the sample's non-zero count by N·d (all its tokens and features), one number per sample",
        # every token a (1, d) sample of its own
        lambda case: {"fraction": host(nonzero_per_sample(host(case.args[0])[..., None, :]))},
    ),
    Mistake(
        "a count, not a fraction",
        "divide the number of non-zeros by N·d",
        lambda case: {"fraction": _fraction(case) * math.prod(case.args[0].shape[-2:])},
    ),
)

# --------------------------------------------------------------------------
# 10.3: the layer-wise measurement of a model
# --------------------------------------------------------------------------


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
        raise TypeError('should return a dict with the lists "rc" and "nonzero" (one value per layer)')
    return {
        "rc": np.asarray(returned["rc"], dtype=np.float64),
        "nonzero": np.asarray(returned["nonzero"], dtype=np.float64),
    }


def _ref_layerwise(case):
    return _layerwise_outputs(layerwise(*case.args))


def _per_layer(case, measure):
    """``measure(intermediates, layer)`` (one value per image) averaged over the images, for
    every layer of the library's forward of the case."""
    params, config, images = case.args
    xp = namespace(params["head.W"])
    _, cache = forward(params, xp.asarray(images), config)
    inter = intermediates(cache)
    return np.asarray([host(measure(inter, layer)).mean() for layer in range(config.depth)])


def _rc_of(where):
    """The measured R^c of ``intermediates[where]`` with each layer's bases."""
    return lambda inter, layer: measured_compression_rate(inter[where][layer], inter["U"][layer], reduction="none")


def _nonzero_of(where):
    return lambda inter, layer: nonzero_fraction(inter[where][layer], reduction="none")


def _plain_rc_of_mssa_input(inter, layer):
    return compression_rate(inter["mssa_inputs"][layer], inter["U"][layer], 0.1)


def _summed_over_images(case):
    """Each layer's mean over the images times their number."""
    ref = _ref_layerwise(case)
    n = len(case.args[2])
    return {"rc": n * ref["rc"], "nonzero": n * ref["nonzero"]}


_LAYERWISE_MISTAKES = (
    Mistake(
        "R^c on the layer output",
        "measure R^c where the paper's hook does: on the MSSA input LN₁(Z^ℓ) "
        "(intermediates(cache)['mssa_inputs']), not on the ISTA output",
        lambda case: {"rc": _per_layer(case, _rc_of("ista_outputs"))},
    ),
    Mistake(
        "sparsity of the MSSA input",
        "the sparsity is the non-zero fraction of the ISTA output Z^{ℓ+1} "
        "(intermediates(cache)['ista_outputs']); the LayerNorm output is never sparse",
        lambda case: {"nonzero": _per_layer(case, _nonzero_of("mssa_inputs"))},
    ),
    Mistake(
        "unnormalised R^c",
        "use the paper's measurement (unit-normalised projections, eps_sq = 0.01: "
        "measured_compression_rate), not the plain R^c",
        lambda case: {"rc": _per_layer(case, _plain_rc_of_mssa_input)},
    ),
    Mistake(
        "summed over images (mean vs sum over the batch)",
        "each layer's value is the *mean* over images of the per-image measurements",
        _summed_over_images,
    ),
)

# --------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------


TASKS = [
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
        checks=("per-image values equal minicrate.measured_compression_rate(..., reduction='none')",),
        mistakes=_MEASURED_MISTAKES,
        solution=measured_per_image,
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
        solution=nonzero_per_sample,
    ),
    Task(
        id="10.3",
        function="layerwise",
        notebook="ch10_layerwise_measurement.md",
        book="Chapter 10, opening the white box",
        title="per layer: mean over images of R^c of the MSSA input and of the ISTA output's non-zero fraction",
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
        solution=solution_of("measure.layerwise", "layerwise"),
    ),
]
