"""The encoder-layer stack every model shares, and reading one layer's parameters.

Every model (:mod:`minicrate.models.classifier`, :mod:`minicrate.models.lm`,
:mod:`minicrate.models.mae`) stores its encoder layers under ``layers.<i>.*``, keyed
like :mod:`minicrate.layers.encoder` once the prefix is removed, and runs them through
:func:`encoder_stack_forward` / :func:`encoder_stack_backward` (the plain/fused choice).
With ``block="transformer"`` in the options the same stack runs standard transformer
blocks instead (:mod:`minicrate.layers.transformer`, keys ``W_qkv, W1, ...``): the one
place where the two models differ.  :func:`layer_readouts` gives the white-box read-outs
of a layer's cache, whichever block made it.
"""

from __future__ import annotations

from collections.abc import Mapping

from minicrate.core.validate import check_int, check_keys
from minicrate.layers.decoder import accumulate
from minicrate.layers.encoder import encoder_layer_backward, encoder_layer_forward
from minicrate.layers.fused import encoder as fused
from minicrate.layers.fused import transformer as fused_transformer
from minicrate.layers.transformer import transformer_block_backward, transformer_block_forward, value_bases


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


def _choose_layer(options, fast, keep_cache=True):
    """The layer function ``(Z, layer params) -> (Z, cache)`` for ``options``."""
    options = dict(options)
    if options.pop("block", "crate") == "transformer":
        def block(Z, layer):
            forward = fused_transformer.block_forward if fast and fused_transformer.supports(layer) else \
                transformer_block_forward
            return forward(Z, layer, **options)
        return block
    if fast and fused.supports(**options):
        return lambda Z, layer: fused.layer_forward(Z, layer, keep_cache=keep_cache, **options)
    return lambda Z, layer: encoder_layer_forward(Z, layer, **options)


def encoder_stack_forward(Z, params, depth, options, *, fast=True, prefix="layers.", keep_cache=True):
    """Run ``depth`` encoder layers ``layers.0 … layers.<depth-1>`` of ``params`` on tokens ``Z``.

    The plain-or-fused choice is made here once for every model: with ``fast`` and
    switches the fused layer supports (the official form), the layers run as
    :func:`minicrate.layers.fused.encoder.layer_forward` (same mathematics, tested equal);
    otherwise as :func:`minicrate.layers.encoder.encoder_layer_forward`.  With
    ``options["block"] == "transformer"`` they run as
    :func:`minicrate.layers.transformer.transformer_block_forward`, or with ``fast`` as its
    fused form :func:`minicrate.layers.fused.transformer.block_forward` (tested equal).

    Args:
        Z: tokens ``(B, N, d)``.
        params: the model's flat parameter dict.
        depth: number of layers.
        options: the layer switches (``LayerOptions.layer_options()``).
        prefix: the layers' key prefix (``"decoder."`` for a transformer MAE's decoder).
        keep_cache: ``False`` for inference: each layer's cache is dropped as soon as the
            layer is done (the fused layer does not even build it), so memory holds one
            layer's work at a time.

    Returns:
        ``(Z, caches, outputs)``: the last layer's tokens, one cache per layer and
        every layer's output ``Z^1 … Z^L`` (without ``keep_cache``: ``(Z, None, None)``).
    """
    check_keys(params, ())
    depth = check_int(depth, "depth", minimum=1)
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict of layer switches (LayerOptions.layer_options()), "
                        f"got {type(options).__name__}")
    if not isinstance(prefix, str) or not prefix.endswith("."):
        raise ValueError(f"prefix must be a key prefix ending in '.', got {prefix!r}")
    layer_forward = _choose_layer(options, fast, keep_cache)
    caches, outputs = [], []
    for i in range(depth):
        layer = group(params, f"{prefix}{i}.")
        if not layer:
            raise ValueError(f"params holds no layer {i} (no key starts with {prefix}{i}.)")
        Z, c = layer_forward(Z, layer)
        if keep_cache:
            caches.append(c)
            outputs.append(Z)
    return (Z, caches, outputs) if keep_cache else (Z, None, None)


def _layer_backward(cache):
    if isinstance(cache, fused.FastLayerCache):
        return fused.layer_backward
    if isinstance(cache, fused_transformer.FastBlockCache):
        return fused_transformer.block_backward
    if isinstance(cache, Mapping) and "attn" in cache:
        return transformer_block_backward
    return encoder_layer_backward


def encoder_stack_backward(dZ, caches, grads, *, prefix="layers."):
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
        dZ, g = _layer_backward(c)(dZ, c)
        accumulate(grads, g, {k: f"{prefix}{i}.{k}" for k in g})
    return dZ


def layer_readouts(cache):
    """What the layer-wise measurement reads from one layer's cache, for either block.

    Returns:
        dict: ``"mixing_input"`` -- the input of the attention step, LN₁(Z^ℓ) (``(B, N, d)``);
        ``"output"`` -- the layer's output Z^{ℓ+1} (CRATE: the ISTA output, whose zeros are
        the sparsity); ``"attention"`` ``(B, K, N, N)``; ``"bases"`` ``(K, d, p)`` -- the
        subspaces the heads project on: CRATE's ``U``, the transformer's value maps
        (:func:`minicrate.layers.transformer.value_bases`).
    """
    if isinstance(cache, fused_transformer.FastBlockCache) or isinstance(cache, Mapping) and "attn" in cache:
        return {"mixing_input": cache["attn_input"], "output": cache["output"], "attention": cache["attn"]["A"],
                "bases": value_bases(cache["params"]["W_qkv"], cache["heads"])}
    if not (isinstance(cache, Mapping) and "params" in cache and "mssa" in cache or
            isinstance(cache, fused.FastLayerCache)):
        raise TypeError(f"cache must be one layer's cache from encoder_stack_forward, got {type(cache).__name__}")
    return {"mixing_input": cache["mssa_input"], "output": cache["ista_output"], "attention": cache["mssa"]["A"],
            "bases": cache["params"]["U"]}
