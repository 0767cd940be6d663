"""Optimisers on dictionaries of parameter arrays: SGD with momentum, AdamW, Lion.

minicrate has no autograd and no ``Parameter`` objects: a model is a flat dict
``{"layers.0.U": array, ...}`` and its gradients are a dict with the same keys
(from :func:`minicrate.models.classifier.loss_and_grads`).  An optimiser here is a small
object holding its hyper-parameters and its *state*, a dict of arrays of the
same shapes as the parameters (momentum, second moments), so the state can be
saved in a checkpoint and loaded back bit for bit.

Update rules (θ a parameter, g its gradient, η_t the learning rate of step t,
wd the weight decay; every product is elementwise).  Weight decay is
**decoupled** in all three (Loshchilov & Hutter): it shrinks θ by η_t·wd·θ
directly instead of being added to the gradient, so it is not rescaled by
Adam's second moments or flattened by Lion's sign.

* SGD with momentum (PyTorch's form, no dampening)::

      v ← μ v + g;                 θ ← θ − η_t (v + wd θ)
      (Nesterov: θ ← θ − η_t (g + μ v + wd θ))

* AdamW (bias-corrected, step t counted from 1)::

      m ← β1 m + (1−β1) g;   v ← β2 v + (1−β2) g²
      m̂ = m / (1−β1ᵗ);       v̂ = v / (1−β2ᵗ)
      θ ← θ − η_t (m̂ / (√v̂ + ε) + wd θ)

* Lion, the optimiser of the CRATE paper (Chen et al. 2023; lion-pytorch defaults
  β1 = 0.9, β2 = 0.99)::

      c = β1 m + (1−β1) g
      θ ← θ − η_t (sign(c) + wd θ)
      m ← β2 m + (1−β2) g

The arrays are updated out of place (``params[k] = new``), so the code runs on
every array-API backend, including ``array_api_strict`` which has no in-place
arithmetic on views.  The paper's recipe is Lion with lr 2.4e-4 and wd 0.5 at
batch 2048; the official repository's ``main.py`` defaults to AdamW with lr
4e-4 and wd 0.1 (the book's appendix *Derivations and constants* lists both).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

from minicrate.core.backend import device_of, namespace
from minicrate.core.validate import check_int, check_positive, check_real, describe, finite_checks_enabled

OPTIMIZERS = ("sgd", "adamw", "lion")


def _check_dict(d, name):
    if not isinstance(d, Mapping):
        raise TypeError(f"{name} must be a dict of arrays {{key: array}}, got {describe(d)}")


def _check_float_array(x, name, *, floating=True):
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"{name} must be an array, got {describe(x)}")
    if floating and not namespace(x).isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{name} must have a real floating dtype (float32 or float64), got {describe(x)}"
        )


def _check_like(x, name, theta, theta_name, hint=""):
    """``x`` must have the backend, dtype and device of the parameter ``theta``."""
    if type(x) is not type(theta) or x.dtype != theta.dtype:
        raise TypeError(
            f"{name} must have the backend and dtype of {theta_name} "
            f"({type(theta).__module__}.{type(theta).__name__} {theta.dtype}), "
            f"got {type(x).__module__}.{type(x).__name__} {x.dtype}{hint}"
        )
    if device_of(x) != device_of(theta):
        raise ValueError(
            f"{name} must live on the device of {theta_name} ({device_of(theta)}), "
            f"got {device_of(x)}{hint}"
        )


def _check_grads(params, grads):
    """Same keys and shapes; every entry a real floating array, each gradient
    on the backend, dtype and device of its parameter."""
    _check_dict(params, "params")
    _check_dict(grads, "grads")
    missing = sorted(set(params) - set(grads))
    extra = sorted(set(grads) - set(params))
    if missing or extra:
        raise ValueError(
            "grads must have the same keys as params; "
            f"missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for k, p in params.items():
        _check_float_array(p, f"params[{k!r}]")
        _check_float_array(grads[k], f"grads[{k!r}]", floating=False)  # _check_like covers it
        if tuple(grads[k].shape) != tuple(p.shape):
            raise ValueError(
                f"grads[{k!r}] has shape {tuple(grads[k].shape)}, expected {tuple(p.shape)}"
            )
        _check_like(grads[k], f"grads[{k!r}]", p, f"params[{k!r}]")


def _check_finite(params, grads):
    """Raise naming the first parameter whose value or gradient holds NaN/inf
    (one ``isfinite`` pass per array)."""
    for k in params:
        for name, a in ((f"params[{k!r}]", params[k]), (f"grads[{k!r}]", grads[k])):
            xp = namespace(a)
            if not bool(xp.all(xp.isfinite(a))):
                raise ValueError(
                    f"{name} contains NaN or inf values ({describe(a)}); an update would "
                    "spread them to every later step"
                )


def _nonneg(value, name):
    return check_positive(value, name, allow_zero=True)


def _beta(value, name):
    value = check_real(value, name)
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _betas(betas):
    """A pair ``(β1, β2)`` of numbers in [0, 1)."""
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise TypeError(
            f"betas must be a pair (beta1, beta2) of numbers in [0, 1), got {describe(betas)}"
        )
    return (_beta(betas[0], "betas[0]"), _beta(betas[1], "betas[1]"))


class Optimizer:
    """Base class: hyper-parameters, a step counter and per-parameter buffers.

    Subclasses name their buffers in ``BUFFERS`` and implement
    ``_update(key, theta, g, buffers, lr) -> new_theta`` for one parameter.

    Args:
        lr: the base learning rate (a schedule may pass another per step).
        weight_decay: decoupled weight decay wd (0 switches it off).
        decay: optional predicate ``decay(key) -> bool`` choosing which
            parameters are decayed; ``None`` decays all of them, as the
            official CRATE code does.
    """

    NAME = ""
    BUFFERS: tuple[str, ...] = ()

    def __init__(self, lr, *, weight_decay=0.0, decay=None):
        self.lr = _nonneg(lr, "lr")
        self.weight_decay = _nonneg(weight_decay, "weight_decay")
        if decay is not None and not callable(decay):
            raise TypeError(
                f"decay must be None or a function decay(key) -> bool, got {describe(decay)}"
            )
        self.decay = decay
        self.t = 0  # number of steps taken
        self.state: dict[str, dict] = {name: {} for name in self.BUFFERS}

    # -- the update ---------------------------------------------------------
    def step(self, params, grads, *, lr=None):
        """Apply one update to ``params`` (a dict, updated and returned).

        Args:
            params: ``{key: array}`` of real floating arrays; entries are
                replaced by new arrays.
            grads: ``{key: array}`` with the same keys, shapes, backend,
                dtypes and devices.
            lr: this step's learning rate (default ``self.lr``), e.g. from
                :func:`minicrate.training.schedule.warmup_cosine`.
        Returns:
            ``params``.
        Raises:
            TypeError/ValueError: naming the key of a parameter or gradient
                that is not a floating array, has another shape, backend,
                dtype or device, or holds NaN/inf.  The NaN/inf scan (one pass
                per array) is skipped inside
                :func:`minicrate.core.validate.finite_checks` ``(False)``, as in
                :func:`minicrate.training.classifier.train`, which checks the gradient norm
                itself.
        """
        _check_grads(params, grads)
        if finite_checks_enabled():
            _check_finite(params, grads)
        for name, buffers in self.state.items():
            for key in buffers.keys() & params.keys():
                _check_like(
                    buffers[key],
                    f"optimizer state {name}[{key!r}]",
                    params[key],
                    f"params[{key!r}]",
                    hint="; load_state_dict(state, like=params) moves a loaded state there",
                )
        lr = self.lr if lr is None else _nonneg(lr, "lr")
        self.t += 1
        for key in params:
            theta, g = params[key], grads[key]
            buffers = {}
            for name in self.BUFFERS:
                if key not in self.state[name]:
                    xp = namespace(theta)
                    self.state[name][key] = xp.zeros_like(theta)
                buffers[name] = self.state[name][key]
            wd = self.weight_decay if (self.decay is None or self.decay(key)) else 0.0
            new_theta, new_buffers = self._update(theta, g, buffers, lr, wd)
            params[key] = new_theta
            for name, value in new_buffers.items():
                self.state[name][key] = value
        return params

    def _update(self, theta, g, buffers, lr, wd):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- checkpointing ------------------------------------------------------
    def hyperparameters(self) -> dict:
        """The JSON-serialisable settings (everything but ``decay``)."""
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self) -> dict:
        """``{"name", "t", "hyper", "buffers": {"m/layers.0.U": array, ...}}``.

        The arrays are the optimiser's own (not copies); save them with
        :func:`minicrate.core.checkpoint.save`, which copies them to the host.
        """
        buffers = {
            f"{name}/{key}": value for name, d in self.state.items() for key, value in d.items()
        }
        return {"name": self.NAME, "t": self.t, "hyper": self.hyperparameters(), "buffers": buffers}

    def load_state_dict(self, state, *, like=None):
        """Restore a :meth:`state_dict`; ``like`` (a params dict) moves the
        buffers to its backend, device and dtypes (checkpoints load as NumPy)."""
        if not isinstance(state, Mapping):
            raise TypeError(
                f"state must be a dict from state_dict() (keys 'name', 't', 'buffers'), "
                f"got {describe(state)}"
            )
        missing = [k for k in ("name", "t", "buffers") if k not in state]
        if missing:
            raise ValueError(
                f"state is missing {missing}; expected a dict from state_dict() with the keys "
                "'name', 't', 'buffers'"
            )
        if not isinstance(state["buffers"], Mapping):
            raise TypeError(
                f"state['buffers'] must be a dict of arrays, got {describe(state['buffers'])}"
            )
        if like is not None:
            _check_dict(like, "like")
        if state.get("name") != self.NAME:
            raise ValueError(
                f"optimizer state is for {state.get('name')!r}, cannot load it into {self.NAME!r}"
            )
        self.t = check_int(state["t"], "state['t']", minimum=0)
        self.state = {name: {} for name in self.BUFFERS}
        for flat, value in state["buffers"].items():
            name, _, key = flat.partition("/")
            if name not in self.state:
                raise ValueError(f"optimizer state has an unknown buffer {flat!r} for {self.NAME}")
            if like is not None:
                if key not in like:
                    raise ValueError(f"optimizer state has a buffer for unknown parameter {key!r}")
                from minicrate.core.backend import asarray_like

                value = asarray_like(value, like[key])
            self.state[name][key] = value
        return self


class SGD(Optimizer):
    """SGD with (heavy-ball or Nesterov) momentum μ and decoupled weight decay."""

    NAME = "sgd"
    BUFFERS = ("v",)

    def __init__(self, lr, *, momentum=0.9, nesterov=False, weight_decay=0.0, decay=None):
        super().__init__(lr, weight_decay=weight_decay, decay=decay)
        self.momentum = _beta(momentum, "momentum")
        self.nesterov = bool(nesterov)

    def hyperparameters(self):
        return {**super().hyperparameters(), "momentum": self.momentum, "nesterov": self.nesterov}

    def _update(self, theta, g, buffers, lr, wd):
        v = self.momentum * buffers["v"] + g
        direction = g + self.momentum * v if self.nesterov else v
        return theta - lr * (direction + wd * theta), {"v": v}


class AdamW(Optimizer):
    """Adam with bias correction and decoupled weight decay (PyTorch's AdamW)."""

    NAME = "adamw"
    BUFFERS = ("m", "v")

    def __init__(self, lr, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay=None):
        super().__init__(lr, weight_decay=weight_decay, decay=decay)
        self.betas = _betas(betas)
        self.eps = check_positive(eps, "eps")

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas), "eps": self.eps}

    def _update(self, theta, g, buffers, lr, wd):
        xp = namespace(theta)
        b1, b2 = self.betas
        m = b1 * buffers["m"] + (1 - b1) * g
        v = b2 * buffers["v"] + (1 - b2) * (g * g)
        m_hat = m / (1 - b1**self.t)
        v_hat = v / (1 - b2**self.t)
        new = theta - lr * (m_hat / (xp.sqrt(v_hat) + self.eps) + wd * theta)
        return new, {"m": m, "v": v}


class Lion(Optimizer):
    """Lion (Chen et al. 2023), the CRATE paper's optimiser."""

    NAME = "lion"
    BUFFERS = ("m",)

    def __init__(self, lr, *, betas=(0.9, 0.99), weight_decay=0.0, decay=None):
        super().__init__(lr, weight_decay=weight_decay, decay=decay)
        self.betas = _betas(betas)

    def hyperparameters(self):
        return {**super().hyperparameters(), "betas": list(self.betas)}

    def _update(self, theta, g, buffers, lr, wd):
        xp = namespace(theta)
        b1, b2 = self.betas
        c = b1 * buffers["m"] + (1 - b1) * g
        new = theta - lr * (xp.sign(c) + wd * theta)
        m = b2 * buffers["m"] + (1 - b2) * g
        return new, {"m": m}


def make_optimizer(name, lr, *, weight_decay=0.0, decay=None, **options):
    """An optimiser by name: ``"sgd"``, ``"adamw"`` or ``"lion"``."""
    classes = {"sgd": SGD, "adamw": AdamW, "lion": Lion}
    if not isinstance(name, str) or name not in classes:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    known = [p for p in inspect.signature(classes[name]).parameters if p not in ("lr", "decay")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"optimizer {name!r} has no option {unknown}; its options are {known}")
    return classes[name](lr, weight_decay=weight_decay, decay=decay, **options)


def global_norm(grads):
    """‖g‖ over all arrays together: √(Σ_k Σ g_k²), as a Python float."""
    _check_dict(grads, "grads")
    for k, g in grads.items():
        _check_float_array(g, f"grads[{k!r}]")
    total = 0.0
    for g in grads.values():
        xp = namespace(g)
        total += float(xp.sum(g * g))
    return math.sqrt(total)


def clip_by_global_norm(grads, max_norm):
    """Scale all gradients by min(1, max_norm/‖g‖) (‖g‖ the global norm).

    Returns ``(clipped, norm)`` where ``norm`` is the norm *before* clipping
    (a float; ``inf``/``nan`` if a gradient is not finite, in which case the
    gradients come back unchanged so the caller can stop).
    """
    max_norm = check_positive(max_norm, "max_norm")
    norm = global_norm(grads)
    if not math.isfinite(norm) or norm <= max_norm:
        return dict(grads), norm
    scale = max_norm / norm
    return {k: g * scale for k, g in grads.items()}, norm
