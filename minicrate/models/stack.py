"""The encoder-layer stack every model shares, and reading one layer's parameters.

Every model (:mod:`minicrate.models.classifier`, :mod:`minicrate.models.lm`,
:mod:`minicrate.models.mae`) stores its encoder layers under ``layers.<i>.*``, keyed
like :mod:`minicrate.layers.encoder` once the prefix is removed, and runs them through
:func:`encoder_stack_forward` / :func:`encoder_stack_backward` (the plain/fused choice).
"""

from __future__ import annotations

from collections.abc import Mapping

from minicrate.core.validate import check_array, check_int, check_keys
from minicrate.layers.decoder import accumulate
from minicrate.layers.encoder import encoder_layer_backward, encoder_layer_forward
from minicrate.layers.fused import encoder as fused


def layer_params(params, layer):
    """The ``layers.<layer>.*`` entries as a dict keyed like :mod:`minicrate.layers.encoder`."""
    check_keys(params, ())
    layer = check_int(layer, "layer", minimum=0)
    prefix = f"layers.{layer}."
    out = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"params holds no layer {layer} (no key starts with {prefix!r})")
    return out


def group(params, prefix):
    """The entries whose key starts with ``prefix``, with the prefix removed (``embed.W`` -> ``W``)."""
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def encoder_stack_forward(Z, params, depth, options, *, fast=True):
    """Run ``depth`` encoder layers ``layers.0 … layers.<depth-1>`` of ``params`` on tokens ``Z``.

    The plain-or-fused choice is made here once for every model: with ``fast`` and
    switches the fused layer supports (the official form), the layers run as
    :func:`minicrate.layers.fused.encoder.layer_forward` (same mathematics, tested equal);
    otherwise as :func:`minicrate.layers.encoder.encoder_layer_forward`.

    Args:
        Z: tokens ``(B, N, d)``.
        params: the model's flat parameter dict.
        depth: number of layers.
        options: the layer switches (``LayerOptions.layer_options()``).

    Returns:
        ``(Z, caches, outputs)``: the last layer's tokens, one cache per layer and
        every layer's output ``Z^1 … Z^L``.
    """
    check_keys(params, ())
    depth = check_int(depth, "depth", minimum=1)
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict of layer switches (LayerOptions.layer_options()), "
                        f"got {type(options).__name__}")
    layer_forward = fused.layer_forward if fast and fused.supports(**options) else encoder_layer_forward
    caches, outputs = [], []
    for i in range(depth):
        layer = layer_params(params, i)
        for k, v in layer.items():  # the fused layer skips the finiteness scan of its weights
            check_array(v, f"params['layers.{i}.{k}']")
        Z, c = layer_forward(Z, layer, **options)
        caches.append(c)
        outputs.append(Z)
    return Z, caches, outputs


def encoder_stack_backward(dZ, caches, grads):
    """Backward of :func:`encoder_stack_forward`: adds ``layers.<i>.*`` into ``grads``, returns dZ⁰.

    Each cache says which form produced it, so a stack is walked back with the
    matching backward.  A key already in ``grads`` (a decoder tied to this layer)
    receives the sum of both uses (:func:`minicrate.layers.decoder.accumulate`).
    """
    if not isinstance(caches, (list, tuple)) or not caches:
        raise TypeError(f"caches must be the non-empty list of layer caches from encoder_stack_forward, "
                        f"got {type(caches).__name__}")
    for i in reversed(range(len(caches))):
        c = caches[i]
        layer_backward = fused.layer_backward if isinstance(c, fused.FastLayerCache) else encoder_layer_backward
        dZ, g = layer_backward(dZ, c)
        accumulate(grads, g, {k: f"layers.{i}.{k}" for k in g})
    return dZ
