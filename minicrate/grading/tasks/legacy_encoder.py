r"""Exercise tasks for the encoder blocks (chapters 5-8): softmax, MSSA, ISTA, LayerNorm, the layer.

Part of the registry of :mod:`minicrate.grading.tasks`.  The references are
minicrate's own blocks; the **known mistakes** are written out below as small
NumPy implementations of the blocks with switches that introduce one mistake
each (``np_mssa_backward(..., transpose_term="missing")`` is shared query/key
attention without the :math:`\bar S^\top` term, and so on).  With every
switch at its default they compute the right thing, which the tests check.

Rows are tokens throughout (``(..., N, d)``).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from minicrate.checks.strategies import away_from_zero, normal, seeds
from minicrate.grading.tasks.common import solution_of
from minicrate.grading.types import Case, FiniteDifferences, Mistake, Task

# --------------------------------------------------------------------------
# NumPy blocks with mistake switches
# --------------------------------------------------------------------------


def _h(x):
    from minicrate.core.backend import to_numpy

    return np.asarray(to_numpy(x), dtype=np.float64)


def _T(x):
    return np.swapaxes(x, -1, -2)


def _batch_count(X):
    """Number of samples: the product of the axes before (N, d)."""
    return int(np.prod(X.shape[:-2])) if X.ndim > 2 else 1


def np_softmax(S, axis=-1, stable=True):
    shifted = S - np.max(S, axis=axis, keepdims=True) if stable else S
    with np.errstate(over="ignore", invalid="ignore"):
        E = np.exp(shifted)
        return E / np.sum(E, axis=axis, keepdims=True)


def np_softmax_backward(dA, A, axis=-1):
    return A * (dA - np.sum(A * dA, axis=axis, keepdims=True))


def heads_to_tokens(O):
    """(..., K, N, p) -> (..., N, K·p)."""
    K, N, p = O.shape[-3:]
    return np.moveaxis(O, -3, -2).reshape(*O.shape[:-3], N, K * p)


def tokens_to_heads(H, K):
    """(..., N, K·p) -> (..., K, N, p)."""
    N, Kp = H.shape[-2:]
    return np.moveaxis(H.reshape(*H.shape[:-2], N, K, Kp // K), -2, -3)


def _mssa_scale(scale, U, which="p"):
    if scale is not None:
        return scale
    return 1.0 / math.sqrt(U.shape[-1] if which == "p" else U.shape[1])


def np_mssa_forward(
    Z,
    U,
    W_out,
    b_out,
    scale=None,
    *,
    softmax_axis=-1,
    scale_from="p",
    use_scale=True,
    concat="heads",
    out_transposed=False,
    bias=True,
):
    """MSSA with switches; returns (Y, intermediates)."""
    s = _mssa_scale(scale, U, scale_from) if use_scale else 1.0
    W = Z[..., None, :, :] @ U  # (..., K, N, p)
    S = s * (W @ _T(W))
    A = np_softmax(S, axis=softmax_axis)
    O = A @ W
    if concat == "heads":
        H = heads_to_tokens(O)
    else:  # reshape without moving the heads axis: interleaves tokens and heads
        H = O.reshape(*O.shape[:-3], O.shape[-2], O.shape[-3] * O.shape[-1])
    Y = H @ (W_out if out_transposed else W_out.T)
    if bias and b_out is not None:
        Y = Y + b_out
    return Y, {"W": W, "A": A, "H": H, "s": s}


def np_mssa_backward(
    dY,
    Z,
    U,
    W_out,
    b_out,
    scale=None,
    *,
    transpose_term="both",
    softmax_axis=-1,
    scale_in_backward=True,
    value_term=True,
    param_reduce="sum",
    dW_out_transposed=False,
    db_reduce="sum",
):
    """Backward of :func:`np_mssa_forward` (right by default) with mistake switches."""
    _, fw = np_mssa_forward(Z, U, W_out, b_out, scale)
    W, A, H, s = fw["W"], fw["A"], fw["H"], fw["s"]
    K, d, p = U.shape
    dH = dY @ W_out
    dW_out = dY.reshape(-1, d).T @ H.reshape(-1, K * p)
    db = dY.reshape(-1, d).sum(0)
    dO = tokens_to_heads(dH, K)
    dA = dO @ _T(W)
    dS = np_softmax_backward(dA, A, axis=softmax_axis)
    sS = s if scale_in_backward else 1.0
    score_path = {"both": dS + _T(dS), "missing": dS, "only_transpose": _T(dS)}[transpose_term]
    dW = sS * (score_path @ W) + (_T(A) @ dO if value_term else 0.0)
    dZ = np.sum(dW @ _T(U), axis=-3)
    dU = (_T(Z[..., None, :, :]) @ dW).reshape(-1, K, d, p).sum(0)
    B = _batch_count(Z)
    if param_reduce == "mean":
        dU, dW_out, db = dU / B, dW_out / B, db / B
    if db_reduce == "none":
        db = dY
    if dW_out_transposed:
        dW_out = dW_out.T
    return dZ, {"U": dU, "W_out": dW_out, "b_out": db}


def np_ista_forward(X, D, eta=0.1, lam=0.1, *, variant="right"):
    """ISTA step, row form, with mistake variants; returns (Y, P)."""
    if variant == "swapped_D":
        Q = X + eta * (X @ D.T - X @ D @ D.T)
    elif variant == "no_warm_start":
        Q = eta * (X @ D - X @ D.T @ D)
    else:
        Q = X + eta * (X @ D - X @ D.T @ D)
    if variant == "plus_lambda":
        P = Q + eta * lam
    elif variant == "lambda_not_eta":
        P = Q - lam
    else:
        P = Q - eta * lam
    if variant == "no_relu":
        return P, P
    if variant == "two_sided":
        return np.sign(Q) * np.maximum(np.abs(Q) - eta * lam, 0.0), P
    return np.maximum(P, 0.0), P


def np_ista_backward(
    dY,
    X,
    D,
    eta=0.1,
    lam=0.1,
    *,
    mask=True,
    dD_reduce="sum",
    dD_transpose_term=True,
    dX_transposed=True,
):
    _, P = np_ista_forward(X, D, eta, lam)
    dP = dY * (P > 0) if mask else dY
    if dX_transposed:
        dX = dP + eta * (dP @ D.T - dP @ D.T @ D)
    else:  # the forward's map applied instead of its transpose
        dX = dP + eta * (dP @ D - dP @ D.T @ D)
    d = X.shape[-1]
    G = X.reshape(-1, d).T @ dP.reshape(-1, d)
    dD = eta * (G - D @ (G + G.T)) if dD_transpose_term else eta * (G - D @ G)
    if dD_reduce == "mean":
        dD = dD / _batch_count(X)
    return dX, {"D": dD}


def np_layernorm_forward(
    X, gamma, beta, eps=1e-5, *, ddof=0, eps_outside=False, axis=-1, affine=True, swap_affine=False
):
    mu = X.mean(axis=axis, keepdims=True)
    var = (
        X.var(axis=axis, keepdims=True, ddof=ddof)
        if X.shape[axis] > ddof
        else np.full_like(mu, np.nan)
    )
    std = np.sqrt(var) + eps if eps_outside else np.sqrt(var + eps)
    X_hat = (X - mu) / std
    if not affine:
        return X_hat, X_hat
    if swap_affine:
        return beta * X_hat + gamma, X_hat
    return gamma * X_hat + beta, X_hat


def np_layernorm_backward(
    dY,
    X,
    gamma,
    eps=1e-5,
    *,
    reduce="sum",
    mean_term=True,
    proj_term=True,
    use_gamma=True,
    param_shape="reduced",
):
    mu = X.mean(-1, keepdims=True)
    inv = 1.0 / np.sqrt(X.var(-1, keepdims=True) + eps)
    X_hat = (X - mu) * inv
    g = gamma * dY if use_gamma else dY
    dX = g
    if mean_term:
        dX = dX - g.mean(-1, keepdims=True)
    if proj_term:
        dX = dX - X_hat * (g * X_hat).mean(-1, keepdims=True)
    dX = inv * dX
    d = X.shape[-1]
    dgamma, dbeta = (dY * X_hat).reshape(-1, d), dY.reshape(-1, d)
    if param_shape == "per_token":
        return dX, {"gamma": dY * X_hat, "beta": dY}
    if reduce == "mean":
        return dX, {"gamma": dgamma.mean(0), "beta": dbeta.mean(0)}
    return dX, {"gamma": dgamma.sum(0), "beta": dbeta.sum(0)}


LAYER_KEYS = ("ln1_gamma", "ln1_beta", "U", "W_out", "b_out", "ln2_gamma", "ln2_beta", "D")


def np_encoder_forward(
    Z,
    P,
    scale=None,
    eta=0.1,
    lam=0.1,
    *,
    residual="raw",
    ln2=True,
    ista_residual=False,
    swap_ln=False,
):
    """Official CRATE layer (pre-LN, untied) with mistake switches; returns (Y, parts)."""
    a, b = ("ln2", "ln1") if swap_ln else ("ln1", "ln2")
    X1, _ = np_layernorm_forward(Z, P[f"{a}_gamma"], P[f"{a}_beta"])
    M, _ = np_mssa_forward(X1, P["U"], P["W_out"], P["b_out"], scale)
    Z_half = {"raw": Z + M, "none": M, "normalised": X1 + M}[residual]
    X2 = np_layernorm_forward(Z_half, P[f"{b}_gamma"], P[f"{b}_beta"])[0] if ln2 else Z_half
    Y, Pre = np_ista_forward(X2, P["D"], eta, lam)
    if ista_residual:
        Y = Y + Z_half
    return Y, {"X1": X1, "Z_half": Z_half, "X2": X2, "P": Pre}


def np_encoder_backward(
    dY,
    Z,
    P,
    scale=None,
    eta=0.1,
    lam=0.1,
    *,
    skip=True,
    branch=True,
    through_ln2=True,
    transpose_term="both",
    mask=True,
):
    """Backward of :func:`np_encoder_forward` (right by default) with mistake switches."""
    _, parts = np_encoder_forward(Z, P, scale, eta, lam)
    X1, Z_half, X2 = parts["X1"], parts["Z_half"], parts["X2"]
    grads = {}
    dX2, g = np_ista_backward(dY, X2, P["D"], eta, lam, mask=mask)
    grads["D"] = g["D"]
    dZh, g = np_layernorm_backward(dX2, Z_half, P["ln2_gamma"])
    grads["ln2_gamma"], grads["ln2_beta"] = g["gamma"], g["beta"]
    if not through_ln2:
        dZh = dX2
    dX1, g = np_mssa_backward(
        dZh, X1, P["U"], P["W_out"], P["b_out"], scale, transpose_term=transpose_term
    )
    grads.update(g)
    dZb, g = np_layernorm_backward(dX1, Z, P["ln1_gamma"])
    grads["ln1_gamma"], grads["ln1_beta"] = g["gamma"], g["beta"]
    dZ = (dZh if skip else 0.0) + (dZb if branch else 0.0)
    return dZ, grads


# --------------------------------------------------------------------------
# Output normalisers
# --------------------------------------------------------------------------


def _forward_output(returned):
    if isinstance(returned, tuple) and len(returned) == 2:
        return {"Y": returned[0]}
    raise TypeError(
        f"should return a tuple (Y, cache), got {type(returned).__name__}"
        + (f" of length {len(returned)}" if isinstance(returned, (tuple, list)) else "")
    )


def _backward_outputs(dname, keys):
    def outputs(returned):
        if not (isinstance(returned, (tuple, list)) and len(returned) == 2):
            raise TypeError(
                f"should return a tuple ({dname}, grads), got {type(returned).__name__}"
            )
        dx, grads = returned
        if not isinstance(grads, dict):
            raise TypeError(
                f"grads should be a dict keyed {list(keys)}, got {type(grads).__name__}"
            )
        out = {dname: dx}
        for k in keys:
            if k in grads:
                out[f"grads[{k!r}]"] = grads[k]
        return out

    return outputs


def _expected_backward(dname, keys, dx, grads):
    out = {dname: dx}
    out.update({f"grads[{k!r}]": grads[k] for k in keys})
    return out


def _label(**arrays):
    parts = []
    for k, v in arrays.items():
        parts.append(f"{k} {tuple(v.shape)}" if hasattr(v, "shape") else f"{k}={v}")
    return ", ".join(parts)


def _lead(spec):
    return (spec["B"],) if spec["B"] else ()


# --------------------------------------------------------------------------
# Chapter 5: softmax (5.1) and the MSSA forward (5.2)
# --------------------------------------------------------------------------


@st.composite
def _softmax_spec(draw):
    return {
        "lead": draw(st.sampled_from([(), (2,), (2, 3)])),
        "N": draw(st.integers(1, 6)),
        "big": False,
        "seed": draw(seeds),
    }


def _build_softmax(spec, xp):
    shape = (*spec["lead"], spec["N"], spec["N"])
    S = normal(xp, shape, spec["seed"], scale=1000.0 if spec["big"] else 2.0)
    return Case(
        (S,), {}, _label(S=S) + (" with logits of size ~1000" if spec["big"] else ""), spec=spec
    )


def _ref_softmax(case):
    from minicrate.ops.functional import softmax

    return {"A": softmax(case.args[0], axis=-1)}


def _softmax_variant(**kw):
    return lambda case: {"A": np_softmax(_h(case.args[0]), **kw)}


SOFTMAX_AXIS_HINT = (
    "softmax over the wrong axis: each row (last axis: token i's weights over "
    "the tokens j it attends to) must sum to 1; you normalised the columns"
)

_SOFTMAX_MISTAKES = (
    Mistake("softmax over the wrong axis", SOFTMAX_AXIS_HINT, _softmax_variant(axis=-2)),
    Mistake(
        "unstable softmax (no max subtraction)",
        "exp overflows for large logits: subtract each row's maximum before exp (it cancels "
        "in the ratio, so the result is unchanged)",
        _softmax_variant(stable=False),
    ),
    Mistake(
        "no normalisation",
        "softmax divides exp(s) by the row's sum of exp(s)",
        lambda case: {"A": np.exp(_h(case.args[0]) - np.max(_h(case.args[0]), -1, keepdims=True))},
    ),
    Mistake(
        "softmax over the whole matrix",
        "normalise each row on its own (sum over the last axis with keepdims=True), not the "
        "whole matrix",
        lambda case: {
            "A": (lambda E: E / E.sum(axis=(-1, -2), keepdims=True))(
                np.exp(_h(case.args[0]) - _h(case.args[0]).max(axis=(-1, -2), keepdims=True))
            )
        },
    ),
)


@st.composite
def _mssa_spec(draw):
    K, p = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return {
        "B": draw(st.integers(0, 2)),
        "N": draw(st.integers(1, 5)),
        "K": K,
        "p": p,
        "scale": draw(st.sampled_from([None, None, 1.0, 0.5])),
        "seed": draw(seeds),
    }


_MSSA_EXPLICIT = (
    {"B": 0, "N": 1, "K": 1, "p": 1, "scale": None, "seed": 11},
    {"B": 2, "N": 4, "K": 2, "p": 3, "scale": None, "seed": 12},
    {"B": 1, "N": 3, "K": 3, "p": 2, "scale": 1.0, "seed": 13},
)


def _build_mssa(spec, xp):
    K, p = spec["K"], spec["p"]
    d = K * p
    Z = normal(xp, (*_lead(spec), spec["N"], d), spec["seed"])
    U = normal(xp, (K, d, p), spec["seed"] + 1, scale=1.0 / math.sqrt(d))
    W_out = normal(xp, (d, K * p), spec["seed"] + 2, scale=1.0 / math.sqrt(K * p))
    b_out = normal(xp, (d,), spec["seed"] + 3, scale=0.3)
    dY = normal(xp, (*_lead(spec), spec["N"], d), spec["seed"] + 4)
    return Case(
        (Z, U, W_out, b_out),
        {"scale": spec["scale"]},
        _label(Z=Z, U=U, scale=spec["scale"]),
        dout=dY,
        spec=spec,
    )


def _mssa_np_args(case):
    Z, U, W_out, b_out = (_h(a) for a in case.args)
    return Z, U, W_out, b_out, case.kwargs["scale"]


def _ref_mssa_forward(case):
    from minicrate.layers.mssa import mssa_forward

    return {"Y": mssa_forward(*case.args, **case.kwargs)[0]}


def _mssa_fwd_variant(**kw):
    def wrong(case):
        return {"Y": np_mssa_forward(*_mssa_np_args(case), **kw)[0]}

    return wrong


_MSSA_FORWARD_MISTAKES = (
    Mistake(
        "softmax over the wrong axis",
        SOFTMAX_AXIS_HINT + " (A = softmax(S, axis=-1))",
        _mssa_fwd_variant(softmax_axis=-2),
    ),
    Mistake(
        "1/√d instead of 1/√p",
        "wrong p: the default temperature is 1/√p with the head width p = U.shape[-1], not 1/√d",
        _mssa_fwd_variant(scale_from="d"),
    ),
    Mistake(
        "no temperature",
        "multiply the scores by scale (1/√p when scale is None) before the softmax",
        _mssa_fwd_variant(use_scale=False),
    ),
    Mistake(
        "heads concatenated in the wrong order",
        "concatenate the heads along the features: move the heads axis next to the features "
        "((..., K, N, p) -> (..., N, K, p)) before reshaping to (..., N, K·p)",
        _mssa_fwd_variant(concat="interleaved"),
    ),
    Mistake(
        "W_out not transposed",
        "W_out is stored (d, K·p) like torch's nn.Linear weight: Y = H W_outᵀ + b_out",
        _mssa_fwd_variant(out_transposed=True),
    ),
    Mistake("missing bias", "add the output bias b_out", _mssa_fwd_variant(bias=False)),
)


def _mssa_fd_forward(Z, U, W_out, b_out, scale):
    from minicrate.layers.mssa import mssa_forward

    return mssa_forward(Z, U, W_out, b_out, scale=scale)


# --------------------------------------------------------------------------
# Chapter 8: softmax backward (8.1) and MSSA backward (8.2)
# --------------------------------------------------------------------------


@st.composite
def _softmax_bwd_spec(draw):
    return {
        "lead": draw(st.sampled_from([(), (2,), (2, 2)])),
        "N": draw(st.integers(1, 5)),
        "seed": draw(seeds),
    }


def _build_softmax_bwd(spec, xp):
    from minicrate.ops.functional import softmax

    shape = (*spec["lead"], spec["N"], spec["N"])
    S = normal(xp, shape, spec["seed"], scale=1.5)
    A = softmax(S, axis=-1)
    dA = normal(xp, shape, spec["seed"] + 1)
    return Case((dA, A), {}, _label(dA=dA, A=A), dout=dA, spec=spec, extra={"S": S})


def _ref_softmax_bwd(case):
    from minicrate.ops.functional import softmax_backward

    return {"dS": softmax_backward(*case.args, axis=-1)}


def _softmax_fd_forward(S):
    from minicrate.ops.functional import softmax

    return softmax(S, axis=-1)


def _sbwd_variant(fn):
    return lambda case: {"dS": fn(_h(case.args[0]), _h(case.args[1]))}


_SOFTMAX_BWD_MISTAKES = (
    Mistake(
        "sum over the wrong axis",
        "each row of A is its own softmax, so subtract each *row's* ⟨a, ā⟩: sum A ⊙ dA over "
        "the last axis (keepdims=True), not over the rows",
        _sbwd_variant(lambda dA, A: np_softmax_backward(dA, A, axis=-2)),
    ),
    Mistake(
        "elementwise derivative only",
        "the softmax is not elementwise: each output depends on the whole row, so "
        "dS = A ⊙ (dA − rowsum(A ⊙ dA)); you dropped the rowsum term",
        _sbwd_variant(lambda dA, A: A * dA),
    ),
    Mistake(
        "missing the outer A ⊙",
        "dS = A ⊙ (dA − rowsum(A ⊙ dA)): multiply by A after subtracting",
        _sbwd_variant(lambda dA, A: dA - np.sum(A * dA, -1, keepdims=True)),
    ),
    Mistake(
        "Jacobian transposed (rowsum of dA)",
        "the subtracted term is rowsum(A ⊙ dA), the inner product of the row of A with the "
        "row of dA",
        _sbwd_variant(lambda dA, A: A * (dA - np.sum(dA, -1, keepdims=True))),
    ),
)

MSSA_KEYS = ("U", "W_out", "b_out")


def _ref_mssa_backward(case):
    from minicrate.layers.mssa import mssa_backward, mssa_forward

    _, cache = mssa_forward(*case.args, **case.kwargs)
    dZ, grads = mssa_backward(case.dout, cache)
    return _expected_backward("dZ", MSSA_KEYS, dZ, grads)


def _mssa_bwd_variant(keys=("dZ", "U", "W_out", "b_out"), **kw):
    def wrong(case):
        dZ, g = np_mssa_backward(_h(case.dout), *_mssa_np_args(case), **kw)
        out = _expected_backward("dZ", MSSA_KEYS, dZ, g)
        return {
            k: v
            for k, v in out.items()
            if k == "dZ" and "dZ" in keys or any(k == f"grads[{n!r}]" for n in keys)
        }

    return wrong


SHARED_QK_HINT = (
    "the missing S̄ᵀ term in shared query/key attention: S = s·W_kW_kᵀ uses W_k twice (query "
    "*and* key), so dW_k = Aᵀ dO_k + s (S̄ + S̄ᵀ) W_k; with only S̄ (or only S̄ᵀ) you "
    "differentiated one of the two uses"
)

_MSSA_BACKWARD_MISTAKES = (
    Mistake(
        "missing S̄ᵀ term (shared query/key)",
        SHARED_QK_HINT,
        _mssa_bwd_variant(("dZ", "U"), transpose_term="missing"),
    ),
    Mistake(
        "only the S̄ᵀ term (shared query/key)",
        SHARED_QK_HINT,
        _mssa_bwd_variant(("dZ", "U"), transpose_term="only_transpose"),
    ),
    Mistake(
        "softmax backward over the wrong axis",
        "softmax over the wrong axis in the backward: the forward normalised each row, so "
        "S̄ = A ⊙ (Ā − rowsum(A ⊙ Ā)) sums over the last axis",
        _mssa_bwd_variant(("dZ", "U"), softmax_axis=-2),
    ),
    Mistake(
        "temperature missing in the backward",
        "the scores are S = s·W_kW_kᵀ, so the score path of dW_k carries the factor s too",
        _mssa_bwd_variant(("dZ", "U"), scale_in_backward=False),
    ),
    Mistake(
        "value path missing",
        "W_k is also the value: dW_k includes Aᵀ dO_k",
        _mssa_bwd_variant(("dZ", "U"), value_term=False),
    ),
    Mistake(
        "parameter gradients averaged over the batch (mean vs sum over the batch)",
        "the parameters are shared by every sample, so their gradients *sum* the samples' "
        "contributions; you averaged over the batch",
        _mssa_bwd_variant(("U", "W_out", "b_out"), param_reduce="mean"),
    ),
    Mistake(
        "dW_out transposed",
        "dW_out has W_out's shape (d, K·p): dW_out = Σ dYᵀ H (tokens and batch summed)",
        _mssa_bwd_variant(("W_out",), dW_out_transposed=True),
    ),
    Mistake(
        "db_out not summed",
        "b_out is added to every token of every sample, so db_out sums dY over the tokens "
        "and the batch: shape (d,)",
        _mssa_bwd_variant(("b_out",), db_reduce="none"),
    ),
)


def _mssa_fd_inputs(case):
    Z, U, W_out, b_out = case.args
    return {"Z": Z, "U": U, "W_out": W_out, "b_out": b_out, "scale": case.kwargs["scale"]}


# --------------------------------------------------------------------------
# Chapter 6: ISTA forward (6.1) and backward (6.2)
# --------------------------------------------------------------------------


@st.composite
def _ista_spec(draw):
    return {
        "B": draw(st.integers(0, 2)),
        "N": draw(st.integers(1, 5)),
        "d": draw(st.integers(1, 6)),
        "eta": draw(st.sampled_from([0.1, 0.05, 0.2])),
        "lam": draw(st.sampled_from([0.1, 0.5])),
        "seed": draw(seeds),
    }


_ISTA_EXPLICIT = (
    {"B": 0, "N": 1, "d": 1, "eta": 0.1, "lam": 0.1, "seed": 21},
    {"B": 2, "N": 3, "d": 4, "eta": 0.1, "lam": 0.5, "seed": 22},
)


def _build_ista(spec, xp):
    """X chosen so that every pre-activation P is at least 0.1 away from the ReLU kink."""
    from minicrate.core.backend import host_to

    d, eta, lam = spec["d"], spec["eta"], spec["lam"]
    rng = np.random.default_rng(spec["seed"])
    D = rng.standard_normal((d, d)) / math.sqrt(d)
    shape = (*_lead(spec), spec["N"], d)
    P = _h(away_from_zero(xp, shape, spec["seed"] + 1, margin=0.1))
    M = np.eye(d) + eta * (D - D.T @ D)  # P = X M − ηλ
    X = np.linalg.solve(M.T, (P + eta * lam).reshape(-1, d).T).T.reshape(shape)
    dY = rng.standard_normal(shape)
    X, D, dY = host_to(xp, X), host_to(xp, D), host_to(xp, dY)
    return Case(
        (X, D), {"eta": eta, "lam": lam}, _label(X=X, D=D, eta=eta, lam=lam), dout=dY, spec=spec
    )


def _ista_np(case):
    return _h(case.args[0]), _h(case.args[1]), case.kwargs["eta"], case.kwargs["lam"]


def _ref_ista_forward(case):
    from minicrate.layers.ista import ista_forward

    return {"Y": ista_forward(*case.args, **case.kwargs)[0]}


def _ista_fwd_variant(variant):
    return lambda case: {"Y": np_ista_forward(*_ista_np(case), variant=variant)[0]}


_ISTA_FORWARD_MISTAKES = (
    Mistake(
        "+ηλ instead of −ηλ",
        "the threshold is subtracted: Y = ReLU(X + η(XD − XDᵀD) − ηλ) (book chapter 7 "
        "prints +; that is a typo)",
        _ista_fwd_variant("plus_lambda"),
    ),
    Mistake(
        "D and Dᵀ swapped",
        "with tokens as rows the paper's Dᵀ(Z − DZ) reads (X − XDᵀ)D = XD − XDᵀD; you have "
        "D and Dᵀ swapped",
        _ista_fwd_variant("swapped_D"),
    ),
    Mistake(
        "two-sided soft threshold",
        "the step is non-negative ISTA: its prox is the one-sided threshold "
        "max(x − ηλ, 0) (a ReLU), not sign(x)·max(|x| − ηλ, 0)",
        _ista_fwd_variant("two_sided"),
    ),
    Mistake(
        "forgetting the ReLU",
        "the output is ReLU(P): negative entries become 0",
        _ista_fwd_variant("no_relu"),
    ),
    Mistake(
        "missing warm start",
        "the step starts from A₀ = X, so X itself is part of the update: X + η(XD − XDᵀD) − ηλ",
        _ista_fwd_variant("no_warm_start"),
    ),
    Mistake(
        "threshold λ instead of ηλ",
        "the proximal step of ηλ‖·‖₁ thresholds at ηλ (step size times weight), not λ",
        _ista_fwd_variant("lambda_not_eta"),
    ),
)


def _ista_bwd_variant(keys, **kw):
    def wrong(case):
        dX, g = np_ista_backward(_h(case.dout), *_ista_np(case), **kw)
        out = {"dX": dX, "grads['D']": g["D"]}
        return {k: v for k, v in out.items() if k in keys}

    return wrong


def _ref_ista_backward(case):
    from minicrate.layers.ista import ista_backward, ista_forward

    _, cache = ista_forward(*case.args, **case.kwargs)
    dX, g = ista_backward(case.dout, cache)
    return {"dX": dX, "grads['D']": g["D"]}


RELU_MASK_HINT = (
    "forgetting the ReLU mask: the ReLU passes gradient only where its input P was "
    "positive, so P̄ = Ȳ ⊙ 1[P > 0] before anything else"
)

_ISTA_BACKWARD_MISTAKES = (
    Mistake(
        "forgetting the ReLU mask",
        RELU_MASK_HINT,
        _ista_bwd_variant(("dX", "grads['D']"), mask=False),
    ),
    Mistake(
        "dD averaged over the batch (mean vs sum over the batch)",
        "D is shared by every sample, so dD sums their contributions; you averaged over the batch",
        _ista_bwd_variant(("grads['D']",), dD_reduce="mean"),
    ),
    Mistake(
        "dD missing the transposed term",
        "D appears twice in XDᵀD, so with G = XᵀP̄: dD = η(G − D(G + Gᵀ)); you differentiated "
        "only one of the two",
        _ista_bwd_variant(("grads['D']",), dD_transpose_term=False),
    ),
    Mistake(
        "forward map instead of its transpose",
        "the backward applies the *transpose* of X ↦ X(I + ηD − ηDᵀD): dX = P̄ + η(P̄Dᵀ − P̄DᵀD)",
        _ista_bwd_variant(("dX",), dX_transposed=False),
    ),
)


def _ista_fd_forward(X, D, eta, lam):
    from minicrate.layers.ista import ista_forward

    return ista_forward(X, D, eta=eta, lam=lam)


# --------------------------------------------------------------------------
# Chapter 7: LayerNorm (7.1, 7.2) and the encoder layer (7.3, 7.4)
# --------------------------------------------------------------------------


@st.composite
def _ln_spec(draw):
    return {
        "lead": draw(st.sampled_from([(), (3,), (2, 3)])),
        "d": draw(st.integers(2, 6)),
        "eps": draw(st.sampled_from([1e-5, 0.1])),
        "seed": draw(seeds),
    }


_LN_EXPLICIT = (
    {"lead": (2, 3), "d": 4, "eps": 1e-5, "seed": 31},
    {"lead": (1,), "d": 2, "eps": 0.1, "seed": 32},
)


def _build_ln(spec, xp):
    shape = (*spec["lead"], spec["d"])
    X = normal(xp, shape, spec["seed"], scale=2.0)
    X = X + normal(xp, shape[:-1] + (1,), spec["seed"] + 1)  # tokens with their own offsets
    gamma = 1.0 + normal(xp, (spec["d"],), spec["seed"] + 2, scale=0.3)
    beta = normal(xp, (spec["d"],), spec["seed"] + 3, scale=0.3)
    dY = normal(xp, shape, spec["seed"] + 4)
    return Case(
        (X, gamma, beta), {"eps": spec["eps"]}, _label(X=X, eps=spec["eps"]), dout=dY, spec=spec
    )


def _ln_np(case):
    X, gamma, beta = (_h(a) for a in case.args)
    return X, gamma, beta, case.kwargs["eps"]


def _ref_ln_forward(case):
    from minicrate.ops.layernorm import layernorm_forward

    return {"Y": layernorm_forward(*case.args, **case.kwargs)[0]}


def _ln_fwd_variant(**kw):
    return lambda case: {"Y": np_layernorm_forward(*_ln_np(case), **kw)[0]}


_LN_FORWARD_MISTAKES = (
    Mistake(
        "unbiased variance",
        "LayerNorm uses the biased variance, the mean of (x − μ)² over the d features "
        "(divide by d, not d − 1), like torch.nn.LayerNorm",
        _ln_fwd_variant(ddof=1),
    ),
    Mistake(
        "ε outside the square root",
        "divide by √(σ² + ε), not √σ² + ε",
        _ln_fwd_variant(eps_outside=True),
    ),
    Mistake(
        "normalised over the tokens",
        "normalise each token over its d features (the last axis), not each feature over "
        "the tokens",
        _ln_fwd_variant(axis=-2),
    ),
    Mistake("no affine", "finish with γ ⊙ x̂ + β", _ln_fwd_variant(affine=False)),
    Mistake(
        "γ and β swapped", "γ scales and β shifts: y = γ ⊙ x̂ + β", _ln_fwd_variant(swap_affine=True)
    ),
)


def _ref_ln_backward(case):
    from minicrate.ops.layernorm import layernorm_backward, layernorm_forward

    _, cache = layernorm_forward(*case.args, **case.kwargs)
    dX, g = layernorm_backward(case.dout, cache)
    return _expected_backward("dX", ("gamma", "beta"), dX, g)


def _ln_bwd_variant(keys, **kw):
    def wrong(case):
        X, gamma, _, eps = _ln_np(case)
        dX, g = np_layernorm_backward(_h(case.dout), X, gamma, eps, **kw)
        out = _expected_backward("dX", ("gamma", "beta"), dX, g)
        return {k: v for k, v in out.items() if k in keys}

    return wrong


_LN_BACKWARD_MISTAKES = (
    Mistake(
        "dγ, dβ averaged (mean vs sum over the batch)",
        "γ and β are shared by every token of every sample, so their gradients sum over "
        "all of them; you averaged",
        _ln_bwd_variant(("grads['gamma']", "grads['beta']"), reduce="mean"),
    ),
    Mistake(
        "dγ, dβ not summed",
        "γ and β have shape (d,), and so do their gradients: sum over every axis but the last",
        _ln_bwd_variant(("grads['gamma']", "grads['beta']"), param_shape="per_token"),
    ),
    Mistake(
        "missing the x̂ term",
        "μ and σ depend on x too: dX = (ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)) / √(σ² + ε) with "
        "ĝ = γ ⊙ dY; you dropped the x̂ ⊙ mean(ĝ ⊙ x̂) term (the path through σ)",
        _ln_bwd_variant(("dX",), proj_term=False),
    ),
    Mistake(
        "missing the mean term",
        "the mean μ depends on x too: subtract mean(ĝ) (the path through μ)",
        _ln_bwd_variant(("dX",), mean_term=False),
    ),
    Mistake(
        "forgot γ",
        "the upstream gradient reaches x̂ through γ: use ĝ = γ ⊙ dY",
        _ln_bwd_variant(("dX",), use_gamma=False),
    ),
)


def _ln_fd_forward(X, gamma, beta, eps):
    from minicrate.ops.layernorm import layernorm_forward

    return layernorm_forward(X, gamma, beta, eps=eps)


@st.composite
def _layer_spec(draw):
    K, p = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return {
        "B": draw(st.integers(0, 2)),
        "N": draw(st.integers(1, 4)),
        "K": K,
        "p": max(p, 2) if K == 1 else p,
        "seed": draw(seeds),
    }


_LAYER_EXPLICIT = (
    {"B": 2, "N": 3, "K": 2, "p": 2, "seed": 41},
    {"B": 0, "N": 1, "K": 1, "p": 2, "seed": 42},
)


def _layer_params(K, p, seed, rng_host):
    d = K * p
    r = np.random.default_rng(seed)
    return {
        "ln1_gamma": 1.0 + 0.2 * r.standard_normal(d),
        "ln1_beta": 0.2 * r.standard_normal(d),
        "U": r.standard_normal((K, d, p)) / math.sqrt(d),
        "W_out": r.standard_normal((d, K * p)) / math.sqrt(K * p),
        "b_out": 0.2 * r.standard_normal(d),
        "ln2_gamma": 1.0 + 0.2 * r.standard_normal(d),
        "ln2_beta": 0.2 * r.standard_normal(d),
        "D": r.standard_normal((d, d)) / math.sqrt(d),
    }


def _build_layer(spec, xp):
    """Seeds are tried in turn until every ISTA pre-activation is 0.05 away from the kink."""
    from minicrate.core.backend import host_to

    K, p = spec["K"], spec["p"]
    d = K * p
    shape = (*_lead(spec), spec["N"], d)
    for attempt in range(200):
        seed = spec["seed"] + 1000 * attempt
        params = _layer_params(K, p, seed, None)
        Z = np.random.default_rng(seed + 1).standard_normal(shape)
        _, parts = np_encoder_forward(Z, params)
        if np.min(np.abs(parts["P"])) > 0.05:
            break
    dY = np.random.default_rng(seed + 2).standard_normal(shape)
    params_x = {k: host_to(xp, v) for k, v in params.items()}
    Z_x = host_to(xp, Z)
    return Case((Z_x, params_x), {}, f"Z {shape}, K={K}, p={p}", dout=host_to(xp, dY), spec=spec)


def _layer_np(case):
    return _h(case.args[0]), {k: _h(v) for k, v in case.args[1].items()}


def _ref_layer_forward(case):
    from minicrate.layers.encoder import encoder_layer_forward

    return {"Y": encoder_layer_forward(*case.args)[0]}


def _layer_fwd_variant(**kw):
    return lambda case: {"Y": np_encoder_forward(*_layer_np(case), **kw)[0]}


_LAYER_FORWARD_MISTAKES = (
    Mistake(
        "no residual around MSSA",
        "the compression step is a residual update: Z½ = Z + MSSA(LN₁(Z))",
        _layer_fwd_variant(residual="none"),
    ),
    Mistake(
        "residual from the normalised input",
        "the skip carries the un-normalised Z: Z½ = Z + MSSA(LN₁(Z)), not LN₁(Z) + MSSA(...)",
        _layer_fwd_variant(residual="normalised"),
    ),
    Mistake(
        "residual around ISTA",
        "there is no skip around ISTA in CRATE (its warm start is the identity path): "
        "Z' = ISTA(LN₂(Z½))",
        _layer_fwd_variant(ista_residual=True),
    ),
    Mistake(
        "no LayerNorm before ISTA",
        "ISTA's input is LN₂(Z½), normalised with ln2_gamma/ln2_beta",
        _layer_fwd_variant(ln2=False),
    ),
    Mistake(
        "LayerNorms swapped",
        "ln1_* normalises the MSSA input, ln2_* the ISTA input",
        _layer_fwd_variant(swap_ln=True),
    ),
)


def _ref_layer_backward(case):
    from minicrate.layers.encoder import encoder_layer_backward, encoder_layer_forward

    _, cache = encoder_layer_forward(*case.args)
    dZ, grads = encoder_layer_backward(case.dout, cache)
    return _expected_backward("dZ", LAYER_KEYS, dZ, grads)


def _layer_bwd_variant(keys, **kw):
    def wrong(case):
        Z, P = _layer_np(case)
        dZ, g = np_encoder_backward(_h(case.dout), Z, P, **kw)
        out = _expected_backward("dZ", LAYER_KEYS, dZ, g)
        return {k: v for k, v in out.items() if k in keys}

    return wrong


_ALL = ("dZ",) + tuple(f"grads[{k!r}]" for k in LAYER_KEYS)
_BEFORE_ISTA = ("dZ",) + tuple(
    f"grads[{k!r}]"
    for k in ("ln1_gamma", "ln1_beta", "U", "W_out", "b_out", "ln2_gamma", "ln2_beta")
)

_LAYER_BACKWARD_MISTAKES = (
    Mistake(
        "missing the skip gradient",
        "Z½ = Z + MSSA(LN₁(Z)): the skip passes dZ½ straight to dZ, so dZ = dZ½ + "
        "LN₁ᵀ(MSSAᵀ(dZ½)); you kept only the branch",
        _layer_bwd_variant(("dZ",), skip=False),
    ),
    Mistake(
        "missing the MSSA branch",
        "dZ = dZ½ + LN₁ᵀ(MSSAᵀ(dZ½)): the branch through MSSA and LN₁ contributes too",
        _layer_bwd_variant(("dZ",), branch=False),
    ),
    Mistake(
        "skipped LN₂ in the backward",
        "ISTA's input is LN₂(Z½): backpropagate through LN₂ (layernorm_backward) to get dZ½",
        _layer_bwd_variant(_BEFORE_ISTA[:6], through_ln2=False),
    ),
    Mistake(
        "missing S̄ᵀ term (shared query/key)",
        SHARED_QK_HINT,
        _layer_bwd_variant(
            ("dZ", "grads['ln1_gamma']", "grads['ln1_beta']", "grads['U']"),
            transpose_term="missing",
        ),
    ),
    Mistake("forgetting the ReLU mask", RELU_MASK_HINT, _layer_bwd_variant(_ALL, mask=False)),
)


def _layer_fd_inputs(case):
    Z, params = case.args
    return {"Z": Z, **params}


def _layer_fd_forward(Z, **params):
    from minicrate.layers.encoder import encoder_layer_forward

    return encoder_layer_forward(Z, params)


def _ref_layer_fwd_fn(Z, params, **kw):
    from minicrate.layers.encoder import encoder_layer_forward

    return encoder_layer_forward(Z, params, **kw)


def _ref_mssa_fwd_fn(Z, U, W_out, b_out, *, scale=None):
    from minicrate.layers.mssa import mssa_forward

    return mssa_forward(Z, U, W_out, b_out, scale=scale)


def _ref_ista_fwd_fn(X, D, *, eta=0.1, lam=0.1):
    from minicrate.layers.ista import ista_forward

    return ista_forward(X, D, eta=eta, lam=lam)


def _ref_ln_fwd_fn(X, gamma, beta, *, eps=1e-5):
    from minicrate.ops.layernorm import layernorm_forward

    return layernorm_forward(X, gamma, beta, eps=eps)


def _sol_softmax(S):
    from minicrate.ops.functional import softmax

    return softmax(S, axis=-1)


def _sol_softmax_backward(dA, A):
    from minicrate.ops.functional import softmax_backward

    return softmax_backward(dA, A, axis=-1)


def _sol(module, name):
    return solution_of(module, name)


# --------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------

ENCODER_TASKS = [
    Task(
        id="5.1",
        function="softmax",
        notebook="ch05_mssa_forward.md",
        book="Chapter 5, compression: from ∇R^c to MSSA",
        title="row softmax A_ij = exp(S_ij − max_j S_ij) / Σ_j exp(S_ij − max_j S_ij), stable",
        kind="function",
        strategy=_softmax_spec(),
        build=_build_softmax,
        reference=_ref_softmax,
        outputs=lambda r: {"A": r},
        argnames=("S",),
        examples=6,
        explicit=(
            {"lead": (2,), "N": 4, "big": False, "seed": 51},
            {"lead": (), "N": 5, "big": True, "seed": 52},
        ),
        checks=(
            "A equals minicrate.ops.functional.softmax(S, axis=-1), including logits of size 1000",
        ),
        mistakes=_SOFTMAX_MISTAKES,
        solution=_sol_softmax,
    ),
    Task(
        id="5.2",
        function="mssa_forward",
        notebook="ch05_mssa_forward.md",
        book="Chapter 5, compression: from ∇R^c to MSSA",
        title="Y = concat_k(softmax(s·W_kW_kᵀ) W_k) W_outᵀ + b_out, W_k = ZU_k; returns (Y, cache)",
        kind="function",
        strategy=_mssa_spec(),
        build=_build_mssa,
        reference=_ref_mssa_forward,
        outputs=_forward_output,
        argnames=("Z", "U", "W_out", "b_out"),
        explicit=_MSSA_EXPLICIT,
        examples=8,
        checks=(
            "Y equals minicrate.mssa_forward (official form: untied W_out with bias; "
            "scale None means 1/√p)",
        ),
        mistakes=_MSSA_FORWARD_MISTAKES,
        solution=_ref_mssa_fwd_fn,
    ),
    Task(
        id="6.1",
        function="ista_forward",
        notebook="ch06_ista.md",
        book="Chapter 6, sparsification: ISTA",
        title="Y = ReLU(X + η(XD − XDᵀD) − ηλ); returns (Y, cache)",
        kind="function",
        strategy=_ista_spec(),
        build=_build_ista,
        reference=_ref_ista_forward,
        outputs=_forward_output,
        argnames=("X", "D"),
        explicit=_ISTA_EXPLICIT,
        examples=8,
        checks=("Y equals minicrate.ista_forward (pre-activations kept 0.1 away from the kink)",),
        mistakes=_ISTA_FORWARD_MISTAKES,
        solution=_ref_ista_fwd_fn,
    ),
    Task(
        id="6.2",
        function="ista_backward",
        notebook="ch06_ista.md",
        book="Chapter 6 (derivation: chapter 8, backpropagation by hand)",
        title="(dX, {'D': dD}) for the ISTA step, given dY and your forward's cache",
        kind="backward",
        strategy=_ista_spec(),
        build=_build_ista,
        reference=_ref_ista_backward,
        outputs=_backward_outputs("dX", ("D",)),
        argnames=("X", "D"),
        explicit=_ISTA_EXPLICIT,
        examples=8,
        forward_name="ista_forward",
        reference_forward=_ref_ista_fwd_fn,
        checks=(
            "dX and dD equal minicrate.ista_backward",
            "dX and dD agree with finite differences of minicrate.ista_forward",
        ),
        mistakes=_ISTA_BACKWARD_MISTAKES,
        fd=FiniteDifferences(forward=_ista_fd_forward, wrt={"dX": "X", "grads['D']": "D"}),
        solution=_sol("layers.ista", "ista_backward"),
    ),
    Task(
        id="7.1",
        function="layernorm_forward",
        notebook="ch07_encoder_layer.md",
        book="Chapter 7, the CRATE layer",
        title="Y = γ ⊙ (x − μ)/√(σ² + ε) + β per token (biased variance); returns (Y, cache)",
        kind="function",
        strategy=_ln_spec(),
        build=_build_ln,
        reference=_ref_ln_forward,
        outputs=_forward_output,
        argnames=("X", "gamma", "beta"),
        explicit=_LN_EXPLICIT,
        examples=6,
        checks=("Y equals minicrate.layernorm_forward (ε = 1e-5 and 0.1)",),
        mistakes=_LN_FORWARD_MISTAKES,
        solution=_ref_ln_fwd_fn,
    ),
    Task(
        id="7.2",
        function="layernorm_backward",
        notebook="ch07_encoder_layer.md",
        book="Chapter 7 (derivation: chapter 8, backpropagation by hand)",
        title="(dX, {'gamma', 'beta'}) for LayerNorm",
        kind="backward",
        strategy=_ln_spec(),
        build=_build_ln,
        reference=_ref_ln_backward,
        outputs=_backward_outputs("dX", ("gamma", "beta")),
        argnames=("X", "gamma", "beta"),
        explicit=_LN_EXPLICIT,
        examples=6,
        forward_name="layernorm_forward",
        reference_forward=_ref_ln_fwd_fn,
        checks=(
            "dX, dγ, dβ equal minicrate.layernorm_backward",
            "dX, dγ, dβ agree with finite differences of minicrate.layernorm_forward",
        ),
        mistakes=_LN_BACKWARD_MISTAKES,
        fd=FiniteDifferences(
            forward=_ln_fd_forward,
            wrt={"dX": "X", "grads['gamma']": "gamma", "grads['beta']": "beta"},
        ),
        solution=_sol("ops.layernorm", "layernorm_backward"),
    ),
    Task(
        id="7.3",
        function="encoder_layer_forward",
        notebook="ch07_encoder_layer.md",
        book="Chapter 7, the CRATE layer",
        title="Z½ = Z + MSSA(LN₁(Z)); Y = ISTA(LN₂(Z½)) (official form); returns (Y, cache)",
        kind="function",
        strategy=_layer_spec(),
        build=_build_layer,
        reference=_ref_layer_forward,
        outputs=_forward_output,
        argnames=("Z", "params"),
        explicit=_LAYER_EXPLICIT,
        examples=5,
        checks=(
            "Y equals minicrate.encoder_layer_forward (pre-LN, untied W_out, s = 1/√p, "
            "η = λ = 0.1)",
        ),
        mistakes=_LAYER_FORWARD_MISTAKES,
        solution=_ref_layer_fwd_fn,
    ),
    Task(
        id="7.4",
        function="encoder_layer_backward",
        notebook="ch07_encoder_layer.md",
        book="Chapter 7 (derivation: chapter 8, backpropagation by hand)",
        title="(dZ, grads) for the whole layer, grads keyed like params",
        kind="backward",
        strategy=_layer_spec(),
        build=_build_layer,
        reference=_ref_layer_backward,
        outputs=_backward_outputs("dZ", LAYER_KEYS),
        argnames=("Z", "params"),
        explicit=_LAYER_EXPLICIT,
        examples=5,
        forward_name="encoder_layer_forward",
        reference_forward=_ref_layer_fwd_fn,
        checks=(
            "dZ and all eight parameter gradients equal minicrate.encoder_layer_backward",
            "they agree with finite differences of minicrate.encoder_layer_forward "
            "(ISTA pre-activations kept 0.05 from the kink)",
        ),
        mistakes=_LAYER_BACKWARD_MISTAKES,
        fd=FiniteDifferences(
            forward=_layer_fd_forward,
            inputs=_layer_fd_inputs,
            wrt={"dZ": "Z", **{f"grads[{k!r}]": k for k in LAYER_KEYS}},
            cases=1,
            max_entries=24,
        ),
        solution=_sol("layers.encoder", "encoder_layer_backward"),
    ),
    Task(
        id="8.1",
        function="softmax_backward",
        notebook="ch08_mssa_backward.md",
        book="Chapter 8, backpropagation by hand",
        title="dS = A ⊙ (dA − rowsum(A ⊙ dA)), the row-softmax VJP",
        kind="function",
        strategy=_softmax_bwd_spec(),
        build=_build_softmax_bwd,
        reference=_ref_softmax_bwd,
        outputs=lambda r: {"dS": r},
        argnames=("dA", "A"),
        examples=6,
        explicit=({"lead": (2,), "N": 3, "seed": 61},),
        checks=(
            "dS equals minicrate.ops.functional.softmax_backward",
            "dS agrees with finite differences of the softmax",
        ),
        mistakes=_SOFTMAX_BWD_MISTAKES,
        fd=FiniteDifferences(
            forward=_softmax_fd_forward, wrt={"dS": "S"}, inputs=lambda case: {"S": case.extra["S"]}
        ),
        solution=_sol_softmax_backward,
    ),
    Task(
        id="8.2",
        function="mssa_backward",
        notebook="ch08_mssa_backward.md",
        book="Chapter 8, backpropagation by hand",
        title="(dZ, {'U', 'W_out', 'b_out'}) for MSSA with shared query/key/value",
        kind="backward",
        strategy=_mssa_spec(),
        build=_build_mssa,
        reference=_ref_mssa_backward,
        outputs=_backward_outputs("dZ", MSSA_KEYS),
        argnames=("Z", "U", "W_out", "b_out"),
        explicit=_MSSA_EXPLICIT,
        examples=8,
        forward_name="mssa_forward",
        reference_forward=_ref_mssa_fwd_fn,
        checks=(
            "dZ, dU, dW_out, db_out equal minicrate.mssa_backward",
            "they agree with finite differences of minicrate.mssa_forward",
        ),
        mistakes=_MSSA_BACKWARD_MISTAKES,
        fd=FiniteDifferences(
            forward=_mssa_fd_forward,
            inputs=_mssa_fd_inputs,
            wrt={
                "dZ": "Z",
                "grads['U']": "U",
                "grads['W_out']": "W_out",
                "grads['b_out']": "b_out",
            },
        ),
        solution=_sol("layers.mssa", "mssa_backward"),
    ),
]
